"""Text-to-3D under the embedded prior, measured.

The demo grid: per prompt, wall time, volumetric IoU of the exported mesh against the analytic primitive, and
the error of the mean surface albedo.

    python benchmarks/prior_grid.py                       # NeRF rows, every shape + a few colours
    python benchmarks/prior_grid.py --field triplane      # tri-plane rows
    python benchmarks/prior_grid.py --prompts "a red cube" --field nerf gaussian

Each prompt runs the real command (`python -m dreamfusion --config demo ...`) in a subprocess, so the
wall time includes start-up, the prior's first-use rendering (cached after), training and export.

The test bed (issue 24): objects with a front and two-object scenes, each trained by four guidance rules,
plain SDS (guidance.view_dependent=false), SDS with view-dependent prompts, Perp-Neg, and multi-view SDS (issue 31:
plain prompts, groups of 4 views 90 degrees apart graded jointly by the multi-view prior), over seeds:

    python benchmarks/prior_grid.py --bed                 # BED_PROMPTS x seeds 0 1 2 x 4 methods
    python benchmarks/prior_grid.py --bed --methods multi-view   # one method only (a name or its first word)
    python benchmarks/prior_grid.py --bed --smoke         # one prompt of each kind, 2 steps, a small prior
    python benchmarks/prior_grid.py --bed --only pairs    # the five pairs only (--only fronts: the other five)
    python benchmarks/prior_grid.py --bed --only fronts --methods Perp-Neg   # one rule only
    python benchmarks/prior_grid.py --bed --steps 300 --seeds 0 --prompts "a red cube on a blue sphere"

Bed runs are in-process around the loaded priors (one per guidance_model_key: the multi-view method's is its own;
the demo config with BED_OVERRIDES, sized so 90 runs fit in about half an hour on 2 cores) and score the mesh the exporter extracts (marching cubes at --export-resolution,
vertex colours) with dreamfusion/world/scores.py: Janus score, per-object IoU, relation, colour error; seconds are
training + mesh extraction + scoring of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamfusion.world.primitives import COLOURS, inside, parse_prompt  # noqa: E402
from dreamfusion.world.scores import mean_surface_albedo, scene_scores, volumetric_iou  # noqa: E402

DEFAULT_PROMPTS = ["a red cube", "a blue sphere", "an orange cone", "a green cylinder", "a purple torus",
                   "a white sphere", "a yellow cube", "a black cone"]
TARGETS = {"cube": 0.85, "sphere": 0.85, "cone": 0.75, "cylinder": 0.75, "torus": 0.65}
GAUSSIAN_TARGET = 0.8  # issue 6: cube and sphere
BUDGET_S = 90.0  # the demo, prompt to mesh + video + report, on a quiet 2-core machine (issue 14)
ALBEDO_TOL = 0.12

BED_PROMPTS = ["a white cube with a red front", "a yellow cube with a blue front", "a white sphere with a red front",
               "a green cylinder with a white front", "a purple cube with an orange front",
               "a red cube on a blue sphere", "a white torus under an orange cone",
               "a green cone next to a yellow cylinder", "a red sphere in front of a blue cube",
               "a purple cylinder behind a white sphere"]
METHODS = {"plain SDS": ["guidance.view_dependent=false"],
           "view-dependent SDS": ["guidance.view_dependent=true"],
           "Perp-Neg": ["guidance.view_dependent=true", "guidance.type=perp_neg"],
           "multi-view SDS": ["guidance.view_dependent=false", "camera.n_views=4", "camera.batch_size=4"]}
BED_OVERRIDES = ["preview_every=0", "checkpoint_every=100000", "log_every=100000"]
BED_SIZE = ["render.n_samples=32"]  # with BED_STEPS: about 20 s a run on one busy core (docs/BENCHMARKS.md)
BED_STEPS = 100
SMOKE_SIZE = ["guidance.prior.views=32", "guidance.prior.resolution=16", "render.width=16", "render.height=16"]


def _model(cfg, models: dict):
    """The loaded prior for cfg (models: guidance_model_key -> model, filled on first use)."""
    from dreamfusion.guidance import guidance_model_key, load_guidance_model

    key = guidance_model_key(cfg)
    if key not in models:
        models[key] = load_guidance_model(cfg, "cpu")
    return models[key]


def bed_run(prompt: str, method: str, seed: int, steps: int, export_resolution: int, models: dict,
            extra: list[str], workdir: Path) -> dict:
    """One training run of the bed, in-process around the loaded priors `models` (``_model``); its scores and
    seconds (the first use of a prior is loaded before the clock starts)."""
    from dreamfusion.config import load_config
    from dreamfusion.export import extract_mesh
    from dreamfusion.export.texture import vertex_colors
    from dreamfusion.guidance import build_guidance
    from dreamfusion.train import Trainer

    cfg = load_config("demo", [f"prompt={prompt}", f"seed={seed}", f"steps={steps}", *BED_OVERRIDES, *extra,
                               *METHODS[method]])
    model = _model(cfg, models)
    run_dir = workdir / f"{method.replace(' ', '_')}-{seed}-{abs(hash(prompt))}"
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    trainer = Trainer(cfg, run_dir, torch.device("cpu"), build_guidance(cfg, "cpu", model))
    trainer.fit(progress=False)
    field = trainer.field
    with torch.no_grad():
        vertices, faces = extract_mesh(field.density, field.bound, export_resolution,
                                       auto_optical_depth=field.surface_optical_depth, device="cpu")
        rgb = vertex_colors(vertices, lambda p: field(p)["albedo"], device="cpu")
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=rgb, process=False)
    scores = scene_scores(mesh, prompt)
    return {"prompt": prompt, "method": method, "seed": seed, "seconds": time.perf_counter() - t0, **scores}


def run_prompt(prompt: str, field: str, output_dir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "dreamfusion", "--config", "demo", f"prompt={prompt}", f"field.type={field}",
           f"output_dir={output_dir}", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"prompt": prompt, "field": field, "error": proc.stderr.strip().splitlines()[-1:], "wall_s": wall}
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    mesh = trimesh.load(run_dir / "mesh" / "model.glb", force="mesh")
    shape, colour = parse_prompt(prompt)
    iou = volumetric_iou(np.asarray(mesh.vertices), np.asarray(mesh.faces), lambda p: inside(shape, p), 96)
    albedo = mean_surface_albedo(mesh)
    err = float(np.abs(albedo - np.array(COLOURS[colour])).max())
    target = GAUSSIAN_TARGET if field == "gaussian" else TARGETS[shape]
    ok = iou >= target and wall <= BUDGET_S and err <= ALBEDO_TOL
    return {"prompt": prompt, "field": field, "wall_s": round(wall, 1), "iou": round(iou, 3), "iou_target": target,
            "albedo": [round(float(a), 3) for a in albedo], "albedo_err": round(err, 3), "pass": bool(ok),
            "run_dir": str(run_dir)}


def _mean(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if key in r]
    return f"{np.mean(values):.2f}" if values else "–"


_WORKER: dict = {}


def _bed_worker_init(extra: list[str], threads: int, workdir: str) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(models={}, extra=extra, workdir=Path(workdir))


def _bed_worker_run(job: tuple) -> dict:
    prompt, method, seed, steps, resolution = job
    return bed_run(prompt, method, seed, steps, resolution, _WORKER["models"], _WORKER["extra"], _WORKER["workdir"])


def _methods(names: list[str] | None) -> list[str]:
    """The METHODS named (a full name or its first word, e.g. multi-view), all of them when None."""
    if not names:
        return list(METHODS)
    out = []
    for name in names:
        found = [m for m in METHODS if name in (m, m.split()[0])]
        if not found:
            raise SystemExit(f"--methods: unknown method '{name}': choose from {', '.join(METHODS)}")
        out += found
    return out


def bed(args) -> int:
    """The test bed's table: one row per run, then one per method (means over prompts and seeds)."""
    import tempfile

    from dreamfusion.config import load_config

    torch.set_num_threads(args.threads)
    methods = _methods(args.methods)
    kinds = {"all": BED_PROMPTS, "fronts": BED_PROMPTS[:5], "pairs": BED_PROMPTS[5:]}[args.only]
    prompts = args.prompts or ([p for p in (BED_PROMPTS[0], BED_PROMPTS[5]) if p in kinds] if args.smoke else kinds)
    steps = 2 if args.smoke else args.steps
    resolution = 24 if args.smoke else args.export_resolution
    extra = [*BED_SIZE, *(SMOKE_SIZE if args.smoke else []), *args.overrides]
    t0 = time.perf_counter()
    models: dict = {}
    for method in methods:  # the scenes' images, rendered once (cached on disk) before any run is timed
        for prompt in prompts:
            cfg = load_config("demo", [f"prompt={prompt}", *BED_OVERRIDES, *extra, *METHODS[method]])
            _model(cfg, models).encode_prompt(prompt)
    load = os.getloadavg()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__} on {args.threads} thread(s) | load average {load[0]:.1f} | steps {steps}, "
          f"export {resolution}^3 | {' '.join(extra)} | prior ready in {time.perf_counter() - t0:.1f} s", flush=True)
    print("| method | prompt | seed | Janus | IoU | IoU per object | split | relation | colour err | s |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    jobs = [(prompt, method, seed, steps, resolution) for seed in args.seeds for prompt in prompts for method in methods]
    with tempfile.TemporaryDirectory() as workdir:
        if args.workers > 1:  # processes of `threads` threads each, every one with its own prior (spawned)
            import multiprocessing

            pool = multiprocessing.get_context("spawn").Pool(args.workers, _bed_worker_init,
                                                             (extra, args.threads, workdir))
            results = pool.imap_unordered(_bed_worker_run, jobs)
        else:
            results = (bed_run(*job, models, extra, Path(workdir)) for job in jobs)
        for r in results:
            rows.append(r)
            per = " / ".join(f"{r[f'iou_{k}']:.2f}" for k in range(2) if f"iou_{k}" in r)
            split = {0.0: "pieces", 1.0: "colour"}.get(r.get("colour_split"), "–")
            print(f"| {r['method']} | {r['prompt']} | {r['seed']} | {r.get('janus', '–')} | {r['iou']:.3f} | "
                  f"{per or '–'} | {split} | {r.get('relation', '–')} | {r['albedo_err']:.3f} | {r['seconds']:.1f} |",
                  flush=True)
        if args.workers > 1:
            pool.close()
            pool.join()
    print(f"\n{len(rows)} runs in {time.perf_counter() - t0:.0f} s; load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| method | Janus score (mean; 1 is right) | runs with Janus 1 (front on +z) | IoU (objects with a front) | "
          "IoU per object (pairs) | pairs split by colour | relation accuracy (pairs) | colour error | seconds per run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        fronted = [r for r in mine if "janus" in r]
        pairs = [r for r in mine if "relation" in r]
        per_object = [{"v": r[f"iou_{k}"]} for r in pairs for k in range(2)]
        on_z = sum(r["janus"] == 1 and r["front_front"] > 0.5 for r in fronted)  # the one view showing it: +z
        right = f"{sum(r['janus'] == 1 for r in fronted)} / {len(fronted)} ({on_z})"
        by_colour = f"{sum(r['colour_split'] == 1 for r in pairs)} / {len(pairs)}"
        print(f"| {method} | {_mean(fronted, 'janus')} | {right} | {_mean(fronted, 'iou')} | {_mean(per_object, 'v')} | "
              f"{by_colour} | {_mean(pairs, 'relation')} | {_mean(mine, 'albedo_err')} | {_mean(mine, 'seconds')} |",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", nargs="+", default=None)
    ap.add_argument("--field", nargs="+", default=["nerf"], choices=["nerf", "triplane", "gaussian"])
    ap.add_argument("--output-dir", default="outputs/prior_grid")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--bed", action="store_true", help="the test bed: objects with a front and two-object scenes "
                    "x seeds x (plain SDS, view-dependent SDS, Perp-Neg, multi-view SDS)")
    ap.add_argument("--smoke", action="store_true", help="with --bed: one prompt of each kind, one seed, 2 steps")
    ap.add_argument("--only", choices=["all", "fronts", "pairs"], default="all",
                    help="with --bed: only the objects with a front, or only the pairs, of BED_PROMPTS")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="with --bed")
    ap.add_argument("--methods", nargs="+", default=None, help="with --bed: only these METHODS (a name or its "
                    "first word: plain, view-dependent, Perp-Neg, multi-view); all by default")
    ap.add_argument("--steps", type=int, default=BED_STEPS, help="with --bed: training steps per run")
    ap.add_argument("--export-resolution", type=int, default=48, help="with --bed: marching-cubes grid side")
    ap.add_argument("--workers", type=int, default=1, help="with --bed: runs side by side (processes)")
    ap.add_argument("--threads", type=int, default=1, help="with --bed: torch threads (1 is fastest on a busy machine)")
    ap.add_argument("overrides", nargs="*", help="extra key=value settings for every run")
    args = ap.parse_args()
    if args.bed:
        if args.smoke:
            args.seeds = args.seeds[:1]
        return bed(args)
    args.prompts = args.prompts or DEFAULT_PROMPTS
    rows = []
    print(f"# {time.strftime('%Y-%m-%d')} | {os.cpu_count()} CPU cores | torch {torch.__version__}")
    print("| field | prompt | wall s | IoU | target | mean albedo | albedo err | pass |")
    print("|---|---|---|---|---|---|---|---|")
    for field in args.field:
        for prompt in args.prompts:
            row = run_prompt(prompt, field, Path(args.output_dir), args.overrides)
            rows.append(row)
            if "error" in row:
                print(f"| {field} | {prompt} | {row['wall_s']:.1f} | error: {row['error']} | | | | no |", flush=True)
                continue
            print(f"| {field} | {prompt} | {row['wall_s']} | {row['iou']:.3f} | {row['iou_target']} | "
                  f"{tuple(row['albedo'])} | {row['albedo_err']:.3f} | {'yes' if row['pass'] else 'no'} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r.get("pass") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
