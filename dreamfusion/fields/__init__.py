"""3D representations optimised by the guidance: ``build_field(cfg.field, device)`` is the one entry point.

Every field is a :class:`Field` (fields/base.py): ``forward(points [M, 3]) -> dict(density [M], albedo [M, C])``,
``density``, ``param_groups``, ``render``, ``regularizers``, the step hooks and ``write_artifacts``
(docs/DESIGN.md, "Fields", says where a new one plugs in).
"""

from __future__ import annotations

import torch

from ..config import LATENT_NEEDS_VOLUME, FieldConfig
from ..settings import check_choice
from ..errors import ConfigError
from .background import LearnedBackground, build_background, solid_background
from .base import Field
from .gaussian import GaussianField
from .hashgrid import HashGrid, make_hashgrid
from .nerf import NeRFField
from .triplane import TriplaneField

__all__ = ["build_field", "Field", "NeRFField", "TriplaneField", "GaussianField", "HashGrid", "make_hashgrid",
           "LearnedBackground", "build_background", "solid_background"]


def build_field(cfg: FieldConfig, device: torch.device | str = "cpu", albedo_channels: int = 3) -> Field:
    """The field named by ``cfg.type``, on ``device``; ``albedo_channels=4`` renders Stable Diffusion latents
    (guidance.latent_render; NeRF and tri-plane only)."""
    fields = {"nerf": NeRFField, "triplane": TriplaneField, "gaussian": GaussianField}
    kind = check_choice(cfg, "type", "field.type")
    if kind == "gaussian":  # colours are SH coefficients: RGB only
        if albedo_channels != 3:
            raise ConfigError(LATENT_NEEDS_VOLUME)
        return GaussianField(cfg, device)
    return fields[kind](cfg, device, albedo_channels=albedo_channels)
