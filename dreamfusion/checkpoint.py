"""Run folders and checkpoints: atomic writes, loads that never execute pickled code."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from .errors import CheckpointError, UserError
from .io import atomic_write
from .migrations import CHECKPOINT_FORMAT, upgrade_checkpoint

__all__ = ["CHECKPOINT", "check_output_dir", "make_run_dir", "save_checkpoint", "load_checkpoint"]

CHECKPOINT = Path("checkpoints") / "last.pt"


def _unwritable(output_dir: str, why: str) -> UserError:
    return UserError(f"cannot write to output_dir '{output_dir}' ({why}): "
                     f"pass a writable folder, e.g. output_dir=$HOME/dreamfusion-runs")


def check_output_dir(output_dir: str) -> None:
    """Fail fast, before a slow model load, when output_dir cannot hold a run folder; creates nothing.

    Looks at the nearest existing ancestor: it must be a folder we may write into. (make_run_dir
    still probes by writing: os.access says yes to root on a read-only mount.)
    """
    path = Path(output_dir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise _unwritable(output_dir, f"'{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _unwritable(output_dir, "Permission denied")


def make_run_dir(output_dir: str, slug: str) -> Path:
    """<output_dir>/<slug>-<YYYYmmdd-HHMMSS>[-k]/, created; a one-line UserError if it cannot be written."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(output_dir)
    try:
        base.mkdir(parents=True, exist_ok=True)
        for k in range(100):
            run_dir = base / (f"{slug}-{stamp}" + (f"-{k}" if k else ""))
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                continue
        else:  # never reuse an existing run folder
            raise FileExistsError(f"100 run folders named {slug}-{stamp}[-k] already exist")
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise _unwritable(output_dir, exc.strerror or str(exc)) from None
    return run_dir


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """Write checkpoints/last.pt atomically (temp file, fsync, rename): a kill never leaves half a file."""
    path = Path(run_dir) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: torch.save({"format": CHECKPOINT_FORMAT, **state}, fh))
    return path


def load_checkpoint(run_dir: Path, map_location="cpu") -> dict:
    """The last checkpoint of a run folder, loaded with weights_only=True (no pickled code runs), in today's layout
    whatever its format (migrations.upgrade_checkpoint)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder '{run_dir}' does not exist: pass a folder made by a previous run")
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in '{run_dir}' (expected {CHECKPOINT}): "
                              f"the run stopped before its first checkpoint; start a new run instead")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, corrupt, not a torch file, or pickled objects weights_only refuses
        refused = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        if refused:
            raise CheckpointError(f"checkpoint '{path}' holds pickled Python objects, not only tensors "
                                  f"({refused[0][:160]}): refusing to load it, it could run code; "
                                  f"use a checkpoint written by dreamfusion") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({first[:160]}): "
                              f"it is corrupt; start a new run or restore the file") from None
    number = state.get("format") if isinstance(state, dict) else None
    if type(number) is not int or number < 1 or "step" not in state:
        raise CheckpointError(f"checkpoint '{path}' is not a dreamfusion checkpoint (format {CHECKPOINT_FORMAT})")
    return upgrade_checkpoint(state, f"checkpoint '{path}'")
