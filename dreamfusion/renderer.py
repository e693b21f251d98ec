"""Render a field from cameras: rays -> volume compositing -> deferred shading -> background."""

from __future__ import annotations

import sys

import torch
from torch import Tensor
from tqdm import tqdm

from render.cameras import Cameras
from render.rays import generate_rays
from render.shading import shade
from render.volume import render_rays
from render.volume_nerfacc import render_rays_nerfacc

from .fields.background import solid_background
from .fields.base import field_device
from .latent import LATENT_CHANNELS, rgb_to_latent

__all__ = ["render_views", "render_volume", "render_views_chunked", "occupancy_grid"]


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


def render_views(field, background, cameras: Cameras, height: int, width: int, **options) -> dict[str, Tensor]:
    """Render B views of any field: ``field.render`` (volume rendering below, or a field's own rasterizer).
    Returns rgb [B,H,W,C], opacity [B,H,W,1], depth [B,H,W,1], albedo, normal | None, dirs (see render_volume)."""
    return field.render(cameras, height, width, background=background, **options)


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
    mapped to latents (dreamfusion/latent.py); it cannot be lit, so shading must be albedo.
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


def render_views_chunked(field, background, cameras: Cameras, height: int, width: int, *, n_samples: int,
                         views_per_chunk: int = 1, need_normals: bool = False, progress: str | None = None,
                         **kwargs) -> dict[str, Tensor]:
    """render_views without keeping a graph, a few views at a time (orbit videos, previews, evaluation).
    Pass occupancy=field.skip_grid(n_samples) to skip empty space; ``progress`` names a progress bar on stderr.

    Normals come from autograd of the density, so grad mode stays on only while they are needed.
    """
    need = need_normals or kwargs.get("shading", "albedo") != "albedo"
    parts = []
    starts = range(0, cameras.c2w.shape[0], views_per_chunk)
    if progress:
        starts = tqdm(starts, desc=progress, file=sys.stderr, dynamic_ncols=True, leave=False)
    for start in starts:
        sub = Cameras(*(x[start:start + views_per_chunk] for x in cameras))
        with torch.set_grad_enabled(need):
            out = render_views(field, background, sub, height, width, n_samples=n_samples,
                               need_normals=need, **kwargs)
        parts.append({k: (v.detach() if v is not None else None) for k, v in out.items()})
    return {k: (torch.cat([p[k] for p in parts]) if parts[0][k] is not None else None) for k in parts[0]}
