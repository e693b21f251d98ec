"""3D representations optimised by the guidance: ``build_field(cfg.field, device)`` is the one entry point.

A volumetric field has ``forward(points [M, 3]) -> dict(density [M], albedo [M, 3])``,
``density(points) -> [M]``, ``param_groups(optim_cfg) -> list[dict]`` and ``bound`` (docs/DESIGN.md).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import LATENT_NEEDS_VOLUME, FieldConfig
from ..errors import ConfigError
from .background import LearnedBackground, build_background, solid_background
from .hashgrid import HashGrid, make_hashgrid
from .gaussian import GaussianField
from .nerf import NeRFField
from .triplane import TriplaneField

__all__ = ["build_field", "NeRFField", "TriplaneField", "GaussianField", "HashGrid", "make_hashgrid",
           "LearnedBackground", "build_background", "solid_background"]

_PLANNED: tuple[str, ...] = ()


def build_field(cfg: FieldConfig, device: torch.device | str = "cpu", albedo_channels: int = 3) -> nn.Module:
    """The field named by ``cfg.type``, on ``device``; ``albedo_channels=4`` renders Stable Diffusion latents
    (guidance.latent_render; NeRF and tri-plane only)."""
    fields = {"nerf": NeRFField, "triplane": TriplaneField, "gaussian": GaussianField}
    if cfg.type in _PLANNED:
        raise ConfigError(f"field.type={cfg.type} is not available yet; use field.type=nerf")
    if cfg.type not in fields:
        raise ConfigError(f"bad value '{cfg.type}' for 'field.type': choose one of {', '.join([*fields, *_PLANNED])}")
    if cfg.type == "gaussian":  # colours are SH coefficients: RGB only
        if albedo_channels != 3:
            raise ConfigError(LATENT_NEEDS_VOLUME)
        return GaussianField(cfg, device)
    return fields[cfg.type](cfg, device, albedo_channels=albedo_channels)
