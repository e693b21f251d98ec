"""The command line, end to end: `python -m dreamfusion [--config NAME|PATH] key=value ...`.

Oracles: the run-folder contract of docs/DESIGN.md (every artifact, last stdout line = the folder),
round trips (config.yaml -> the same Config; .obj and .glb -> the same bounds and texture colours;
checkpoint -> the same mesh again), the Khronos glTF validator, and a straight 10-step run that a
6-step run resumed up to 10 steps must reproduce exactly. Errors: exit status 2, one `error: ` line on
stderr, and the files already there byte-for-byte unchanged.

Runs call `dreamfusion.cli.main` in-process with the tiny Stable Diffusion of conftest.py; one test
runs the real `python -m dreamfusion` entry point.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from conftest import GLTF_INSTALL, require_oracle
from dreamfusion.checkpoint import load_checkpoint
from dreamfusion.runfolder import CHECKPOINT
from dreamfusion.cli import main
from dreamfusion.config import all_keys, load_config, load_run_config
from dreamfusion.guidance import FrozenGuidance

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = ROOT / "tools" / "gltf-validator"
PROMPT = "a peacock on a surfboard"

# Small enough for 2 CPU cores; identical training settings in the smoke and the resume runs so that
# the resumed run can be compared with the straight one (t_anneal=none: the schedule must not depend
# on the total step count, which differs between the 6-step run and its resumption).
FIELD = ["field.hashgrid.n_levels=4", "field.hashgrid.log2_hashmap_size=12", "field.hashgrid.base_resolution=8", "field.hidden_dim=16"]
TRAIN = ["device=cpu", "render.width=32", "render.height=32", "render.n_samples=32", "guidance.stable_diffusion.vae_resolution=32",
         "guidance.t_anneal=none", "log_every=1", *FIELD]
EXPORT = ["export.resolution=32", "render.eval_grid=32", "export.texture_size=128", "export.video_frames=30", "export.video_resolution=32"]
CHEAP_EXPORT = ["export.resolution=24", "export.texture=vertex", "export.video_frames=2", "export.video_resolution=16"]


def run_cli(argv: list) -> tuple[int, str, str]:
    """main(argv) in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def last_line(text: str) -> str:
    return text.rstrip("\n").split("\n")[-1]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file and folder under `folder`."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def field_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir)["field"]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest texel at uv in the OBJ convention (v = 0 at the bottom row); trimesh reads both files so."""
    h, w = texture.shape[:2]
    col = np.clip(np.floor(uv[:, 0] * w).astype(int), 0, w - 1)
    row = np.clip(np.floor((1.0 - uv[:, 1]) * h).astype(int), 0, h - 1)
    return texture[row, col].astype(int)


def validate_glb(path: Path) -> dict:
    node = shutil.which("node")
    require_oracle(node is not None and (VALIDATOR / "node_modules" / "gltf-validator").is_dir(),
                   "the Khronos glTF validator", GLTF_INSTALL)
    run = subprocess.run([node, str(VALIDATOR / "validate.mjs"), str(path)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_sd_dir):
    """One 10-step run with the tiny Stable Diffusion: (output_dir, run_dir, stdout, stderr)."""
    out_dir = tmp_path_factory.mktemp("runs")
    rc, out, err = run_cli([f"prompt={PROMPT}", f"guidance.stable_diffusion.model={tiny_sd_dir}", f"output_dir={out_dir}", "steps=10",
                            "checkpoint_every=5", "preview_every=5", "preview_resolution=48", *TRAIN, *EXPORT])
    assert rc == 0, err
    return out_dir, Path(last_line(out)), out, err


# -- a finished run ----------------------------------------------------------------------------------

def test_run_folder_holds_every_artifact_and_is_the_last_stdout_line(finished, tiny_sd_dir):
    out_dir, run_dir, out, _ = finished
    assert [p.name for p in out_dir.iterdir()] == [run_dir.name]
    assert re.fullmatch(r"a-peacock-on-a-surfboard-\d{8}-\d{6}", run_dir.name)
    for name in ("config.yaml", "run.json", "checkpoints/last.pt", "metrics.jsonl", "mesh/model.obj", "mesh/model.mtl",
                 "mesh/model_albedo.png", "mesh/model.glb", "orbit.mp4", "report.html"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.rglob("*.tmp*"))
    # config.yaml is the resolved config: it loads back to what the command line asked for.
    asked = load_config(None, [f"prompt={PROMPT}", f"guidance.stable_diffusion.model={tiny_sd_dir}", f"output_dir={out_dir}",
                               "steps=10", "checkpoint_every=5", "preview_every=5", "preview_resolution=48",
                               *TRAIN, *EXPORT])
    assert load_run_config(run_dir / "config.yaml") == asked
    assert load_checkpoint(run_dir)["step"] == 10
    # log_every=1: one row per step, each with the weighted loss and the guidance's terms.
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert all({"loss", "loss_sds", "grad_norm", "t"} <= set(r) for r in rows)
    # preview_every=5: front/right/back/left side by side, preview_resolution pixels each.
    assert sorted(p.name for p in (run_dir / "previews").iterdir()) == ["step_000005.png", "step_000010.png"]
    assert np.asarray(Image.open(run_dir / "previews" / "step_000010.png")).shape == (48, 4 * 48, 3)
    # run.json: the run's record, its artifact paths relative to the folder and existing, seconds per phase.
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["status"], record["prompt"], record["step"], record["steps"], record["error"]) == \
        ("done", PROMPT, 10, 10, None)
    assert record["artifacts"] == {"checkpoint": "checkpoints/last.pt", "obj": "mesh/model.obj",
                                   "glb": "mesh/model.glb", "video": "orbit.mp4", "report": "report.html"}
    assert {"load_guidance", "train", "export.mesh", "export.unwrap", "export.bake", "export.write", "export.video",
            "report"} \
        <= set(record["seconds"]) and all(v >= 0 for v in record["seconds"].values())
    assert record["metrics"]["loss"] == pytest.approx(rows[-1]["loss"])


def test_every_export_phase_announces_itself_on_stderr(finished):
    """Long exports are never silent: each phase prints what it starts, and the video shows frame progress."""
    err = finished[3]
    for line in ("export.mesh: marching cubes on a 32^3 density grid", "export.unwrap: UV atlas of",
                 "export.bake: albedo baked into a 128 px texture",
                 "export.write: mesh/model.obj and mesh/model.glb", "export.video: 30 frames at 32 px",
                 "report: report.html"):
        assert line in err, line
    assert re.search(r"video frames: +\d+%.*\| \d+/30 ", err), "no progress over the video's frames"


def test_obj_and_glb_have_the_same_bounds_and_colours(finished):
    _, run_dir, _, _ = finished
    obj = trimesh.load(run_dir / "mesh" / "model.obj", process=False)
    glb = trimesh.load(run_dir / "mesh" / "model.glb", force="mesh", process=False)
    assert len(obj.faces) > 100
    np.testing.assert_allclose(obj.bounds, glb.bounds, atol=1e-5)
    assert np.all(np.abs(obj.bounds) <= 1.0)  # inside the scene cube [-bound, bound]^3
    tex_obj = np.asarray(obj.visual.material.image.convert("RGB"))
    tex_glb = np.asarray(glb.visual.material.baseColorTexture.convert("RGB"))
    assert tex_obj.shape == tex_glb.shape == (128, 128, 3)  # export.texture_size
    np.testing.assert_array_equal(tex_obj, tex_glb)
    np.testing.assert_array_equal(np.asarray(Image.open(run_dir / "mesh" / "model_albedo.png").convert("RGB")),
                                  tex_obj)
    # Same vertices in the same order; each vertex's texel is the same colour in both files.
    np.testing.assert_allclose(obj.vertices, glb.vertices, atol=1e-5)
    np.testing.assert_array_equal(sample_texture(tex_obj, np.asarray(obj.visual.uv)),
                                  sample_texture(tex_glb, np.asarray(glb.visual.uv)))


def test_glb_passes_khronos_validator(finished):
    report = validate_glb(finished[1] / "mesh" / "model.glb")
    assert report["numErrors"] == 0


def _frames(path: Path) -> np.ndarray:
    import imageio.v2 as imageio

    reader = imageio.get_reader(path, format="FFMPEG")
    frames = np.stack(list(reader.iter_data()))
    reader.close()
    return frames


def test_orbit_video_has_the_configured_frames(finished):
    assert _frames(finished[1] / "orbit.mp4").shape == (30, 32, 32, 3)  # export.video_frames, video_resolution


def test_export_rebuilds_mesh_and_video_without_loading_the_model(finished, tmp_path, monkeypatch):
    from dreamfusion.guidance.models.stable_diffusion import StableDiffusion

    run_dir = tmp_path / finished[1].name
    shutil.copytree(finished[1], run_dir)
    old = 1_000_000_000  # 2001: any rewrite shows as a newer mtime
    for name in ("mesh/model.glb", "mesh/model.obj", "orbit.mp4"):
        os.utime(run_dir / name, (old, old))

    def refuse(*args, **kwargs):
        raise AssertionError("export must not load the diffusion model")

    monkeypatch.setattr(StableDiffusion, "load", refuse)
    rc, out, err = run_cli(["export", run_dir, "export.video_frames=3"])  # overrides apply to this export
    assert rc == 0, err
    assert last_line(out) == str(run_dir)
    for name in ("mesh/model.glb", "mesh/model.obj", "orbit.mp4"):
        assert (run_dir / name).stat().st_mtime > old, name
    assert _frames(run_dir / "orbit.mp4").shape == (3, 32, 32, 3)
    # The checkpoint holds the field the run ended with: the same mesh comes out again.
    before = trimesh.load(finished[1] / "mesh" / "model.glb", force="mesh", process=False)
    after = trimesh.load(run_dir / "mesh" / "model.glb", force="mesh", process=False)
    np.testing.assert_allclose(after.vertices, before.vertices, atol=1e-6)
    np.testing.assert_array_equal(after.faces, before.faces)
    np.testing.assert_array_equal(np.asarray(Image.open(run_dir / "mesh" / "model_albedo.png")),
                                  np.asarray(Image.open(finished[1] / "mesh" / "model_albedo.png")))
    assert load_checkpoint(run_dir)["step"] == 10  # exporting does not touch the checkpoint


# -- resume and interrupt ------------------------------------------------------------------------------

def test_resume_continues_the_step_counter_and_matches_a_straight_run(finished, tiny_sd_dir, tmp_path):
    out_dir = tmp_path / "runs"
    rc, out, err = run_cli([f"prompt={PROMPT}", f"guidance.stable_diffusion.model={tiny_sd_dir}", f"output_dir={out_dir}", "steps=6",
                            "checkpoint_every=3", "preview_every=0", *TRAIN, *CHEAP_EXPORT])
    assert rc == 0, err
    run_dir = Path(last_line(out))
    assert load_checkpoint(run_dir)["step"] == 6

    rc, out, err = run_cli([f"resume={run_dir}", "steps=10"])
    assert rc == 0, err
    assert last_line(out) == str(run_dir)
    assert list(out_dir.iterdir()) == [run_dir]  # same folder, no second run folder
    assert load_checkpoint(run_dir)["step"] == 10
    assert load_run_config(run_dir / "config.yaml").steps == 10
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 11))  # rows past the old last step, none repeated
    # Optimizer state and RNG streams travel in the checkpoint: 6 + 4 steps == 10 straight steps.
    straight = metrics(finished[1])
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in straight], rtol=1e-4)
    resumed, reference = field_tensors(run_dir), field_tensors(finished[1])
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=1e-5, rtol=1e-4, msg=key)


class _StubGuidance(FrozenGuidance):
    """A cheap differentiable guidance that interrupts the loop at `stop_at` (Ctrl-C or SIGTERM)."""

    def __init__(self, stop_at: int | None, how: str = "ctrl-c"):
        self.stop_at, self.how = stop_at, how

    def __call__(self, images, cameras, step, total_steps, generator=None):
        if step == self.stop_at:
            if self.how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler turns it into KeyboardInterrupt
            else:
                raise KeyboardInterrupt
        return {"loss_sds": ((images - 0.5) ** 2).mean(), "grad_norm": 0.0}


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_saves_the_step_reached_and_names_the_resume_command(tmp_path, monkeypatch, how):
    import dreamfusion.guidance as guidance_pkg

    monkeypatch.setattr(guidance_pkg, "build_guidance", lambda cfg, device, model=None: _StubGuidance(4, how))
    args = ["prompt=a red cube", f"output_dir={tmp_path}", "steps=8", "checkpoint_every=3", "preview_every=0",
            "log_every=1", "device=cpu", "render.width=16", "render.height=16", "render.n_samples=16", *FIELD,
            *CHEAP_EXPORT]
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    rc, out, err = run_cli(args)
    run_dir = Path(last_line(out))
    assert rc == 2
    message = last_line(err)
    assert message.startswith("error: ") and "Traceback" not in err
    assert "resume=" in message and str(run_dir) in message
    # Four steps finished (the periodic checkpoint held step 3); the interrupt came in the fifth.
    assert load_checkpoint(run_dir)["step"] == 4
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["status"], record["step"], record["error"]) == ("interrupted", 4, message[len("error: "):])
    assert (run_dir / "report.html").is_file()  # an interrupted run has its report too
    assert not list(run_dir.rglob("*.tmp*")) and not (run_dir / "mesh").exists()
    assert signal.getsignal(signal.SIGTERM) == sigterm_handler  # the loop's handler is removed again

    # The printed command works: it continues to the end in the same folder.
    command = shlex.split(message.split("continue with: ", 1)[1])
    assert command[:3] == ["python", "-m", "dreamfusion"]
    monkeypatch.setattr(guidance_pkg, "build_guidance", lambda cfg, device, model=None: _StubGuidance(None))
    rc, out, err = run_cli(command[3:])
    assert rc == 0, err
    assert last_line(out) == str(run_dir) and list(tmp_path.iterdir()) == [run_dir]
    assert load_checkpoint(run_dir)["step"] == 8
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 9))


# -- errors: status 2, one line, nothing lost ----------------------------------------------------------

@pytest.fixture()
def broken_runs(finished, tmp_path):
    """Copies of the finished run: without its checkpoint, with a corrupt one, without or with a broken config.yaml."""
    src = finished[1]
    runs = {}
    for kind in ("no-checkpoint", "corrupt", "no-config", "bad-config"):
        runs[kind] = tmp_path / kind
        shutil.copytree(src, runs[kind])
    (runs["no-checkpoint"] / CHECKPOINT).unlink()
    (runs["corrupt"] / CHECKPOINT).write_bytes(b"\x00garbage, not a zip archive\xff" * 10)
    (runs["no-config"] / "config.yaml").unlink()
    (runs["bad-config"] / "config.yaml").write_text("steps: [1, 2\n")  # truncated by a full disk, say
    return runs


ERROR_CASES = {
    # id: (arguments on top of a valid command line, what the one line must contain). Each expected text says
    # what is wrong or what to do, and none is part of the arguments (a message that only echoes a path fails).
    "no-prompt": ([], ["prompt is empty", 'pass prompt="']),
    "empty-prompt": (["prompt=''"], ["prompt is empty"]),
    "blank-prompt": (["prompt='   '"], ["prompt is empty"]),
    "prompt-without-value": (["prompt="], ["prompt is empty"]),
    "unknown-key": (["feild.type=nerf"], ["unknown config key 'feild'", "did you mean field"]),
    "unknown-nested-key": (["guidance.stable_diffusion.modle=x"], ["unknown config key 'guidance.stable_diffusion.modle'",
                                                                  "did you mean guidance.stable_diffusion.model"]),
    "wrong-type": (["steps=abc"], ["bad value for 'steps'", "'abc'"]),
    "zero-steps": (["steps=0"], ["steps must be >= 1, got 0"]),
    "negative-steps": (["steps=-5"], ["steps must be >= 1, got -5"]),
    "nan-value": (["guidance.guidance_scale=nan"], ["guidance.guidance_scale must be a finite number, got nan"]),
    "bad-choice": (["guidance.type=foo"], ["bad value 'foo' for 'guidance.type'", "sds, perp_neg, vsd, clip"]),
    "not-key-value": (["peacock"], ["cannot read argument 'peacock'", "overrides are key=value"]),
    "unknown-option": (["--fast"], ["unknown option '--fast'", "options are --config NAME"]),
    "unknown-config": (["--config", "nope"], ["config 'nope' not found", "demo", "dreamfusion"]),
    "missing-model": (["guidance.stable_diffusion.model={tmp}/no-such-model"], ["is not a folder", "hf download", "--config demo"]),
    "model-folder-incomplete": (["guidance.stable_diffusion.model={tmp}"], ["has no unet/ subfolder", "--config demo"]),
    "output-dir-under-a-file": (["output_dir={tmp}/a-file/sub"], ["cannot write to output_dir", "is a file, not a folder"]),
    "resume-missing-folder": (["resume={tmp}/never-ran"], ["cannot resume", "has no config.yaml"]),
    "resume-no-checkpoint": (["resume={no-checkpoint}", "steps=12"], ["no checkpoint in", "expected checkpoints/last.pt"]),
    "resume-corrupt-checkpoint": (["resume={corrupt}", "steps=12"], ["cannot be read", "it is corrupt"]),
    "resume-no-config": (["resume={no-config}", "steps=12"], ["cannot resume", "has no config.yaml"]),
    "export-no-checkpoint": (["export", "{no-checkpoint}"], ["no checkpoint in", "expected checkpoints/last.pt"]),
    "export-not-a-run": (["export", "{tmp}"], ["is not a run folder (no config.yaml)"]),
    "resume-bad-config": (["resume={bad-config}", "steps=12"], ["cannot parse {bad-config}/config.yaml"]),
    "export-bad-config": (["export", "{bad-config}"], ["cannot parse {bad-config}/config.yaml"]),
}
ERROR_PARAMS = list(ERROR_CASES)


@pytest.mark.parametrize("case", ERROR_PARAMS)
def test_user_errors_are_one_line_exit_2_and_lose_nothing(case, finished, broken_runs, tiny_sd_dir, tmp_path):
    out_dir = finished[0]
    (tmp_path / "a-file").write_text("a regular file: nothing can be created under it")
    extra, expected = ERROR_CASES[case]
    names = {"tmp": tmp_path, **{k: v for k, v in broken_runs.items()}}
    extra = [a.format(**names) for a in extra]
    expected = [e.format(**names) for e in expected]
    if extra[:1] == ["export"]:
        argv = extra
    else:
        prompt = [] if case == "no-prompt" else ["prompt=a red cube"]
        argv = [*prompt, f"guidance.stable_diffusion.model={tiny_sd_dir}", f"output_dir={out_dir}", "device=cpu", *extra]
    before = {p: snapshot(p) for p in (out_dir, *broken_runs.values())}
    files_before = sorted(p.name for p in tmp_path.iterdir())

    rc, out, err = run_cli(argv)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert not any(text in str(a) for a in argv), f"{text!r} is in the arguments: it proves nothing"
        assert text in err, (text, err)
    assert out == ""
    assert {p: snapshot(p) for p in before} == before  # no run folder added, no file touched
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before


def test_prompt_longer_than_the_text_encoder_warns_and_runs(tiny_sd_dir, tmp_path):
    from transformers import CLIPTokenizer

    prompt = " ".join(["a very ornate peacock on a surfboard"] * 4)  # ~150 byte-level tokens, limit 77
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_dir / "tokenizer")
    longest = len(tokenizer(f"{prompt}, overhead view").input_ids)
    assert longest > tokenizer.model_max_length == 77
    rc, out, err = run_cli([f"prompt={prompt}", f"guidance.stable_diffusion.model={tiny_sd_dir}", f"output_dir={tmp_path}",
                            "steps=1", "preview_every=0", "device=cpu", "render.width=16", "render.height=16",
                            "render.n_samples=16", "guidance.stable_diffusion.vae_resolution=32", *FIELD, *CHEAP_EXPORT])
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: prompt truncated: it is {longest} tokens (with the ', overhead view' suffix), "
                        f"the text encoder reads 77; the last {longest - 77} are ignored"]
    run_dir = Path(last_line(out))
    assert load_checkpoint(run_dir)["step"] == 1
    assert len(run_dir.name) <= 60 + len("-YYYYmmdd-HHMMSS")  # the slug is cut, the folder name stays short


# -- help and the real entry point ---------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_config_and_every_key(flag, capsys):
    assert main([flag]) == 0
    out = capsys.readouterr().out
    configs = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert {"demo", "dreamfusion"} <= set(configs)
    listed = re.search(r"^configs \(--config NAME\): (.*)$", out, re.M).group(1).split(", ")
    assert listed == configs
    for key, doc, default in all_keys():
        assert f"  {key} = {default!r}\n      {doc}\n" in out + "\n", key


def test_python_m_dreamfusion_reports_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "dreamfusion", "feild.type=nerf", f"output_dir={tmp_path}"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: unknown config key 'feild'"), run.stderr
    assert "did you mean field" in run.stderr
    assert list(tmp_path.iterdir()) == []
