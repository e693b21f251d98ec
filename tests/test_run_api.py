"""The run API (dreamfusion/run.py) on the embedded prior: run -> RunResult and run.json, load_run round trip,
one loaded model serving several prompts, failures recorded in run.json, and resume after a kill -9.

Oracles: the checkpoint's tensors (load_run round trip); the prior's scores recomputed from the written mesh;
a fresh model load (the shared model must give the same metrics rows); a straight run that a killed and
resumed run must reproduce, with every step's metrics row written once.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dreamfusion.checkpoint import load_checkpoint
from dreamfusion.config import load_config
from dreamfusion.errors import ConfigError, UserError
from dreamfusion.guidance import FunctionGuidance, load_guidance_model
from dreamfusion.world.scores import prior_scores
from dreamfusion.settings import replace_key
from dreamfusion.run import export as export_run_dir
from dreamfusion.run import load_run, resume, resume_config, run
from dreamfusion.runfolder import RunFolderBusy, read_run_json
from dreamfusion.train.losses import weighted_loss

ROOT = Path(__file__).resolve().parent.parent
TINY = ["steps=8", "device=cpu", "render.eval_grid=24", "render.width=16", "render.height=16", "render.n_samples=24",
        "guidance.prior.views=64", "guidance.prior.resolution=16", "checkpoint_every=4", "preview_every=0",
        "log_every=1", "export.resolution=24", "export.texture=vertex", "export.video_frames=2",
        "export.video_resolution=16"]


def tiny(prompt: str, tmp_path: Path, *extra: str):
    return load_config("demo", [f"prompt={prompt}", f"output_dir={tmp_path}", *TINY, *extra])


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return run(tiny("a red cube", out), config_name="demo", overrides=["prompt=a red cube"], quiet=True)


def test_run_returns_its_result_and_writes_run_json(finished):
    result = finished
    record = read_run_json(result.run_dir)
    assert result.status == record["status"] == "done" and record["error"] is None
    assert (record["prompt"], record["config"], record["field"], record["guidance"], record["step"]) == \
        ("a red cube", "demo", "nerf", "sds/prior", 8)
    assert {k: result.run_dir / v for k, v in record["artifacts"].items()} == result.artifacts
    assert all(path.is_file() for path in result.artifacts.values())
    assert set(result.seconds) >= {"load_guidance", "train", "export.mesh", "export.video"}
    scores = prior_scores(result.artifacts["glb"], "a red cube")  # recomputed from the written mesh
    assert result.metrics["iou"] == pytest.approx(scores["iou"]) and 0 <= result.metrics["iou"] <= 1
    assert result.metrics["loss"] == pytest.approx(rows(result.run_dir)[-1]["loss"])


def test_load_run_gives_the_checkpointed_field(finished):
    loaded = load_run(finished.run_dir, "cpu")
    state = load_checkpoint(finished.run_dir)
    assert loaded.step == 8 and loaded.cfg.prompt == "a red cube"
    for key, value in state["field"].items():
        assert torch.equal(loaded.field.state_dict()[key], value), key


def test_one_loaded_model_serves_several_prompts(finished, tmp_path):
    """A batch worker's pattern: the prior's image set loaded once, two prompts run on it; each run's metrics
    rows equal those of a run that loaded its own model."""
    shared = load_guidance_model(tiny("a blue sphere", tmp_path), "cpu")
    for prompt in ("a blue sphere", "a red cube"):
        with_shared = run(tiny(prompt, tmp_path / "shared"), guidance_model=shared, quiet=True)
        own = finished if prompt == "a red cube" else run(tiny(prompt, tmp_path / "own"), quiet=True)
        assert rows(with_shared.run_dir) == [dict(r, sec_per_step=pytest.approx(r["sec_per_step"], abs=1e9))
                                             for r in rows(own.run_dir)]


def _nan_from(first: int, last: int = 10**9, where: str = "loss") -> FunctionGuidance:
    """A guidance stub whose loss (or only its gradient) is NaN at steps first..last."""
    def terms(rgb, cams, step, steps, generator=None):
        bad = first <= step <= last
        if bad and where == "grad":  # a finite loss with a NaN gradient
            rgb.register_hook(lambda g: torch.full_like(g, float("nan")))
        return {"loss_sds": rgb.mean() * (float("nan") if bad and where == "loss" else 1.0)}
    return FunctionGuidance(terms)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_a_non_finite_step_is_skipped_and_counted(tmp_path, monkeypatch, where):
    """A step with a NaN loss or gradient changes nothing (field and Adam state bit-identical) and is counted."""
    import dreamfusion.guidance as guidance_pkg
    from dreamfusion.train import Trainer

    cfg = tiny("a red cube", tmp_path)
    trainer = Trainer(cfg, tmp_path, torch.device("cpu"), _nan_from(2, 2, where))
    for _ in range(2):
        trainer.train_step()
    before = trainer.state()
    row = trainer.train_step()  # step 2: skipped
    after = trainer.state()
    assert row["skipped_steps"] == 1 and trainer.step == 3
    for key in ("field", "background"):
        assert all(torch.equal(before[key][k], after[key][k]) for k in before[key]), key
    assert str(before["optimizer"]["state"]) == str(after["optimizer"]["state"])
    monkeypatch.setattr(guidance_pkg, "build_guidance", lambda cfg, device, model=None: _nan_from(5, 5, where))
    result = run(tiny("a red cube", tmp_path), quiet=True)  # one bad step: the run goes on and finishes
    assert result.status == "done" and result.metrics["skipped_steps"] == 1
    assert [r["skipped_steps"] for r in rows(result.run_dir)] == [0] * 5 + [1] * 3
    assert all(torch.isfinite(v).all() for v in load_checkpoint(result.run_dir)["field"].values())


def _nan_at(bad: set[int]) -> FunctionGuidance:
    """A guidance stub whose loss is NaN at the steps in ``bad``."""
    return FunctionGuidance(lambda rgb, cams, step, steps, generator=None:
                            {"loss_sds": rgb.mean() * (float("nan") if step in bad else 1.0)})


def test_bad_steps_apart_never_add_up_to_a_run_in_a_row(tmp_path):
    """NaN at steps 2, 4 and 6 with max_nonfinite_steps=2: never two in a row, so all 8 steps run, 3 skipped."""
    from dreamfusion.train import Trainer

    trainer = Trainer(tiny("a red cube", tmp_path, "max_nonfinite_steps=2"), tmp_path, torch.device("cpu"),
                      _nan_at({2, 4, 6}))
    skipped = [trainer.train_step()["skipped_steps"] for _ in range(8)]
    assert skipped == [0, 0, 1, 1, 2, 2, 3, 3] and trainer.step == 8


def test_skipped_steps_carry_over_a_resume(tmp_path):
    """A checkpoint taken after a skipped step (NaN at 2, saved after 4 steps), loaded and run to step 8: the
    skipped_steps column equals the straight run's."""
    from dreamfusion.train import Trainer

    cfg = tiny("a red cube", tmp_path)
    straight = Trainer(cfg, tmp_path, torch.device("cpu"), _nan_at({2, 6}))
    want = [straight.train_step()["skipped_steps"] for _ in range(8)]
    first = Trainer(cfg, tmp_path, torch.device("cpu"), _nan_at({2, 6}))
    got = [first.train_step()["skipped_steps"] for _ in range(4)]
    second = Trainer(cfg, tmp_path, torch.device("cpu"), _nan_at({2, 6}))
    second.load(first.state())
    got += [second.train_step()["skipped_steps"] for _ in range(4)]
    assert got == want == [0, 0, 1, 1, 1, 1, 2, 2]


def test_a_diverging_run_fails_alone_with_its_line_in_run_json(tmp_path, monkeypatch):
    import dreamfusion.guidance as guidance_pkg

    monkeypatch.setattr(guidance_pkg, "build_guidance", lambda cfg, device, model=None: _nan_from(5))
    with pytest.raises(UserError, match="3 steps in a row had a non-finite loss or gradient") as info:
        run(tiny("a red cube", tmp_path, "max_nonfinite_steps=3"), quiet=True)
    record = read_run_json(info.value.run_dir)
    assert (record["status"], record["step"]) == ("failed", 7)
    assert record["error"] == str(info.value) and "\n" not in record["error"]
    assert "the last checkpoint (step 4) is intact" in record["error"]
    assert load_checkpoint(info.value.run_dir)["step"] == 4  # the last good checkpoint stays
    assert [r["skipped_steps"] for r in rows(info.value.run_dir)] == [0, 0, 0, 0, 0, 1, 2]


class _FullDisk:
    """``open`` on a disk that fills up: from the ``after``-th opening for writing of a file named like ``name``
    (its temporary twin included), writes raise ENOSPC as a full disk does once a new file holds 1 kB (a file
    appended to gets nothing more). torch.save then raises its own RuntimeError, "unexpected pos", as it does on
    a real full disk.
    ``kept`` holds the target's bytes at the moment the disk filled."""

    def __init__(self, target: Path, after: int = 1):
        self.target, self.after, self.opened, self.kept = target, after, 0, None

    def __call__(self, file, mode="r", *args, **kwargs):
        fh = builtins.open(file, mode, *args, **kwargs)
        path = Path(file)
        if ("w" in mode or "a" in mode) and path.parent == self.target.parent and \
                re.sub(r"\.\d+\.tmp", "", path.name.lstrip(".")) == self.target.name:
            self.opened += 1
            if self.opened >= self.after:
                self.kept = self.target.read_bytes() if self.target.is_file() else None
                return _Full(fh, "a" in mode)
        return fh


class _Full:
    def __init__(self, fh, append: bool):
        self.fh, self.room = fh, 0 if append else 1024

    def write(self, data):
        if len(data) > self.room:
            self.fh.write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


@pytest.mark.parametrize("name, after", [("checkpoints/last.pt", 2), ("mesh/model.glb", 1), ("metrics.jsonl", 1)])
def test_a_full_disk_fails_the_run_with_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, name, after):
    """ENOSPC while torch.save writes the second checkpoint (torch wraps it in a RuntimeError), while the mesh is
    written, or while a metrics row is appended: one line naming the file, the file's previous bytes kept, no
    temporary file left, run.json failed with that line."""
    import dreamfusion.io
    import dreamfusion.runfolder

    out = tmp_path / "out"
    disk = {}

    def make_run_dir(output_dir, slug):  # the run folder's name is known before the run starts
        run_dir = out / "run"
        run_dir.mkdir(parents=True)
        disk["full"] = _FullDisk(run_dir / name, after)
        for module in (dreamfusion.io, dreamfusion.runfolder):
            monkeypatch.setattr(module, "open", disk["full"], raising=False)
        return run_dir

    monkeypatch.setattr("dreamfusion.run.make_run_dir", make_run_dir)
    with pytest.raises(UserError) as info:
        run(tiny("a red cube", out), quiet=True)
    run_dir, message = out / "run", str(info.value)
    assert info.value.run_dir == run_dir and disk["full"].opened >= after
    assert f"cannot write '{run_dir / name}': no space left on device" in message and "\n" not in message
    assert "Traceback" not in message and "enforce fail" not in message
    if disk["full"].kept is not None:  # the previous checkpoint / metrics rows, byte for byte
        assert (run_dir / name).read_bytes() == disk["full"].kept
    if name == "checkpoints/last.pt":
        assert load_checkpoint(run_dir)["step"] == 4
    assert [p.name for p in run_dir.rglob("*") if ".tmp" in p.name] == []
    record = read_run_json(run_dir)
    assert record["status"] == "failed" and record["error"] == message


def test_a_loss_term_without_a_weight_is_an_error_not_dropped():
    cfg = load_config("demo")
    terms = {"loss_sds": torch.tensor(2.0), "loss_sparsity": torch.tensor(3.0), "grad_norm": 1.0}
    cfg = replace_key(cfg, "loss.sparsity", 0.5)
    assert weighted_loss(terms, cfg.loss).item() == pytest.approx(2.0 + 1.5)
    with pytest.raises(ConfigError, match="'loss_novel' but the config has no weight 'loss.novel'"):
        weighted_loss({**terms, "loss_novel": torch.tensor(1.0)}, cfg.loss)
    cfg = replace_key(replace_key(cfg, "loss.sds", 0.0), "loss.sparsity", 0.0)
    with pytest.raises(ConfigError, match="every computed loss term has weight 0"):
        weighted_loss(terms, cfg.loss)


def _cli(args: list[str], env: dict, pause: str | None = None) -> subprocess.Popen:
    """python -m dreamfusion --config demo ARGS; with ``pause`` (STEP), through tests/paused_run.py: the run waits
    after that step until it is killed."""
    launcher = ["-m", "dreamfusion"] if pause is None else [str(ROOT / "tests" / "paused_run.py"), pause]
    return subprocess.Popen([sys.executable, *launcher, "--config", "demo", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_pause(folder: Path, proc: subprocess.Popen, timeout: float = 600) -> Path:
    """The run folder under `folder` whose loop paused at paused_run.py's step (it wrote `paused` and
    now waits to be stopped, so a signal sent after this lands at that step whatever the machine's load)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(folder.glob("*/paused"))
        if found:
            return found[0].parent
        assert proc.poll() is None, f"the process ended before pausing: {proc.communicate()[1][-2000:]}"
        time.sleep(0.05)
    proc.kill()  # a process that never paused must not outlive the test
    raise AssertionError(f"no run under {folder} paused within {timeout} s")


def test_kill_9_between_checkpoints_then_resume_matches_a_straight_run(tmp_path):
    """SIGKILL after the step-4 checkpoint: metrics.jsonl rows and previews past step 4 are dropped on resume,
    so every step is written once, and the resumed field equals a straight 12-step run's. While the first process
    trains, a second resume or export of its folder is refused in one line naming it; once it is killed, its
    lock is gone with it and the resume takes the folder over. The killed process
    pauses after step 6 (tests/paused_run.py 6) and is killed while it waits: no timing window."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["prompt=a red cube", *TINY, "steps=12", "preview_every=1", "preview_resolution=32"]
    straight = _cli([*args, f"output_dir={tmp_path / 'straight'}"], env)
    out, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-2000:]
    straight_dir = Path(out.strip().splitlines()[-1])

    killed = _cli([*args, f"output_dir={tmp_path / 'killed'}"], env, pause="6")
    run_dir = _wait_for_pause(tmp_path / "killed", killed)
    try:
        busy = subprocess.run([sys.executable, "-m", "dreamfusion", f"resume={run_dir}", "steps=12"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)  # while it trains: refused
        refusal = (f"run folder '{run_dir}' is in use by process {killed.pid} (training: "
                   f"{ROOT / 'tests' / 'paused_run.py'} 6 --config demo {' '.join(args)} "
                   f"output_dir={tmp_path / 'killed'}): wait until it ends (or stop it), then run this again")
        assert busy.returncode == 2 and busy.stderr.strip().splitlines() == [f"error: {refusal}"], busy.stderr[-2000:]
        with pytest.raises(RunFolderBusy) as refused:  # and so is an export of it
            export_run_dir(run_dir, quiet=True)
        assert str(refused.value) == refusal
    finally:  # the paused process never ends by itself
        os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert (run_dir / "paused").read_text() == "6\n"
    saved = load_checkpoint(run_dir)["step"]
    written = [r["step"] for r in rows(run_dir)]
    assert (saved, written) == (4, list(range(1, 7)))  # killed between checkpoints, with rows past the last one

    resumed = subprocess.run([sys.executable, "-m", "dreamfusion", f"resume={run_dir}", "steps=12"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["step"] for r in rows(run_dir)] == list(range(1, 13))  # each step once
    assert sorted(p.name for p in (run_dir / "previews").iterdir()) == [f"step_{s:06d}.png" for s in range(1, 13)]
    assert read_run_json(run_dir)["status"] == "done"
    expected, got = load_checkpoint(straight_dir)["field"], load_checkpoint(run_dir)["field"]
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
    assert [r["loss"] for r in rows(run_dir)] == pytest.approx([r["loss"] for r in rows(straight_dir)], rel=1e-4)



def test_run_resume_continues_a_run_folder_like_a_straight_run(tmp_path):
    """run.resume(run_dir, overrides) (the CLI's resume=RUN_DIR and a batch's rerun both call it): an 8-step run
    resumed to 12 steps gives the same rows and field as a straight 12-step run; a folder without config.yaml is
    one line."""
    model = load_guidance_model(tiny("a red cube", tmp_path), "cpu")
    straight = run(tiny("a red cube", tmp_path / "straight", "steps=12"), guidance_model=model, quiet=True)
    first = run(tiny("a red cube", tmp_path / "first"), guidance_model=model, quiet=True)
    cfg = resume_config(first.run_dir, ["steps=12"])
    assert (cfg.resume, cfg.steps, cfg.prompt) == (str(first.run_dir), 12, "a red cube")
    resumed = resume(first.run_dir, ["steps=12"], guidance_model=model, quiet=True)
    assert resumed.run_dir == first.run_dir and resumed.status == "done"
    assert [r["step"] for r in rows(first.run_dir)] == list(range(1, 13))
    assert [r["loss"] for r in rows(first.run_dir)] == pytest.approx([r["loss"] for r in rows(straight.run_dir)],
                                                                     rel=1e-5)
    expected, got = load_checkpoint(straight.run_dir)["field"], load_checkpoint(first.run_dir)["field"]
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    with pytest.raises(UserError, match=r"^cannot resume: '.*' has no config.yaml; pass a run folder"):
        resume(tmp_path)


@pytest.mark.parametrize("preview_every", [4, 0])
def test_video_reuses_the_last_previews_grid(tmp_path, preview_every):
    """render.eval_grid: the grid sampled for the last step's preview is the video's (no export.grid phase);
    without a preview at the last step the export samples the grid itself."""
    cfg = tiny("a red cube", tmp_path, "render.eval_grid=20", f"preview_every={preview_every}",
               "preview_resolution=16")
    result = run(cfg, quiet=True)
    assert result.status == "done" and result.artifacts["video"].is_file()
    assert ("export.grid" in result.seconds) == (preview_every == 0)
    assert len(list((result.run_dir / "previews").glob("step_*.png"))) == (2 if preview_every else 0)


def test_the_eval_view_is_sampled_once_per_step(tmp_path):
    from dreamfusion.renderer import BakedField
    from dreamfusion.train import Trainer

    r = 12
    trainer = Trainer(tiny("a red cube", tmp_path, f"render.eval_grid={r}"), tmp_path, torch.device("cpu"))
    renderer = trainer.renderer
    assert renderer.cached_eval_view() is None
    first = renderer.eval_view()
    assert isinstance(first, BakedField) and first.resolution == r
    assert renderer.eval_view() is first and renderer.cached_eval_view() is first
    renderer.update(trainer.step)  # a step changes the field: the grid is sampled again
    assert renderer.cached_eval_view() is None and renderer.eval_view() is not first
    vertex = torch.tensor([[-1.0 + 5 * 2.0 / (r - 1), 1.0, -1.0 + 7 * 2.0 / (r - 1)]]) * trainer.field.bound
    with torch.no_grad():
        want = trainer.field(vertex)
    got = renderer.eval_view()(vertex)
    assert torch.allclose(got["density"], want["density"], rtol=1e-4) and torch.allclose(got["albedo"], want["albedo"], atol=1e-5)
