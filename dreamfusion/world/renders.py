"""The world seen by cameras: anti-aliased coverage images of a primitive or a scene (primitives.py), the images
the embedded prior (dreamfusion/guidance/models/prior.py) is made of.

Each pixel is SUPERSAMPLE x SUPERSAMPLE rays through the camera (render.rays.generate_rays), sphere traced against
the world's distance bound; a pixel's coverage is the fraction of its rays that hit (per colour for a scene).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from render.cameras import Cameras
from render.rays import generate_rays

from .primitives import Scene, render_alpha, render_scene, scene_palette

__all__ = ["render_silhouettes", "render_scene_coverage"]

SUPERSAMPLE = 3  # rays per pixel side when rendering the silhouettes (anti-aliasing)


def render_silhouettes(shape: str, cams: Cameras, resolution: int, views_per_chunk: int = 64) -> Tensor:
    """Anti-aliased coverage [V, R, R] in [0, 1] of a primitive seen from each camera."""
    side = resolution * SUPERSAMPLE
    out = []
    for v in range(0, cams.c2w.shape[0], views_per_chunk):
        c2w, fovy = cams.c2w[v:v + views_per_chunk], cams.fovy[v:v + views_per_chunk]
        origins, dirs = generate_rays(c2w, fovy, side, side)  # [n, side, side, 3]
        alpha = render_alpha(shape, origins.reshape(-1, 3), dirs.reshape(-1, 3)).reshape(-1, 1, side, side)
        out.append(F.avg_pool2d(alpha, SUPERSAMPLE)[:, 0])
    return torch.cat(out)


def render_scene_coverage(scene: Scene, cams: Cameras, resolution: int, views_per_chunk: int = 64) -> Tensor:
    """Anti-aliased coverage [V, K, R, R] of each of the scene's K palette colours seen from each camera."""
    side, k = resolution * SUPERSAMPLE, len(scene_palette(scene))
    out = []
    for v in range(0, cams.c2w.shape[0], views_per_chunk):
        origins, dirs = generate_rays(cams.c2w[v:v + views_per_chunk], cams.fovy[v:v + views_per_chunk], side, side)
        label = render_scene(scene, origins.reshape(-1, 3), dirs.reshape(-1, 3)).reshape(-1, side, side)
        onehot = F.one_hot(label + 1, k + 1)[..., 1:].permute(0, 3, 1, 2).float()  # [n, K, side, side]; -1 = none
        out.append(F.avg_pool2d(onehot, SUPERSAMPLE))
    return torch.cat(out)
