"""Devices come from the field and the inputs, on every path a GPU user runs.

On a GPU the field lives on ``cuda`` while a tensor made without a device lands on the CPU, and the two
meeting raise "Expected all tensors to be on the same device" (a CPU-default ``density_grid`` once failed
every export after training so). Without a GPU the roles are swapped: the field stays on the CPU and
PyTorch's default device is set to ``meta`` (tensors without data) for everything but building modules.
A tensor made from a default then lands on ``meta``: it meets the field's CPU tensors and raises, or carries
no data. Oracle: the twin, the same run with the ordinary default device, which every metric, the mesh and
the video frames must equal exactly. A device written as a literal (``device="cpu"``) is not moved by the
default device; the last test lists those by name, each with its reason.

The ``gpu`` tests run the same command lines end to end on ``DREAMFUSION_TEST_DEVICE`` (default cuda):
``DREAMFUSION_TEST_DEVICE=cpu python -m pytest -m gpu tests/test_devices.py`` checks them here.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.utils._device
import trimesh

import dreamfusion.guidance
from dreamfusion.train import trainer as train_module
from dreamfusion.cli import main

ROOT = Path(__file__).resolve().parent.parent
TEST_DEVICE = os.environ.get("DREAMFUSION_TEST_DEVICE", "cuda")

SMALL = ["steps=3", "checkpoint_every=2", "preview_every=3", "preview_resolution=16", "log_every=1",
         "render.width=16", "render.height=16", "render.n_samples=16", "render.eval_grid=16",
         "render.progressive_sizes=[]", "render.progressive_milestones=[]",
         "field.hashgrid.n_levels=4", "field.hashgrid.log2_hashmap_size=12", "field.hashgrid.base_resolution=8",
         "field.hidden_dim=16", "field.triplane.resolution=16", "field.triplane.channels=4",
         "field.gaussian.count=300", "field.gaussian.densify_every=2", "camera.batch_size=1",
         "export.resolution=24", "export.texture_size=64", "export.video_frames=2", "export.video_resolution=16"]
SD = ["guidance.stable_diffusion.vae_resolution=32", "guidance.stable_diffusion.dtype=fp32"]
PRIOR = ["guidance.prior.resolution=16", "guidance.prior.views=16"]

# name -> (config, overrides, the tiny model's fixture or None): every path of issue 20.
CASES = {
    "default": (None, SD, "tiny_sd_dir"),
    "triplane": ("triplane", SD, "tiny_sd_dir"),
    "gaussian": ("gaussian", SD, "tiny_sd_dir"),
    "dreamfields": ("dreamfields", ["guidance.clip.crops=1"], "tiny_clip_dir"),
    "prolificdreamer": ("prolificdreamer", SD, "tiny_sd_dir"),
    "perp_neg": (None, [*SD, "guidance.type=perp_neg"], "tiny_sd_dir"),
    "latent": (None, [*SD, "guidance.latent_render=true", "export.texture=vertex"], "tiny_sd_dir"),
    "deepfloyd": ("deepfloyd", [], "tiny_if_dir"),
    "demo": ("demo", PRIOR, None),
}


def command(case: str, request, out_dir: Path, device: str) -> list[str]:
    config, extra, fixture = CASES[case]
    section = {"tiny_sd_dir": "stable_diffusion", "tiny_if_dir": "deepfloyd", "tiny_clip_dir": "clip"}.get(fixture)
    model = [f"guidance.{section}.model={request.getfixturevalue(fixture)}"] if fixture else []
    return [*(["--config", config] if config else []), "prompt=a red cube", f"output_dir={out_dir}",
            f"device={device}", *SMALL, *extra, *model]


def run_cli(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def default_device_elsewhere(monkeypatch):
    """PyTorch's default device set to meta, except while modules are built and weights loaded (a GPU user's
    modules are built on the CPU, then moved): the trainer's constructor, the field and background of load_run
    (build_scene) and the guidance loader."""
    build_guidance, trainer_init = dreamfusion.guidance.build_guidance, train_module.Trainer.__init__
    build_scene = train_module.build_scene

    def on_cpu(fn):
        def wrapped(*args, **kwargs):
            try:
                with torch.device("cpu"):
                    return fn(*args, **kwargs)
            finally:
                _forget_device_constructors()
        return wrapped

    monkeypatch.setattr(dreamfusion.guidance, "build_guidance", on_cpu(build_guidance))
    monkeypatch.setattr(train_module.Trainer, "__init__", on_cpu(trainer_init))
    monkeypatch.setattr(train_module, "build_scene", on_cpu(build_scene))
    _forget_device_constructors()
    with torch.device("meta"):
        assert torch.linspace(0, 1, 2).device.type == "meta", "the default device no longer reaches torch.linspace"
        yield


def _forget_device_constructors() -> None:
    """Empty torch's cached set of the functions the default device reaches. transformers (5.x) swaps
    ``torch.linspace`` for a wrapper inside ``from_pretrained``; a set first filled then holds the wrapper, and
    from then on a bare ``torch.linspace`` under ``torch.device("meta")`` lands on the CPU for the whole process."""
    torch.utils._device._device_constructors.cache_clear()


def outcome(run_dir: Path) -> dict:
    """What a run produced, to compare with its twin: metrics, run.json's status, mesh, video frames."""
    record = json.loads((run_dir / "run.json").read_text())
    mesh = trimesh.load(run_dir / "mesh" / "model.obj", force="mesh", process=False)
    return {"status": record["status"], "error": record["error"], "metrics": record["metrics"],
            "log": (run_dir / "metrics.jsonl").read_text().splitlines(),
            "vertices": np.asarray(mesh.vertices), "faces": np.asarray(mesh.faces),
            "video": iio.imread(run_dir / "orbit.mp4"), "report": (run_dir / "report.html").is_file()}


def assert_same(a: dict, b: dict) -> None:
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key


def drop_times(lines: list[str]) -> list[dict]:
    rows = [json.loads(line) for line in lines]
    return [untimed(row) for row in rows]


def untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if "sec" not in k and "time" not in k}


CPU_CASES = ["default", "gaussian", "latent", "demo"]  # one per renderer / guidance family, seconds each


def run_and_export(argv: list) -> dict:
    """A run, then ``export RUN_DIR`` again with vertex colours: its outcome."""
    rc, out, err = run_cli(argv)
    assert rc == 0, err
    run_dir = Path(out.splitlines()[-1])
    rc, _, err = run_cli(["export", run_dir, "export.texture=vertex"])
    assert rc == 0, err
    return outcome(run_dir)


@pytest.mark.parametrize("case", CPU_CASES)
def test_run_export_and_report_alike_with_the_default_device_elsewhere(case, request, tmp_path, monkeypatch):
    twin = run_and_export(command(case, request, tmp_path / "twin", "cpu"))
    with default_device_elsewhere(monkeypatch):
        got = run_and_export(command(case, request, tmp_path / "meta", "cpu"))
    for values in (twin, got):
        values["log"], values["metrics"] = drop_times(values["log"]), untimed(values["metrics"])
    assert_same(twin, got)
    assert len(got["faces"]) > 0


# -- device literals ---------------------------------------------------------------------------------

# A CPU device written out in dreamfusion/ or render/ is not moved by the default device, so it is checked by
# name: a computation's ``device="cpu"`` default or call keyword, and a ``.cpu()`` that does not end in
# ``.numpy()`` (a tensor handed to NumPy leaves torch: an image written, a mesh extracted), are refused;
# builders and loaders may default to the CPU, as torch.nn modules do; the remaining ones are listed with
# their reason.
BUILDERS = re.compile(r"__init__$|^build_|^make_|^load")
ALLOWED_LITERALS = {
    ("dreamfusion/train/trainer.py", 'torch.Generator("cpu")'),  # the run's RNG: the same draws on any device
    ("dreamfusion/fields/base.py", 'torch.device("cpu")'),  # field_device of a module without tensors
    ("dreamfusion/guidance/rules/sds.py", 'torch.device("cpu")'),  # draws without a generator, as torch.rand's
    ("dreamfusion/guidance/rules/augment.py", 'torch.device("cpu")'),  # likewise
    ("dreamfusion/renderer/backgrounds.py", 'torch.device("cpu")'),  # likewise (the random textures' draws)
}
LITERAL = re.compile(r'torch\.device\("cpu"\)|torch\.Generator\("cpu"\)')
ALLOWED_CPU_CALLS = {  # (file, function, what): why that computation belongs on the host
    ("dreamfusion/guidance/rules/augment.py", "random_crop_boxes", ".cpu()"),  # integer boxes, the same on any device
    ("dreamfusion/guidance/models/deepfloyd.py", "_write", ".cpu()"),  # the text-embedding cache file on disk
    ("dreamfusion/guidance/prompts.py", "_on_host", ".cpu()"),  # float64 view angles, compared on the host
    ("dreamfusion/world/scores.py", "truth_mesh", 'device="cpu"'),  # the known object's mesh: no field, no device
    ("dreamfusion/preview.py", "sample_preview", ".cpu()"),  # the preview images, handed to the PNG writer
    ("dreamfusion/renderer/core.py", "render_preview", ".cpu()"),  # the training preview, handed to the PNG writer
    ("dreamfusion/renderer/backgrounds.py", "_checkerboard", ".cpu()"),  # textures made on the host from draws
    ("dreamfusion/renderer/backgrounds.py", "_fourier", ".cpu()"),  # on the generator's device, then moved
    ("dreamfusion/renderer/backgrounds.py", "random_backgrounds", ".cpu()"),  # to the images' device at the end
}


def cpu_defaults(source: str) -> list[str]:
    """Names of the functions of ``source`` whose ``device`` parameter defaults to "cpu", builders aside."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not BUILDERS.search(node.name):
            args = [*node.args.posonlyargs, *node.args.args]
            pairs = [*zip(args[len(args) - len(node.args.defaults):], node.args.defaults),
                     *zip(node.args.kwonlyargs, node.args.kw_defaults)]
            if any(a.arg == "device" and isinstance(d, ast.Constant) and d.value == "cpu" for a, d in pairs):
                found.append(node.name)
    return found


def cpu_calls(source: str) -> set[tuple[str, str]]:
    """(function, what) of each call in ``source`` outside builders that puts a tensor on the CPU: a
    ``device="cpu"`` keyword, or ``.cpu()`` not on its way to ``.numpy()``."""
    tree = ast.parse(source)
    to_numpy = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "numpy":
            inner = node.func.value  # x.detach().cpu().float().numpy(): every call of the chain
            while isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute):
                to_numpy.add(id(inner))
                inner = inner.func.value
    found = set()

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and not BUILDERS.search(inner):
                if any(k.arg == "device" and isinstance(k.value, ast.Constant) and k.value.value == "cpu"
                       for k in child.keywords):
                    found.add((inner, 'device="cpu"'))
                if isinstance(child.func, ast.Attribute) and child.func.attr == "cpu" and id(child) not in to_numpy:
                    found.add((inner, ".cpu()"))
            visit(child, inner)

    visit(tree, "<module>")
    return found


def test_no_computation_takes_a_cpu_device_default():
    defaults, literals, calls = [], set(), set()
    for folder in ("dreamfusion", "render"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            text = path.read_text()
            defaults += [f"{rel}:{name}" for name in cpu_defaults(text)]
            literals |= {(rel, m.group(0)) for m in LITERAL.finditer(text)}
            calls |= {(rel, *found) for found in cpu_calls(text)}
    assert not defaults, f"device='cpu' defaults (take the device from the field or the inputs): {defaults}"
    assert not literals - ALLOWED_LITERALS, f"CPU device literals: {sorted(literals - ALLOWED_LITERALS)}"
    assert not calls - ALLOWED_CPU_CALLS, f"CPU calls (device from the data): {sorted(calls - ALLOWED_CPU_CALLS)}"
    assert not ALLOWED_CPU_CALLS - calls, f"allowed but gone: {sorted(ALLOWED_CPU_CALLS - calls)}"


def test_the_cpu_scan_reads_call_keywords_and_cpu_calls():
    source = ("def _reset_stats(self, n, device):\n    self.grad_accum = torch.zeros(n, device='cpu')\n"
              "def render(x):\n    y = x.cpu()\n    return y.numpy(), x.detach().cpu().float().numpy()\n"
              "def build_grid(n):\n    return torch.zeros(n, device='cpu').cpu()\n")
    assert cpu_calls(source) == {("_reset_stats", 'device="cpu"'), ("render", ".cpu()")}


# -- the GPU suite: every path end to end on DREAMFUSION_TEST_DEVICE (default cuda) -----------------------

def _need_test_device():
    if TEST_DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.fail("the gpu suite needs CUDA (or DREAMFUSION_TEST_DEVICE=cpu to check its logic)")


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
def test_cli_end_to_end_on_the_test_device(case, request, tmp_path, tiny_clip_dir):
    _need_test_device()
    rc, out, err = run_cli(command(case, request, tmp_path, TEST_DEVICE))
    assert rc == 0, err
    run_dir = Path(out.splitlines()[-1])
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done" and record["step"] == 3
    assert {"checkpoint", "obj", "glb", "video", "report"} <= set(record["artifacts"])
    rc, _, err = run_cli(["export", run_dir, "export.resolution=16"])
    assert rc == 0, err
    rc, _, err = run_cli([*command(case, request, tmp_path, TEST_DEVICE), f"resume={run_dir}", "steps=4"])
    assert rc == 0, err
    assert json.loads((run_dir / "run.json").read_text())["step"] == 4
    rc, out, err = run_cli(["eval", run_dir, "--clip-model", tiny_clip_dir, "--views", "2", "--resolution", "16",
                            "--device", TEST_DEVICE])
    assert rc == 0, err


@pytest.mark.gpu
def test_batch_with_one_actor_on_the_test_device(tmp_path):
    _need_test_device()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    rc, out, err = run_cli(["batch", prompts, "--config", "demo", "--max-parallel", "1", f"device={TEST_DEVICE}",
                            f"output_dir={tmp_path / 'runs'}", *SMALL, *PRIOR])
    assert rc == 0, err
    runs = json.loads((Path(out.splitlines()[-1]) / "batch.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["done", "done"], runs
