"""Prompt helpers: view-dependent suffixes and folder-safe slugs.

View labels follow DreamFusion §3.2 / threestudio's convention (azimuth 0° = front, degrees):
``front`` when |azimuth| < 45°, ``back`` when |azimuth| > 135°, ``side`` otherwise, and ``overhead``
whenever elevation > 60° (it wins over the azimuth). Boundaries (exactly 45°, 135°, 60°) fall to
``side`` / not overhead.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import Tensor

VIEW_LABELS = ("front", "side", "back", "overhead")
_OVERHEAD_ELEVATION = 60.0
_FRONT_AZIMUTH = 45.0
_BACK_AZIMUTH = 135.0


def view_label(elevation_deg: Tensor | Sequence[float] | float,
               azimuth_deg: Tensor | Sequence[float] | float) -> list[str]:
    """The view label of each camera: elevation [B] and azimuth [B] in degrees -> B labels."""
    elev = torch.as_tensor(elevation_deg, dtype=torch.float64).detach().cpu().reshape(-1)
    azim = torch.as_tensor(azimuth_deg, dtype=torch.float64).detach().cpu().reshape(-1)
    if elev.shape != azim.shape:
        raise ValueError(f"view_label: elevation has shape {tuple(elev.shape)} but azimuth {tuple(azim.shape)}")
    azim = torch.remainder(azim + 180.0, 360.0) - 180.0  # wrap to [-180, 180) like Cameras
    labels = []
    for e, a in zip(elev.tolist(), azim.abs().tolist()):
        if e > _OVERHEAD_ELEVATION:
            labels.append("overhead")
        elif a < _FRONT_AZIMUTH:
            labels.append("front")
        elif a > _BACK_AZIMUTH:
            labels.append("back")
        else:
            labels.append("side")
    return labels


def view_prompts(prompt: str) -> dict[str, str]:
    """label -> '<prompt>, <label> view' for every view label."""
    return {label: f"{prompt}, {label} view" for label in VIEW_LABELS}


def slugify(prompt: str, max_length: int = 60) -> str:
    """A folder-safe name: lowercase [a-z0-9-], runs of anything else become one '-', at most max_length chars."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    slug = slug[:max_length].rstrip("-")
    return slug or "untitled"
