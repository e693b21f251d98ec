"""Checkpoints: the run folder's checkpoint (runfolder.CHECKPOINT) saved atomically, loaded without executing
pickled code."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import CheckpointError
from .io import atomic_write
from .migrations import CHECKPOINT_FORMAT, upgrade_checkpoint
from .runfolder import CHECKPOINT

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """Write the run folder's checkpoint atomically (temp file, fsync, rename): a kill never leaves half a file."""
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
