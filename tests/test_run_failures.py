"""A crash in any phase leaves a true record (issue 20): run.json says failed with the one-line error, the
traceback is in the run folder's error.log, the artifacts written before the crash stay listed, and the CLI
prints one error line and the run folder (last stdout line), never a traceback.

Oracle: a failure injected at a known point (a RuntimeError, as a device mix-up raises), then the run
folder's files read back: which artifacts exist on disk must be exactly those run.json lists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dreamfusion.artifacts
from dreamfusion.train import trainer as train_module
from test_devices import command, run_cli  # the tiny Stable Diffusion command line of the device tests

MESSAGE = "Expected all tensors to be on the same device (injected)"


def crash(*args, **kwargs):
    raise RuntimeError(MESSAGE + "\nsecond line of the message")


def assert_true_record(rc: int, out: str, err: str, listed: set[str]) -> Path:
    assert rc == 2
    run_dir = Path(out.splitlines()[-1])
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith(f"error: RuntimeError: {MESSAGE} (")
    assert str(run_dir / "error.log") in lines[-1]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == f"RuntimeError: {MESSAGE}"
    assert record["finished"] is not None
    log = (run_dir / "error.log").read_text()
    assert log.startswith("Traceback") and "in crash" in log and "second line of the message" in log
    assert listed <= set(record["artifacts"])
    for name, rel in record["artifacts"].items():
        assert (run_dir / rel).is_file(), name  # listed -> on disk
    return run_dir


@pytest.mark.parametrize("at", [1, 3])
def test_a_crash_in_training_is_recorded(at, request, tmp_path, monkeypatch):
    calls = {"n": 0}
    step = train_module.Trainer.train_step

    def fails_at(self):
        calls["n"] += 1
        return crash() if calls["n"] == at else step(self)

    monkeypatch.setattr(train_module.Trainer, "train_step", fails_at)
    rc, out, err = run_cli(command("default", request, tmp_path, "cpu"))
    run_dir = assert_true_record(rc, out, err, {"report"})
    record = json.loads((run_dir / "run.json").read_text())
    assert record["step"] == at - 1
    assert ("checkpoint" in record["artifacts"]) == (at > 2)  # checkpoint_every=2: none before step 2 ends


def test_a_crash_in_export_keeps_the_mesh_listed_in_a_run_and_in_export_run_dir(request, tmp_path, monkeypatch):
    monkeypatch.setattr(dreamfusion.artifacts, "render_eval", crash)  # the video, after the mesh
    rc, out, err = run_cli(command("default", request, tmp_path, "cpu"))
    run_dir = assert_true_record(rc, out, err, {"checkpoint", "obj", "glb", "report"})
    assert "video" not in json.loads((run_dir / "run.json").read_text())["artifacts"]
    (run_dir / "mesh" / "model.glb").unlink()  # export RUN_DIR writes it again before its own crash
    rc, out, err = run_cli(["export", run_dir])
    assert assert_true_record(rc, out, err, {"checkpoint", "obj", "glb"}) == run_dir
    assert "video" not in json.loads((run_dir / "run.json").read_text())["artifacts"]
