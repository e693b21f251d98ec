"""The Field interface: what the trainer, the renderer and the exporters ask of a 3D representation.

A field maps points to density and albedo, renders itself from cameras (volume rendering by default),
names its Adam parameter groups, and may add regularizers and files of its own. The loop,
renderer and exporters call these methods and never ask which kind of field they hold (docs/DESIGN.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["Field", "field_device"]

_FOGGY = 0.5  # skip_grid: a field that occupies more than this fraction of the box gains little from skipping


def field_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter, else of its first buffer (a baked field has only buffers), else CPU."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


class Field(nn.Module):
    """Base class of every 3D representation. Subclasses set ``bound`` and implement ``forward`` and
    ``param_groups``; everything else has a default that suits a volumetric field."""

    bound: float = 1.0
    """Half side of the scene cube [-bound, bound]^3; density is 0 outside it."""
    albedo_channels: int = 3
    """3 (RGB in [0, 1]) or 4 (Stable Diffusion latents, guidance.latent_render)."""
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

    def render(self, cameras, height: int, width: int, *, background=None, **options) -> dict[str, Tensor]:
        """The renderer.render_views contract (rgb, opacity, depth, albedo, normal, dirs); volume rendering."""
        from ..renderer import render_volume  # the renderer imports fields' backgrounds: import at use

        return render_volume(self, background, cameras, height, width, **options)

    def skip_grid(self, n_samples: int) -> Tensor | None:
        """Occupancy cells [R, R, R] that rendering without a graph (video, previews) may skip, or None."""
        from ..renderer import occupancy_grid

        grid = occupancy_grid(self, n_samples)
        return None if grid.float().mean() > _FOGGY else grid

    def baked(self, resolution: int) -> "Field":
        """A copy for fast rendering without a graph: density and albedo sampled once on a resolution^3 grid
        (fields/baked.py, render.eval_grid). A field that renders faster than a grid (splats) returns itself."""
        from .baked import BakedField

        return BakedField.bake(self, resolution)

    def regularizers(self) -> dict[str, Tensor]:
        """The field's own ``loss_*`` terms (weighted by the config's ``loss`` section), e.g. tri-plane TV."""
        return {}

    def write_artifacts(self, run_dir: Path) -> dict[str, Path]:
        """Files of the field's own format written into the run folder: {name: path}."""
        return {}
