"""Empty space the renderer may skip: the occupancy grid of previews and the video (plain torch), and the nerfacc
occupancy-grid estimator that training marches rays through (the renderer's sampler state, checkpointed by the
trainer under "estimator")."""

from __future__ import annotations

import torch
from torch import Tensor

from render.volume_nerfacc import make_estimator, nerfacc_available, update_estimator

from ..errors import ConfigError
from ..fields.base import field_device
from .baked import BakedField

__all__ = ["occupancy_grid", "skip_grid", "make_sampler", "update_sampler"]

_FOGGY = 0.5  # skip_grid: a field that occupies more than this fraction of the box gains little from skipping


@torch.no_grad()
def occupancy_grid(field, n_samples: int, resolution: int = 64, min_alpha: float = 1e-4) -> Tensor:
    """Cells [R, R, R] bool where the field could add more than min_alpha to a ray sample.

    Density is probed at 2^3 points per cell and the mask is dilated by one cell, so thin features that
    fall between probes are kept; a sample of spacing 2 bound / n_samples in a skipped cell would have
    had alpha < min_alpha.
    """
    bound, fine, device = field.bound, 2 * resolution, field_device(field)
    c = (torch.arange(fine, dtype=torch.float32, device=device) + 0.5) / fine * 2 * bound - bound
    pts = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    density = torch.cat([field.density(p) for p in pts.split(1 << 18)]).reshape(fine, fine, fine)
    cell = torch.nn.functional.max_pool3d(density[None, None], 2)  # [1,1,R,R,R]
    cell = torch.nn.functional.max_pool3d(cell, 3, stride=1, padding=1)[0, 0]
    return cell * (2 * bound / n_samples) > min_alpha


def skip_grid(field, n_samples: int) -> Tensor | None:
    """Occupancy cells [R, R, R] that rendering without a graph (video, previews) may skip, or None: splats and
    DMTet surfaces are rasterized (no empty space to skip), and a foggy field gains little. A BakedField's grid is
    made once per n_samples (the field is frozen)."""
    if field.rasterized:
        return None
    if isinstance(field, BakedField):
        if n_samples not in field.skip_grids:
            field.skip_grids[n_samples] = _skip_grid(field, n_samples)
        return field.skip_grids[n_samples]
    return _skip_grid(field, n_samples)


def _skip_grid(field, n_samples: int) -> Tensor | None:
    grid = occupancy_grid(field, n_samples)
    return None if grid.float().mean() > _FOGGY else grid


def make_sampler(sampler: str, field, device: torch.device):
    """The nerfacc occupancy-grid estimator of training's ray marching, or None (the torch sampler): render.sampler
    = nerfacc, or auto on CUDA when nerfacc imports; never for splats."""
    if field.rasterized or sampler == "torch":
        return None
    if sampler == "nerfacc" and device.type != "cuda":
        raise ConfigError("render.sampler=nerfacc needs a CUDA device: use render.sampler=torch on CPU")
    if sampler == "nerfacc" or (device.type == "cuda" and nerfacc_available()):
        return make_estimator(field.bound, device=device)
    return None


def update_sampler(estimator, field, step: int, n_samples: int) -> None:
    """Refresh the estimator's occupancy from the field's density before a training render (nerfacc's schedule)."""
    if estimator is not None:
        update_estimator(estimator, field.density, step, render_step_size=2 * field.bound / n_samples)
