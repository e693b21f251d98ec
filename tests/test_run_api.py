"""The run API (dreamfusion/run.py) on the embedded prior: run -> RunResult and run.json, load_run round trip,
one loaded model serving several prompts, failures recorded in run.json, and resume after a kill -9.

Oracles: the checkpoint's tensors (load_run round trip); the prior's scores recomputed from the written mesh;
a fresh model load (the shared model must give the same metrics rows); a straight run that a killed and
resumed run must reproduce, with every step's metrics row written once.
"""

from __future__ import annotations

import json
import os
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
from dreamfusion.metrics import prior_scores
from dreamfusion.run import load_run, read_run_json, run
from dreamfusion.train import weighted_loss

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
        ("a red cube", "demo", "nerf", "prior", 8)
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


def test_a_diverging_run_fails_alone_with_its_line_in_run_json(tmp_path, monkeypatch):
    import dreamfusion.guidance as guidance_pkg

    nan = FunctionGuidance(lambda rgb, cams, step, steps, generator=None:
                           {"loss_sds": rgb.mean() * (float("nan") if step == 5 else 1.0)})
    monkeypatch.setattr(guidance_pkg, "build_guidance", lambda cfg, device, model=None: nan)
    with pytest.raises(UserError, match="the loss is nan at step 5") as info:
        run(tiny("a red cube", tmp_path), quiet=True)
    record = read_run_json(info.value.run_dir)
    assert (record["status"], record["step"]) == ("failed", 5)
    assert record["error"] == str(info.value) and "\n" not in record["error"]
    assert load_checkpoint(info.value.run_dir)["step"] == 4  # the last checkpoint stays


def test_a_loss_term_without_a_weight_is_an_error_not_dropped():
    cfg = load_config("demo")
    terms = {"loss_sds": torch.tensor(2.0), "loss_sparsity": torch.tensor(3.0), "grad_norm": 1.0}
    cfg.loss.sparsity = 0.5
    assert weighted_loss(terms, cfg.loss).item() == pytest.approx(2.0 + 1.5)
    with pytest.raises(ConfigError, match="'loss_novel' but the config has no weight 'loss.novel'"):
        weighted_loss({**terms, "loss_novel": torch.tensor(1.0)}, cfg.loss)
    cfg.loss.sds = cfg.loss.sparsity = 0.0
    with pytest.raises(ConfigError, match="every computed loss term has weight 0"):
        weighted_loss(terms, cfg.loss)


def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dreamfusion", "--config", "demo", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_pause(folder: Path, proc: subprocess.Popen, timeout: float = 600) -> Path:
    """The run folder under `folder` whose loop paused at DREAMFUSION_TEST_PAUSE's step (it wrote `paused` and
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
    so every step is written once, and the resumed field equals a straight 12-step run's. The killed process
    pauses after step 6 (DREAMFUSION_TEST_PAUSE=6) and is killed while it waits: no timing window."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DREAMFUSION_TEST_PAUSE", None)
    args = ["prompt=a red cube", *TINY, "steps=12", "preview_every=1", "preview_resolution=32"]
    straight = _cli([*args, f"output_dir={tmp_path / 'straight'}"], env)
    out, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-2000:]
    straight_dir = Path(out.strip().splitlines()[-1])

    killed = _cli([*args, f"output_dir={tmp_path / 'killed'}"], {**env, "DREAMFUSION_TEST_PAUSE": "6"})
    run_dir = _wait_for_pause(tmp_path / "killed", killed)
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


def test_trainer_eval_view_is_sampled_once_per_step(tmp_path):
    from dreamfusion.fields.baked import BakedField
    from dreamfusion.train import Trainer

    r = 12
    trainer = Trainer(tiny("a red cube", tmp_path, f"render.eval_grid={r}"), tmp_path, torch.device("cpu"))
    assert trainer.cached_eval_view() is None
    first = trainer.eval_view()
    assert isinstance(first, BakedField) and first.resolution == r
    assert trainer.eval_view() is first and trainer.cached_eval_view() is first
    trainer.step += 1  # a step changes the field: the grid is sampled again
    assert trainer.cached_eval_view() is None and trainer.eval_view() is not first
    vertex = torch.tensor([[-1.0 + 5 * 2.0 / (r - 1), 1.0, -1.0 + 7 * 2.0 / (r - 1)]]) * trainer.field.bound
    with torch.no_grad():
        want = trainer.field(vertex)
    got = trainer.eval_view()(vertex)
    assert torch.allclose(got["density"], want["density"], rtol=1e-4) and torch.allclose(got["albedo"], want["albedo"], atol=1e-5)
