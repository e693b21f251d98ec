"""The Field interface: what the trainer, the renderer and the exporters ask of a 3D representation.

A field maps points to density and albedo, names its Adam parameter groups, and may add regularizers. It
renders nothing and writes no files: the renderer (dreamfusion/renderer/) chooses volume or splat rendering by
the field's class and owns backgrounds, skip grids and sampler state; export (dreamfusion/export/) writes a
field's own files; a Gaussian field's densification is the trainer's strategy (dreamfusion/train/densify.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Field", "field_device"]


def field_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter, else of its first buffer (a baked field has only buffers), else CPU."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


class Field(nn.Module):
    """Base class of every 3D representation. Subclasses set ``bound`` and implement ``forward`` and
    ``param_groups``; the rest has a default (no regularizers, no hooks)."""

    bound: float = 1.0
    """Half side of the scene cube [-bound, bound]^3; density is 0 outside it."""
    albedo_channels: int = 3
    """3 (RGB in [0, 1]) or 4 (Stable Diffusion latents, guidance.latent_render)."""
    rasterized: bool = False
    """True for fields drawn by rasterization (splats, DMTet surfaces): no sampler, no baking, no empty space to skip."""
    surface_optical_depth: float = 0.3
    """Optical depth seen from outside at which the exported mesh surface lies (export.auto_optical_depth: null)."""

    def forward(self, points: Tensor) -> dict[str, Tensor]:
        """points [M, 3] -> dict(density [M] >= 0, albedo [M, albedo_channels])."""
        raise NotImplementedError

    def density(self, points: Tensor) -> Tensor:  # [M, 3] -> [M]
        return self(points)["density"]

    def param_groups(self, optim_cfg) -> list[dict]:
        """Adam parameter groups, each ``{"name", "params", "lr"}`` (the config's ``optim`` section)."""
        raise NotImplementedError

    def regularizers(self) -> dict[str, Tensor]:
        """The field's own ``loss_*`` terms (weighted by the config's ``loss`` section), e.g. tri-plane TV."""
        return {}
