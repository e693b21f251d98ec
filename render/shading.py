"""Shading of DreamFusion (Poole et al. 2022, §3.1): albedo, Lambertian, textureless.

    rgb = albedo * (ambient + (1 - ambient) * max(0, n . l))

'textureless' is the same with albedo = white, which forces the geometry (not the texture) to explain
the image. ``l`` is the unit direction from the surface toward the light (a distant light).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["SHADING_MODES", "shade", "random_light_dirs"]

SHADING_MODES = ("albedo", "lambertian", "textureless")


def _unit(v: Tensor) -> Tensor:
    # sqrt(|v|^2 + eps): finite value and gradient for a zero vector (which stays zero)
    return v / torch.sqrt((v * v).sum(-1, keepdim=True) + 1e-20)


def shade(albedo: Tensor, normal: Optional[Tensor], mode: str, light_dir: Optional[Tensor] = None,
          ambient: float = 0.1) -> Tensor:
    """Shaded colour [..., 3] (usually [N, 3]) of surface points.

    Args:
        albedo: [..., 3] base colour.
        normal: [..., 3] or None (only 'albedo' mode allows None). Normalised here (eps-safe), so the
            opacity-premultiplied normal of ``render_rays`` can be passed as is; a zero normal gets
            ambient light only.
        mode: 'albedo' | 'lambertian' | 'textureless'.
        light_dir: [..., 3] or [3], broadcastable to albedo; direction toward the light, normalised here.
        ambient: ambient fraction in [0, 1].
    Note:
        With composited (premultiplied) ray values, 'textureless' returns the fully opaque shade; multiply
        it by the ray opacity before adding ``(1 - opacity) * background``.
    """
    if mode not in SHADING_MODES:
        raise ValueError(f"unknown shading mode '{mode}': choose one of {', '.join(SHADING_MODES)}")
    if albedo.shape[-1:] != (3,):
        raise ValueError(f"shade: albedo must be [..., 3], got {tuple(albedo.shape)}")
    if mode == "albedo":
        return albedo
    if normal is None:
        raise ValueError(f"shading mode '{mode}' needs normals: render with need_normals=True")
    if light_dir is None:
        raise ValueError(f"shading mode '{mode}' needs light_dir (e.g. from random_light_dirs)")
    if normal.shape != albedo.shape:
        raise ValueError(f"shade: normal must match albedo {tuple(albedo.shape)}, got {tuple(normal.shape)}")
    if light_dir.shape[-1:] != (3,) or torch.broadcast_shapes(light_dir.shape, albedo.shape) != albedo.shape:
        raise ValueError(f"shade: light_dir {tuple(light_dir.shape)} does not broadcast to albedo {tuple(albedo.shape)}")
    if not 0.0 <= ambient <= 1.0:
        raise ValueError(f"shade: ambient must be in [0, 1], got {ambient}")
    cos = (_unit(normal) * _unit(light_dir.to(normal))).sum(-1, keepdim=True).clamp_min(0.0)
    light = ambient + (1.0 - ambient) * cos  # [..., 1]
    if mode == "textureless":
        return torch.ones_like(albedo) * light
    return albedo * light


def random_light_dirs(camera_positions: Tensor, generator: Optional[torch.Generator] = None,
                      std: float = 0.5) -> Tensor:
    """Unit light directions [B, 3] scattered around each camera's direction from the origin.

    DreamFusion samples the point light "from a distribution centred on the camera location". Here:
    l = normalise(c / |c| + std * eps), eps ~ N(0, I) on ``generator``'s device. With std 0.5 the angle
    between light and camera direction has median ~31 degrees (2 % beyond 90, measured), so the lit side
    mostly faces the camera while shading still reveals the shape. (threestudio is similar: camera
    position + N(0, 1) noise, cameras at distance 1.5-2.)
    """
    if camera_positions.dim() != 2 or camera_positions.shape[-1] != 3:
        raise ValueError(f"random_light_dirs: camera_positions must be [B, 3], got {tuple(camera_positions.shape)}")
    gen_device = generator.device if generator is not None else camera_positions.device
    noise = torch.randn(camera_positions.shape, generator=generator, device=gen_device).to(camera_positions)
    return _unit(_unit(camera_positions) + std * noise)
