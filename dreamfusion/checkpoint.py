"""Run folders and checkpoints: atomic writes, loads that never execute pickled code."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from .errors import CheckpointError, UserError

__all__ = ["CHECKPOINT", "make_run_dir", "save_checkpoint", "load_checkpoint", "atomic_write_text"]

CHECKPOINT = Path("checkpoints") / "last.pt"
FORMAT = 1


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
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to output_dir '{output_dir}' ({exc.strerror or exc}): "
                        f"pass a writable folder, e.g. output_dir=$HOME/dreamfusion-runs") from None
    return run_dir


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """Write checkpoints/last.pt atomically (temp file, fsync, rename): a kill never leaves half a file."""
    path = Path(run_dir) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save({"format": FORMAT, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: Path, map_location="cpu") -> dict:
    """The last checkpoint of a run folder, loaded with weights_only=True (no pickled code runs)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder '{run_dir}' does not exist: pass a folder made by a previous run")
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in '{run_dir}' (expected {CHECKPOINT}): "
                              f"the run stopped before its first checkpoint; start a new run instead")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, corrupt, or not a torch file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({first[:160]}): "
                              f"it is corrupt; start a new run or restore the file") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "step" not in state:
        raise CheckpointError(f"checkpoint '{path}' is not a dreamfusion checkpoint (format {FORMAT})")
    return state
