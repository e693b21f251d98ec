"""DreamFusion's shading choice for a training render (§3.1): albedo during the warm-up, then albedo, textureless or
lambertian at random with render.*'s probabilities; the shaded ones lit by a random point light (render/shading.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from render.shading import random_light_dirs

__all__ = ["pick_shading", "pick_lights"]


def pick_shading(step: int, cfg, generator: torch.Generator) -> str:
    """DreamFusion shading schedule: albedo during warm-up, then albedo / textureless / lambertian at random."""
    if step < cfg.albedo_warmup_steps:
        return "albedo"
    u = torch.rand((), generator=generator, device=generator.device).item()
    if u < cfg.albedo_prob:
        return "albedo"
    return "textureless" if u < cfg.albedo_prob + cfg.textureless_prob else "lambertian"


def pick_lights(shading: str, origins: Tensor, generator: torch.Generator) -> Tensor | None:
    """Light directions [B, 3] for a shaded render from cameras at ``origins`` [B, 3]; None for albedo (no draw)."""
    return None if shading == "albedo" else random_light_dirs(origins, generator)
