"""The field as previews, the orbit video, evaluation and the mesh see it: in RGB, and optionally sampled once on a
grid (render.eval_grid) for fast rendering without a graph.

A latent field (guidance.latent_render: albedo is Stable Diffusion's 4 latent channels) is seen through
``latent_to_rgb`` (render/latent.py), a fixed linear map; splats and DMTet surfaces rasterize faster than a grid
renders, so they are never baked.
"""

from __future__ import annotations

from torch import Tensor, nn

from render.latent import LATENT_CHANNELS, latent_to_rgb

from ..fields.base import Field
from .baked import BakedField

__all__ = ["LatentAsRGB", "rgb_view", "eval_view"]


class LatentAsRGB(Field):
    """A latent field seen in RGB: same density, albedo = latent_to_rgb(latent albedo). For export, video and
    previews, which expect albedo [M, 3] in [0, 1]."""

    def __init__(self, field: nn.Module):
        super().__init__()
        self.field = field
        self.bound = field.bound
        self.albedo_channels = 3

    def forward(self, points: Tensor) -> dict[str, Tensor]:
        out = dict(self.field(points))
        out["albedo"] = latent_to_rgb(out["albedo"])
        return out

    def density(self, points: Tensor) -> Tensor:
        return self.field.density(points)

    def param_groups(self, optim_cfg) -> list[dict]:
        return self.field.param_groups(optim_cfg)


def rgb_view(field: nn.Module) -> nn.Module:
    """The field itself when it renders RGB; wrapped in LatentAsRGB when it renders latents."""
    return LatentAsRGB(field) if getattr(field, "albedo_channels", 3) == LATENT_CHANNELS else field


def eval_view(field: nn.Module, grid: int) -> nn.Module:
    """The field as previews and the orbit video see it: in RGB (:func:`rgb_view`) and, with render.eval_grid =
    grid > 0, sampled once on a grid^3 grid (:class:`BakedField`; rasterized fields stay themselves)."""
    view = rgb_view(field)
    return BakedField.bake(view, grid) if grid and not view.rasterized else view
