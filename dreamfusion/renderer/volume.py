"""Volume rendering of a field from cameras: rays -> compositing (torch, or nerfacc's occupancy grid) -> deferred
shading -> background. The renderer's path for every field that is not splats (renderer/core.py chooses)."""

from __future__ import annotations

import torch
from torch import Tensor

from render.cameras import Cameras
from render.latent import LATENT_CHANNELS, rgb_to_latent
from render.rays import generate_rays
from render.shading import shade
from render.volume import render_rays
from render.volume_nerfacc import render_rays_nerfacc

from .backgrounds import solid_background

__all__ = ["render_volume"]


def render_volume(field, background, cameras: Cameras, height: int, width: int, *, n_samples: int,
                 perturb: bool = False, shading: str = "albedo", light_dirs: Tensor | None = None,
                 ambient: float = 0.1, background_kind: str = "white", need_normals: bool = False,
                 generator: torch.Generator | None = None, estimator=None,
                 occupancy: Tensor | None = None) -> dict[str, Tensor]:
    """Render B views of a volumetric field.

    Returns rgb [B,H,W,3], opacity [B,H,W,1], depth [B,H,W,1], albedo [B,H,W,3] (premultiplied by
    opacity), normal [B,H,W,3] (None unless shading needs it or need_normals) and the unit ray
    directions dirs [B,H,W,3]. A field with 4 albedo channels (Stable Diffusion latents,
    guidance.latent_render) gives rgb and albedo [B,H,W,4]: the latent image, over the background's colour
    mapped to latents (render/latent.py); it cannot be lit, so shading must be albedo.
    With a nerfacc occupancy-grid `estimator` (CUDA), rays are marched through it at the same sample
    spacing (2 bound / n_samples) instead of n_samples equal bins; the outputs are the same.
    Shading is deferred: the composited albedo and normal are shaded per pixel, which equals
    per-sample shading when the weights concentrate on the surface.
    """
    B = cameras.c2w.shape[0]
    origins, dirs = generate_rays(cameras.c2w, cameras.fovy, height, width)  # [B,H,W,3] each
    normals_needed = need_normals or shading != "albedo"
    if estimator is not None:
        out = render_rays_nerfacc(field, origins.reshape(-1, 3), dirs.reshape(-1, 3), field.bound, estimator,
                                  render_step_size=2 * field.bound / n_samples, need_normals=normals_needed,
                                  perturb=perturb)
    else:
        out = render_rays(field, origins.reshape(-1, 3), dirs.reshape(-1, 3), field.bound, n_samples,
                          perturb=perturb, generator=generator, need_normals=normals_needed,
                          occupancy=occupancy)
    opacity = out["opacity"].reshape(B, height, width, 1)
    albedo = out["albedo"].reshape(B, height, width, -1)
    latent = albedo.shape[-1] == LATENT_CHANNELS
    if latent and shading != "albedo":
        raise ValueError(f"render_views: a latent field renders albedo only, got shading '{shading}'")
    normal = out["normal"].reshape(B, height, width, 3) if out["normal"] is not None else None
    if shading == "albedo":
        fg = albedo
    else:
        # Lambertian shading is linear in albedo, so shading the premultiplied albedo keeps it premultiplied.
        base = opacity.expand(-1, -1, -1, 3) if shading == "textureless" else albedo
        lights = light_dirs[:, None, None, :].expand(B, height, width, 3)
        unit_normal = torch.nn.functional.normalize(normal, dim=-1, eps=1e-6)
        fg = shade(base.reshape(-1, 3), unit_normal.reshape(-1, 3), "lambertian", lights.reshape(-1, 3),
                   ambient).reshape(B, height, width, 3)
    if background is not None:
        bg = background(dirs)
    else:
        bg = solid_background(background_kind, (B, height, width), generator, device=origins.device)
    if latent:
        bg = rgb_to_latent(bg)
    rgb = fg + (1.0 - opacity) * bg
    return {"rgb": rgb, "opacity": opacity, "depth": out["depth"].reshape(B, height, width, 1),
            "albedo": albedo, "normal": normal, "dirs": dirs}
