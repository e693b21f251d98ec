"""Splat rendering of a GaussianField (Kerbl et al. 2023): rasterize the Gaussians, then composite over the
background. The renderer's path for Gaussians (renderer/core.py chooses); the rasterizer is
``render.gaussians.rasterize_gaussians`` (gsplat on CUDA, or its plain-torch twin), named by ``field.rasterizer``.

Shading: Gaussians have no surface normal, so the 'lambertian' and 'textureless' modes of the DreamFusion schedule
render albedo (use render.albedo_prob=1 with Gaussians; DreamGaussian does).
"""

from __future__ import annotations

import torch
from torch import Tensor

from render.cameras import Cameras
from render.gaussians import rasterize_gaussians
from render.rays import generate_rays
from render.splat_math import SH_C0

from ..fields.gaussian import GaussianField
from .backgrounds import solid_background

__all__ = ["render_splats"]


def render_splats(field: GaussianField, background, cameras: Cameras, height: int, width: int, *,
                  background_kind: str = "white", shading: str = "albedo", light_dirs: Tensor | None = None,
                  ambient: float = 0.1, generator: torch.Generator | None = None,
                  **volume_options) -> dict[str, Tensor]:
    """render_views' contract: rgb [B,H,W,3], opacity [B,H,W,1], depth [B,H,W,1], albedo (premultiplied), normal
    (None), dirs [B,H,W,3]; plus means2d [B,N,2] (the densification strategy retains its gradient) and radii [B,N].
    The volume renderer's options (n_samples, perturb, need_normals, estimator, occupancy) do not apply to splats."""
    if field.sh_degree == 0:
        colors = (0.5 + SH_C0 * field.sh_dc).clamp_min(0.0)
    else:
        colors = torch.cat([field.sh_dc[:, None], field.sh_rest], 1)
    out = rasterize_gaussians(field.means, field.quats, field.scales, field.opacities, colors, cameras.c2w,
                              cameras.fovy, height, width, None, backend=field.rasterizer)
    _, dirs = generate_rays(cameras.c2w.to(field.means), cameras.fovy.to(field.means), height, width)
    B = cameras.c2w.shape[0]
    bg = background(dirs) if background is not None else solid_background(
        background_kind, (B, height, width), generator, device=field.means.device)
    albedo, opacity = out["rgb"], out["alpha"]
    return {"rgb": albedo + (1.0 - opacity) * bg, "opacity": opacity, "depth": out["depth"], "albedo": albedo,
            "normal": None, "dirs": dirs, "means2d": out["means2d"], "radii": out["radii"]}
