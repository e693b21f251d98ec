"""Variants of the tiny model folders the tests build (conftest.py), made by re-saving one component."""

from __future__ import annotations

import shutil
from pathlib import Path


def with_prediction_type(folder: Path, parent: Path, kind: str) -> Path:
    """A copy of a tiny model folder under ``parent`` whose scheduler/ is re-saved (save_pretrained) with
    ``prediction_type=kind``, to be loaded back through the users' own load code."""
    from diffusers import DDPMScheduler

    copy = Path(parent) / f"{Path(folder).name}-{kind}"
    shutil.copytree(folder, copy)
    DDPMScheduler.from_pretrained(Path(folder) / "scheduler", prediction_type=kind).save_pretrained(copy / "scheduler")
    return copy
