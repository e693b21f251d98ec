"""3D representations optimised by the guidance: ``build_field(cfg.field, device)`` is the one entry point.

Every field is a :class:`Field` (fields/base.py): ``forward(points [M, 3]) -> dict(density [M], albedo [M, C])``,
``density``, ``param_groups``, ``regularizers`` and the step hooks (docs/DESIGN.md, "Fields", says where a new one
plugs in). A field renders nothing and writes no files: the renderer (dreamfusion/renderer/) and the exporters
(dreamfusion/export/) take it as an argument. Its config section is fields/config.py.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..settings import check_choice
from .base import Field
from .config import LATENT_NEEDS_VOLUME, FieldConfig
from .dmtet import DMTetField
from .gaussian import GaussianField
from .hashgrid import HashGrid, make_hashgrid
from .nerf import NeRFField
from .triplane import TriplaneField

__all__ = ["build_field", "Field", "FieldConfig", "NeRFField", "TriplaneField", "GaussianField", "DMTetField",
           "HashGrid", "make_hashgrid"]


def build_field(cfg: FieldConfig, device: torch.device | str = "cpu", albedo_channels: int = 3) -> Field:
    """The field named by ``cfg.type``, on ``device``; ``albedo_channels=4`` renders Stable Diffusion latents
    (guidance.latent_render; NeRF and tri-plane only)."""
    fields = {"nerf": NeRFField, "triplane": TriplaneField, "gaussian": GaussianField, "dmtet": DMTetField}
    kind = check_choice(cfg, "type", "field.type")
    if kind == "gaussian":  # colours are SH coefficients: RGB only
        if albedo_channels != 3:
            raise ConfigError(LATENT_NEEDS_VOLUME)
        return GaussianField(cfg, device)
    return fields[kind](cfg, device, albedo_channels=albedo_channels)
