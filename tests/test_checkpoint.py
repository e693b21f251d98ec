"""Checkpoints and run folders: round trips, refusal of pickled code, atomic writes.

Oracles: save -> load gives the same tensors; a second Trainer loaded from the checkpoint renders the
same images and takes the same next step as the first; a payload that would write a file when
unpickled does not run; a write that fails half-way leaves the previous file and no temp file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dreamfusion.checkpoint import load_checkpoint, save_checkpoint
from dreamfusion.runfolder import CHECKPOINT, check_output_dir, make_run_dir, slugify
from dreamfusion.config import load_config
from dreamfusion.errors import CheckpointError, UserError
from dreamfusion.io import atomic_write_text
from dreamfusion.migrations import CHECKPOINT_FORMAT
from dreamfusion.train.cameras import render_size
from dreamfusion.train.trainer import Trainer
from render.cameras import Cameras, orbit_cameras, sample_cameras

SMALL = ["device=cpu", "render.width=16", "render.height=16", "render.n_samples=16", "field.hashgrid.n_levels=4",
         "field.hashgrid.log2_hashmap_size=10", "field.hashgrid.base_resolution=8", "field.hidden_dim=16"]


def make_trainer(run_dir: Path, *extra: str) -> Trainer:
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(load_config(None, SMALL + list(extra)), run_dir, torch.device("cpu"))


def render_albedo(trainer: Trainer, cams: Cameras, perturb: bool = True) -> dict:
    """The trainer's training render in albedo, at its render size."""
    height, width = render_size(trainer.step, trainer.cfg.render)
    return trainer.renderer.render(cams, height, width, background=trainer.background, shading="albedo",
                                   perturb=perturb, generator=trainer.generator,
                                   need_normals=trainer.cfg.loss.orientation > 0)


def eval_cameras() -> Cameras:
    return orbit_cameras(3, 20.0, 2.0, 50.0)


def train_steps(trainer: Trainer, n: int) -> None:
    """n Adam steps on a fixed target: moves the parameters and fills the optimizer state."""
    c = trainer.cfg.camera
    for _ in range(n):
        cams = sample_cameras(1, c.elevation_range, c.azimuth_range, c.distance_range, c.fovy_range,
                              generator=trainer.generator)
        out = render_albedo(trainer, cams)
        loss = ((out["rgb"] - 0.3) ** 2).mean() + 0.1 * out["opacity"].mean()
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        trainer.step += 1


def assert_same(a, b, where: str = "state") -> None:
    """Recursive equality: tensors bit for bit (same dtype and shape), everything else with ==."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture()
def trained(tmp_path) -> Trainer:
    trainer = make_trainer(tmp_path / "a")
    train_steps(trainer, 3)
    return trainer


def test_round_trip_gives_identical_tensors(trained, tmp_path):
    state = trained.state()
    path = save_checkpoint(tmp_path / "run", state)
    assert path == tmp_path / "run" / CHECKPOINT
    loaded = load_checkpoint(tmp_path / "run")
    assert loaded.pop("format") == CHECKPOINT_FORMAT
    assert_same(loaded, state)
    assert loaded["step"] == 3 and loaded["optimizer"]["state"]  # Adam moments were saved, not just weights


def test_loaded_trainer_renders_and_steps_like_the_original(trained, tmp_path):
    save_checkpoint(trained.run_dir, trained.state())
    other = make_trainer(tmp_path / "b")
    cams = eval_cameras()
    with torch.no_grad():
        reference = render_albedo(trained, cams, perturb=False)["rgb"]
        fresh = render_albedo(other, cams, perturb=False)["rgb"]
    assert (fresh - reference).abs().max() > 1e-3  # the checkpoint, not the seed, must make them equal

    other.load(load_checkpoint(trained.run_dir))
    assert other.step == 3
    with torch.no_grad():
        restored = render_albedo(other, cams, perturb=False)["rgb"]
    torch.testing.assert_close(restored, reference, atol=1e-6, rtol=0)

    # Optimizer moments and both RNG streams came back too: the next steps are the same steps.
    train_steps(trained, 2)
    train_steps(other, 2)
    for (name, p), q in zip(trained.field.named_parameters(), other.field.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0, msg=name)


def test_checkpoint_from_another_field_config_is_a_checkpoint_error(trained, tmp_path):
    save_checkpoint(trained.run_dir, trained.state())
    other = make_trainer(tmp_path / "b", "field.hidden_dim=8")
    with pytest.raises(CheckpointError, match="does not match the run's config"):
        other.load(load_checkpoint(trained.run_dir))


def _write_marker(path: str) -> int:
    """What the payload below runs when it is unpickled."""
    Path(path).write_text("pickled code ran")
    return 0


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _write_marker, (self.marker,)


def test_pickled_code_in_a_checkpoint_is_refused_and_never_runs(trained, tmp_path):
    marker = tmp_path / "marker.txt"
    save_checkpoint(tmp_path / "run", {**trained.state(), "extra": _Payload(marker)})
    path = tmp_path / "run" / CHECKPOINT
    with pytest.raises(CheckpointError, match="pickled Python objects.*_write_marker") as info:
        load_checkpoint(tmp_path / "run")
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # The payload is live: an unsafe load (never done by dreamfusion) would have run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pickled code ran"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_checkpoint_is_a_one_line_checkpoint_error(trained, tmp_path, damage):
    path = save_checkpoint(tmp_path / "run", trained.state())
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not a checkpoint\xff" * 64,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="cannot be read .*corrupt") as info:
        load_checkpoint(tmp_path / "run")
    assert "\n" not in str(info.value)


def test_torch_file_that_is_not_a_dreamfusion_checkpoint(tmp_path):
    (tmp_path / CHECKPOINT).parent.mkdir(parents=True)
    torch.save({"weights": torch.zeros(3)}, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match="not a dreamfusion checkpoint"):
        load_checkpoint(tmp_path)


def test_missing_folder_or_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path)


# -- atomic writes ----------------------------------------------------------------------------------

def test_save_leaves_only_the_checkpoint_and_overwrites_it(trained, tmp_path):
    save_checkpoint(tmp_path, trained.state())
    train_steps(trained, 1)
    save_checkpoint(tmp_path, trained.state())
    assert os.listdir(tmp_path / "checkpoints") == ["last.pt"]
    assert load_checkpoint(tmp_path)["step"] == 4


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_save_keeps_the_previous_checkpoint_and_no_temp_file(trained, tmp_path, monkeypatch, failure):
    save_checkpoint(tmp_path, trained.state())
    before = (tmp_path / CHECKPOINT).read_bytes()

    def half_write(obj, fh):
        fh.write(b"PK\x03\x04 half a zip")
        raise failure

    monkeypatch.setattr(torch, "save", half_write)
    trained.step = 99
    with pytest.raises(UserError if isinstance(failure, OSError) else KeyboardInterrupt) as info:
        save_checkpoint(tmp_path, trained.state())
    if isinstance(failure, OSError):
        assert "no space left on device" in str(info.value) and "\n" not in str(info.value)
    assert os.listdir(tmp_path / "checkpoints") == ["last.pt"]
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 3


def test_atomic_write_text_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "config.yaml"
    atomic_write_text(path, "prompt: a red cube\n")
    atomic_write_text(path, "prompt: un cube rouge, très rouge\n")
    assert path.read_text(encoding="utf-8") == "prompt: un cube rouge, très rouge\n"
    assert os.listdir(tmp_path) == ["config.yaml"]


# -- run folders ------------------------------------------------------------------------------------

def test_slugify():
    assert slugify("A Red Cube!") == "a-red-cube"
    assert slugify("  ") == "untitled" and slugify("日本") == "untitled"
    long = slugify("word " * 40)
    assert len(long) <= 60 and long == ("word-" * 12)[:59]
    assert set(slugify("Ünïcode & spaces -- ok_1")) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


def test_run_folders_of_the_same_second_get_a_suffix(tmp_path, monkeypatch):
    import dreamfusion.runfolder as runfolder

    monkeypatch.setattr(runfolder.time, "strftime", lambda fmt: "20250101-120000")
    made = [make_run_dir(str(tmp_path / "runs"), "a-red-cube") for _ in range(3)]
    assert [p.name for p in made] == ["a-red-cube-20250101-120000", "a-red-cube-20250101-120000-1",
                                      "a-red-cube-20250101-120000-2"]
    assert all(p.is_dir() and not any(p.iterdir()) for p in made)  # the write probe is removed


def test_run_folder_is_never_reused_when_every_suffix_is_taken(tmp_path, monkeypatch):
    import dreamfusion.runfolder as runfolder

    monkeypatch.setattr(runfolder.time, "strftime", lambda fmt: "20250101-120000")
    for k in range(100):
        (tmp_path / ("x-20250101-120000" + (f"-{k}" if k else ""))).mkdir()
    with pytest.raises(UserError, match="cannot write to output_dir .*already exist"):
        make_run_dir(str(tmp_path), "x")


def test_output_dir_under_a_file_is_refused_before_anything_is_created(tmp_path):
    (tmp_path / "a-file").write_text("")
    for check in (check_output_dir, lambda d: make_run_dir(d, "x")):
        with pytest.raises(UserError, match="cannot write to output_dir .*a-file/sub"):
            check(str(tmp_path / "a-file" / "sub"))
    check_output_dir(str(tmp_path / "new" / "nested"))  # creatable: fine, and nothing created yet
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


@pytest.mark.gpu
def test_resume_on_cuda(tmp_path):
    """The RNG states must come back on the CPU whatever map_location moved the tensors to."""
    cfg = load_config(None, SMALL[1:] + ["device=cuda"])
    first = Trainer(cfg, tmp_path, torch.device("cuda"))
    first.save()
    second = Trainer(cfg, tmp_path, torch.device("cuda"))
    second.resume()
    assert torch.equal(second.generator.get_state(), first.generator.get_state())
