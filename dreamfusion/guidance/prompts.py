"""Prompt helpers: view-dependent suffixes and per-prompt text conditioning.

View labels follow DreamFusion §3.2 / threestudio's convention (azimuth 0° = front, degrees):
``front`` when |azimuth| < 45°, ``back`` when |azimuth| > 135°, ``side`` otherwise, and ``overhead``
whenever elevation > 60° (it wins over the azimuth). Boundaries (exactly 45°, 135°, 60°) fall to
``side`` / not overhead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import UserError

VIEW_LABELS = ("front", "side", "back", "overhead")
_OVERHEAD_ELEVATION = 60.0
_FRONT_AZIMUTH = 45.0
_BACK_AZIMUTH = 135.0


def view_label(elevation_deg: Tensor | Sequence[float] | float,
               azimuth_deg: Tensor | Sequence[float] | float) -> list[str]:
    """The view label of each camera: elevation [B] and azimuth [B] in degrees -> B labels."""
    elev, azim = _on_host(elevation_deg), _on_host(azimuth_deg)
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


def _on_host(x) -> Tensor:
    """Degrees [B] float64 on the CPU: a tensor is copied from its own device, numbers made on the CPU."""
    return (x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(x)).double().reshape(-1)


def view_prompts(prompt: str) -> dict[str, str]:
    """label -> '<prompt>, <label> view' for every view label."""
    return {label: f"{prompt}, {label} view" for label in VIEW_LABELS}


def prompt_texts(prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> dict[str, str]:
    """The texts one prompt is embedded as: 'uncond' (the negative prompt, '' when none), then one per view
    label ('<prompt>, front view', ...) or 'all' (the prompt as it is)."""
    if not prompt or not prompt.strip():
        raise UserError('prompt is empty: pass prompt="..."')
    return {"uncond": negative_prompt, **(view_prompts(prompt) if view_dependent else {"all": prompt})}


def warn_if_truncated(counts: dict[str, int], limit: int, encoder: str = "text encoder") -> None:
    """One stderr line when the longest of prompt_texts' texts (``counts``: key -> token count) exceeds the text
    encoder's window of ``limit`` tokens (it is cut, not an error)."""
    key = max(counts, key=counts.get)
    if counts[key] > limit:
        which = "negative prompt" if key == "uncond" else "prompt"
        suffix = "" if key in ("uncond", "all") else f" (with the ', {key} view' suffix)"
        print(f"warning: {which} truncated: it is {counts[key]} tokens{suffix}, the {encoder} reads "
              f"{limit}; the last {counts[key] - limit} are ignored", file=sys.stderr)


def labels_for(cameras: Any, batch: int, view_dependent: bool) -> list[str]:
    """The view label of each of the batch's cameras, or 'all' for every view when not view_dependent."""
    if not view_dependent:
        return ["all"] * batch
    if cameras is None:
        raise ValueError("view-dependent prompts need cameras, got None")
    labels = view_label(cameras.elevation, cameras.azimuth)
    if len(labels) != batch:
        raise ValueError(f"{len(labels)} cameras for a batch of {batch}")
    return labels


@dataclass
class TextConditioning:
    """One prompt's text embeddings: ``uncond`` [1, ...] (the negative prompt) and ``cond`` label -> [1, ...]
    for each view label, or the single label 'all' when the prompt is not view dependent."""

    uncond: Tensor
    cond: dict[str, Tensor]

    @property
    def view_dependent(self) -> bool:
        return "all" not in self.cond

    def for_cameras(self, cameras: Any, batch: int) -> tuple[Tensor, Tensor]:
        """(uncond [B, ...], cond [B, ...]): the conditional embedding of each camera's view label."""
        labels = labels_for(cameras, batch, self.view_dependent)
        cond = torch.cat([self.cond[label] for label in labels])
        return self.uncond.expand(batch, *self.uncond.shape[1:]), cond


