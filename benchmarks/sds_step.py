"""Time one SDS training step part by part, against the floor of one UNet forward at batch 2.

    python benchmarks/sds_step.py --model full --device cuda --dtype fp16 --channels-last   # a GPU
    python benchmarks/sds_step.py --model tiny --device cpu                                  # CPU, tiny SD
    python benchmarks/sds_step.py --model full --device cpu --floor-only --iters 1 --warmup 0
    python benchmarks/sds_step.py --model tiny --device cpu --latent-render   # Latent-NeRF: no VAE in the step
    python benchmarks/sds_step.py --model full --device cuda --config gaussian --fit-steps 500   # a whole run
    python benchmarks/sds_step.py --deepfloyd DeepFloyd/IF-I-XL-v1.0 --device cuda --dtype fp16  # SDS on IF stage I
    python benchmarks/sds_step.py --deepfloyd tiny --device cpu        # the test fixture's tiny random IF

With ``--config NAME --fit-steps N`` the harness instead runs ``Trainer.fit`` of configs/NAME.yaml for N steps
(densification, schedules and progressive resolution included; no export) with the random model as the
guidance, and reports the seconds for the N steps beside N x the floor.

The step is ``Trainer.train_step`` itself on the default config (configs/dreamfusion.yaml): sample B cameras,
render the hash-grid NeRF at 64x64 (128 samples per ray, learned background), SDS on Stable Diffusion (resize
to the VAE resolution, VAE encode with gradient, UNet forward on [uncond, cond] = batch 2B, the rule),
backward, Adam. The parts are timed by wrapping the trainer's renderer, guidance and optimizer step. ``--model full`` builds SD 1.5's UNet / VAE / text encoder from benchmarks/configs/ with random
weights (the real model's cost, no download); ``--model tiny`` the test fixture's tiny components.
``--deepfloyd MODEL`` replaces Stable Diffusion with DeepFloyd IF stage I loaded from a hub id or folder (the real
weights: no random full-size IF is built here), or ``tiny`` for tests/conftest.py's tiny random IF; the
'encode' part is then the resize to 64 x 64 and 2 x - 1 (no VAE), the floor a UNet forward on 3 x 64 x 64 pixels.

Phases, all after ``--warmup`` untimed steps: (1) ``--iters`` instrumented steps with a device sync
around each part, (2) ``--iters`` plain steps synced once per step (the step time and it/s reported),
(3) the floor: ``--iters`` UNet forwards at batch 2 on latents of the step's size, same dtype and
switches. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repo, when it is not pip-installed

import torch  # noqa: E402

from dreamfusion.config import StableDiffusionConfig, load_config  # noqa: E402
from dreamfusion.guidance import SDSGuidance  # noqa: E402
from dreamfusion.guidance.rules.perp_neg import PerpNegGuidance  # noqa: E402
from dreamfusion.guidance.rules.vsd import VSDGuidance  # noqa: E402
from dreamfusion.train import Trainer  # noqa: E402
from render.cameras import sample_cameras  # noqa: E402
from sd_models import build_stable_diffusion  # noqa: E402

PROMPT = "a hamburger"
GUIDANCE = {"sds": SDSGuidance, "perp_neg": PerpNegGuidance, "vsd": VSDGuidance}

PARTS = ("render", "encode", "unet", "sds_rule", "backward", "optimizer")


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo with the thread count torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


class Clock:
    """perf_counter after a device sync (CUDA work is asynchronous: without the sync a time is a launch time)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


class TimedPredictor:
    """Wraps StableDiffusion: encode and every frozen-UNet forward (predict_noise, predict_eps) timed when ``on``,
    summed over a step; everything else (encode_prompt, unet, scheduler, ... for VSD) passes through."""

    def __init__(self, sd, clock: Clock):
        self.sd, self.clock, self.on = sd, clock, False
        self.alphas_cumprod = sd.alphas_cumprod
        self.times: dict[str, float] = {}

    def __getattr__(self, name):
        return getattr(self.sd, name)

    def _timed(self, name, fn, *args, **kwargs):
        if not self.on:
            return fn(*args, **kwargs)
        t0 = self.clock()
        out = fn(*args, **kwargs)
        self.times[name] = self.times.get(name, 0.0) + self.clock() - t0
        return out

    def encode(self, images):
        return self._timed("encode", self.sd.encode, images)

    def predict_noise(self, x_t, t, cameras, cond):
        return self._timed("unet", self.sd.predict_noise, x_t, t, cameras, cond)

    def predict_eps(self, x_t, t, embeddings, **kwargs):
        return self._timed("unet", self.sd.predict_eps, x_t, t, embeddings, **kwargs)


def build_prior(args, device: torch.device, fast: StableDiffusionConfig, vae_resolution: int | None):
    """The noise predictor under test: random-weight Stable Diffusion (``--model``) or DeepFloyd IF (``--deepfloyd``)."""
    if not args.deepfloyd:
        return build_stable_diffusion(args.model, device, fast, vae_resolution=vae_resolution)
    from dreamfusion.guidance import DeepFloydIF

    model = args.deepfloyd
    if model == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_if import write_tiny_if

        model = tempfile.mkdtemp(prefix="tiny-if-")
        write_tiny_if(model)
    return DeepFloydIF.load(model, device=device, fast_paths=fast, cache=args.deepfloyd != "tiny")  # no stray cache


def step_config(args, device: torch.device, overrides: list[str] = ()):
    """The default config (configs/dreamfusion.yaml) sized by the command line, never writing previews or checkpoints."""
    lit = args.shading != "albedo"
    return load_config(None, [f"device={device.type}", f"camera.batch_size={args.batch}", f"render.height={args.height}",
                              f"render.width={args.width}", f"render.n_samples={args.n_samples}",
                              f"guidance.latent_render={args.latent_render}", "preview_every=0",
                              f"checkpoint_every={10 ** 9}", f"render.albedo_warmup_steps={0 if lit else 10 ** 9}",
                              "render.albedo_prob=0", f"render.textureless_prob={1 if args.shading == 'textureless' else 0}",
                              f"guidance.type={args.guidance}",
                              f"guidance.model_type={'deepfloyd' if args.deepfloyd else 'stable_diffusion'}", *overrides])


class Step:
    """``Trainer.train_step`` on the default NeRF + SDS config; its renderer, guidance and optimizer step are
    wrapped so a timed step records when each part ends."""

    def __init__(self, args, device: torch.device, fast: StableDiffusionConfig, run_dir: Path):
        self.clock = Clock(device)
        cfg = step_config(args, device)
        self.sd = build_prior(args, device, fast, args.vae_resolution)
        self.predictor = TimedPredictor(self.sd, self.clock)
        guidance = GUIDANCE[args.guidance](self.predictor, cfg.guidance, PROMPT)
        self.trainer = Trainer(cfg, run_dir, device, guidance)
        self.marks: dict[str, float] = {}
        self.timed = False
        self._wrap(self.trainer.renderer, "render_train", "render")
        self._wrap(self.trainer.optimizer, "step", "optimizer", start="backward")
        real_guidance = self.trainer.guidance
        self.trainer.guidance = lambda *a, **k: self._mark(real_guidance(*a, **k), "guidance")

    def _mark(self, value, name: str):
        if self.timed:
            self.marks[name] = self.clock()
        return value

    def _wrap(self, owner, method: str, name: str, start: str | None = None):
        real = getattr(owner, method)

        def wrapped(*a, **k):
            if start:
                self._mark(None, start)
            return self._mark(real(*a, **k), name)
        setattr(owner, method, wrapped)

    def __call__(self, timed: bool) -> dict[str, float]:
        self.timed = self.predictor.on = timed
        self.predictor.times = {"encode": 0.0, "unet": 0.0}
        start = self.clock() if timed else 0.0
        self.trainer.train_step()
        end = self.clock()
        if not timed:
            return {}
        m = self.marks
        parts = {"render": m["render"] - start, **self.predictor.times, "backward": m["backward"] - m["guidance"],
                 "optimizer": end - m["backward"]}
        parts["sds_rule"] = m["guidance"] - m["render"] - parts["encode"] - parts["unet"]
        return parts


def latent_shape(sd) -> tuple[int, ...]:
    """[1, C, h, w]: what the predictor makes of one render (SD: 4-channel latents at sd.vae_resolution; IF: pixels)."""
    with torch.no_grad():
        return tuple(sd.encode(torch.zeros(1, 8, 8, 3, device=sd.device)).shape)


class Floor:
    """The UNet forward at batch 2 (uncond + cond of one front view) on latents of the step's size."""

    def __init__(self, sd):
        self.sd = sd
        self.x_t = torch.randn(latent_shape(sd), device=sd.device)
        self.t = torch.tensor([500], device=sd.device)
        self.cams = sample_cameras(1, [0, 0], [0, 0], [1.5, 1.5], [50, 50], device=sd.device)
        self.cond = sd.encode_prompt(PROMPT)

    @torch.no_grad()
    def __call__(self) -> None:
        self.sd.predict_noise(self.x_t, self.t, self.cams, self.cond)


def ms_stats(values: list[float], cpu: list[float] | None = None) -> dict[str, float]:
    """Wall-clock statistics in ms; with ``cpu`` (process CPU seconds per iteration) also the share of the
    threads' capacity this process got, cpu / (threads x wall): well below 1 means other processes held the cores."""
    out = {"mean": 1e3 * statistics.fmean(values), "median": 1e3 * statistics.median(values),
           "min": 1e3 * min(values), "n": len(values)}
    if cpu is not None:
        out["cpu_share"] = sum(cpu) / (torch.get_num_threads() * sum(values))
    return out


def time_floor(floor_call: "Floor", args, clock: Clock, device: torch.device) -> dict[str, float]:
    """``--warmup`` untimed then ``--iters`` timed UNet forwards: ms_stats (with the CPU share on CPU)."""
    for _ in range(args.warmup):
        floor_call()
    floor, floor_cpu = [], []
    for _ in range(args.iters):
        start, cpu = clock(), time.process_time()
        floor_call()
        floor.append(clock() - start)
        floor_cpu.append(time.process_time() - cpu)
    return ms_stats(floor, floor_cpu if device.type == "cpu" else None)


def run_fit(args, device: torch.device, fast: StableDiffusionConfig, clock: Clock) -> dict:
    """Seconds for ``--fit-steps`` steps of ``Trainer.fit`` on configs/``--config`` with the random SD model."""
    cfg = load_config(args.config, [f"steps={args.fit_steps}", f"device={device.type}", "preview_every=0",
                                    f"checkpoint_every={10 ** 9}", f"guidance.stable_diffusion.dtype={args.dtype}",
                                    f"guidance.deepfloyd.dtype={args.dtype}"]
                      + ([f"guidance.stable_diffusion.vae_resolution={args.vae_resolution}"]
                         if args.vae_resolution else []))
    t0 = time.perf_counter()
    sd = build_prior(args, device, fast, cfg.guidance.stable_diffusion.vae_resolution)
    floor_call = Floor(sd)
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, Path(run_dir), device, SDSGuidance(sd, cfg.guidance, PROMPT))
        start, cpu = clock(), time.process_time()
        trainer.fit()
        fit_s, fit_cpu = clock() - start, time.process_time() - cpu
        final_count = getattr(trainer.field, "count", None)
    floor_ms = time_floor(floor_call, args, clock, device)
    result = {"benchmark": "sds_fit", "config": args.config, "model": args.deepfloyd or args.model, "device": device_name(device),
              "device_type": device.type, "torch": torch.__version__, "dtype": str(sd.dtype).replace("torch.", ""),
              "steps": args.fit_steps, "fit_s": fit_s, "it_per_s": args.fit_steps / fit_s,
              "floor_ms": floor_ms, "ratio_to_floor": fit_s * 1e3 / (args.fit_steps * floor_ms["mean"]),
              "build_s": round(build_s, 1), "date": args.date, "threads": torch.get_num_threads(),
              "final_gaussians": final_count, "loadavg_1min_at_start": os.getloadavg()[0]}
    if device.type == "cpu":
        result["cpu_share"] = fit_cpu / (torch.get_num_threads() * fit_s)
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return result


def run(args) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    fast = StableDiffusionConfig(dtype=args.dtype, channels_last=args.channels_last, attention=args.attention,
                          compile=args.compile, half_precision=True)
    clock = Clock(device)
    if args.config:
        return run_fit(args, device, fast, clock)
    t0 = time.perf_counter()
    run_dir = tempfile.mkdtemp(prefix="sds_step-")
    if args.floor_only:  # only the diffusion model: no field, no optimizer
        step, sd = None, build_prior(args, device, fast, args.vae_resolution)
    else:
        step = Step(args, device, fast, Path(run_dir))
        sd = step.sd
    floor_call = Floor(sd)
    build_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    result = {"benchmark": "sds_step", "model": args.deepfloyd or args.model, "device": device_name(device), "device_type": device.type,
              "torch": torch.__version__, "dtype": str(sd.dtype).replace("torch.", ""),
              "fast_paths": {"channels_last": args.channels_last, "attention": args.attention, "compile": args.compile},
              "batch": args.batch, "render": f"{args.height}x{args.width}x{args.n_samples}",
              "vae_resolution": None if args.deepfloyd else args.vae_resolution, "latents": list(floor_call.x_t.shape), "shading": args.shading,
              "latent_render": args.latent_render, "guidance": args.guidance,
              "warmup": args.warmup, "iters": args.iters, "build_s": round(build_s, 1), "date": args.date,
              "threads": torch.get_num_threads(), "loadavg_1min_at_start": os.getloadavg()[0]}
    if step is not None:
        for _ in range(args.warmup):
            step(timed=False)
        parts = {name: [] for name in PARTS}
        for _ in range(args.iters):
            for name, value in step(timed=True).items():
                parts[name].append(value)
        whole, whole_cpu = [], []
        for _ in range(args.iters):
            start, cpu = clock(), time.process_time()
            step(timed=False)
            whole.append(clock() - start)
            whole_cpu.append(time.process_time() - cpu)
        result["parts_ms"] = {name: ms_stats(values) for name, values in parts.items()}
        result["step_ms"] = ms_stats(whole, whole_cpu if device.type == "cpu" else None)
        result["it_per_s"] = 1e3 / result["step_ms"]["mean"]

    result["floor_ms"] = time_floor(floor_call, args, clock, device)
    if step is not None:
        result["ratio_to_floor"] = result["step_ms"]["mean"] / result["floor_ms"]["mean"]
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return result


def print_table(r: dict) -> None:
    floor = r["floor_ms"]["mean"]
    print(f"# sds_step  guidance={r.get('guidance', 'sds')}  model={r['model']}  device={r['device']}  dtype={r['dtype']}  "
          f"fast={r['fast_paths']}")
    print(f"# batch={r['batch']}  render={r['render']}  vae={r['vae_resolution']}  latents={r['latents']}  "
          f"latent_render={r.get('latent_render', False)}  "
          f"warmup={r['warmup']}  iters={r['iters']}")
    print(f"{'part':<22}{'mean ms':>11}{'median ms':>11}{'x floor':>9}")
    rows = [(name, r["parts_ms"][name]) for name in PARTS] if "parts_ms" in r else []
    if rows:
        rows.append(("sum of parts", {"mean": sum(v["mean"] for _, v in rows),
                                      "median": sum(v["median"] for _, v in rows)}))
        rows.append(("step (unsynced parts)", r["step_ms"]))
    rows.append(("floor: UNet fwd, bs 2", r["floor_ms"]))
    for name, s in rows:
        print(f"{name:<22}{s['mean']:>11.1f}{s['median']:>11.1f}{s['mean'] / floor:>9.2f}")
    if "it_per_s" in r:
        print(f"it/s {r['it_per_s']:.3f}   step / floor {r['ratio_to_floor']:.2f}")
    for key in ("step_ms", "floor_ms"):
        if "cpu_share" in r.get(key, {}):
            print(f"{key[:-3]}: this process got {100 * r[key]['cpu_share']:.0f} % of {r['threads']} threads' CPU time")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=("full", "tiny"), default="tiny", help="full: SD 1.5 sizes; tiny: test-sized")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch", type=int, default=1, help="views per step (UNet batch is twice this)")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--n-samples", type=int, default=128, help="samples per ray")
    p.add_argument("--vae-resolution", type=int, default=None,
                   help="resize before the VAE (default 512 full -> 64x64 latents; 128 tiny -> 64x64 latents)")
    p.add_argument("--shading", choices=("albedo", "lambertian", "textureless"), default="albedo",
                   help="albedo (warm-up) or a lit shading, which adds the normals' double backward")
    p.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="guidance.stable_diffusion.dtype (guidance.dtype before issue 21)")
    p.add_argument("--channels-last", action="store_true", help="guidance.stable_diffusion.channels_last")
    p.add_argument("--attention", choices=("sdpa", "classic"), default="sdpa",
                   help="guidance.stable_diffusion.attention")
    p.add_argument("--compile", action="store_true",
                   help="guidance.stable_diffusion.compile (warm-up absorbs compilation)")
    p.add_argument("--latent-render", action="store_true",
                   help="guidance.latent_render: the field renders 4 latent channels at --height x --width and the "
                        "'encode' part is only a reshape (no VAE)")
    p.add_argument("--guidance", choices=sorted(GUIDANCE), default="sds",
                   help="the rule: sds, perp_neg (4B UNet batch) or vsd (adds the LoRA's forward and its training step)")
    p.add_argument("--deepfloyd", default=None, metavar="MODEL",
                   help="SDS on DeepFloyd IF stage I from this hub id or folder ('tiny': the test fixture's) instead of SD")
    p.add_argument("--config", default=None, help="time Trainer.fit of this config (e.g. gaussian) instead of one step")
    p.add_argument("--fit-steps", type=int, default=500, help="with --config: steps of the timed fit")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--iters", type=int, default=10, help="timed steps per phase")
    p.add_argument("--floor-only", action="store_true", help="only the UNet floor (e.g. the full model on CPU)")
    p.add_argument("--date", default=time.strftime("%Y-%m-%d"), help="date recorded in the JSON line")
    args = p.parse_args(argv)
    if args.latent_render and args.shading != "albedo":
        p.error("--latent-render renders albedo only: drop --shading")
    if args.latent_render and args.deepfloyd:
        p.error("--latent-render renders Stable Diffusion latents: IF is a pixel-space model, drop one of them")
    if args.guidance == "vsd" and args.deepfloyd:
        p.error("--guidance vsd trains a LoRA of Stable Diffusion's UNet: not with --deepfloyd")
    if args.vae_resolution is None and not args.config:  # --config: the config's own
        args.vae_resolution = 512 if args.model == "full" else 128
    result = run(args)
    if result["benchmark"] == "sds_fit":
        print(f"# sds_fit  config={result['config']}  model={result['model']}  device={result['device']}  "
              f"dtype={result['dtype']}")
        print(f"{result['steps']} steps: {result['fit_s']:.1f} s ({result['it_per_s']:.2f} it/s); floor "
              f"{result['floor_ms']['mean']:.1f} ms; fit / (steps x floor) = {result['ratio_to_floor']:.2f}; "
              f"Gaussians at the end: {result['final_gaussians']}")
    else:
        print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
