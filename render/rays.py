"""Pinhole rays through pixel centres of OpenGL cameras (docs/DESIGN.md: row 0 = top of the image)."""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

__all__ = ["generate_rays"]


def generate_rays(c2w: Tensor, fovy: Union[Tensor, float], height: int, width: int) -> tuple[Tensor, Tensor]:
    """World-space rays of every pixel.

    Args:
        c2w: [B, 4, 4] camera-to-world, camera looks along local -z, +y up, +x right.
        fovy: [B] (or a float) vertical field of view in radians; pixels are square, so the horizontal
            field of view follows from the aspect ratio.
        height, width: image size in pixels.

    Returns:
        origins [B, H, W, 3] (the camera centres) and unit directions [B, H, W, 3]. Pixel (i, j) is
        sampled at its centre (j + 0.5, i + 0.5); row 0 is the top of the image.
    """
    if c2w.dim() != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"generate_rays: c2w must be [B, 4, 4], got {tuple(c2w.shape)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"generate_rays: height and width must be positive, got {height} x {width}")
    batch = c2w.shape[0]
    fovy = torch.as_tensor(fovy, dtype=c2w.dtype, device=c2w.device)
    if fovy.dim() == 0:
        fovy = fovy.expand(batch)
    if fovy.shape != (batch,):
        raise ValueError(f"generate_rays: fovy must be [B] = [{batch}] or a float, got {tuple(fovy.shape)}")
    # focal length in pixels: the top edge of the image (height / 2 above the centre) is at fovy / 2
    focal = 0.5 * height / torch.tan(0.5 * fovy)  # [B]
    i = torch.arange(height, dtype=c2w.dtype, device=c2w.device)
    j = torch.arange(width, dtype=c2w.dtype, device=c2w.device)
    ii, jj = torch.meshgrid(i, j, indexing="ij")  # [H, W]
    x = (jj + 0.5 - 0.5 * width)[None] / focal[:, None, None]  # right
    y = (0.5 * height - (ii + 0.5))[None] / focal[:, None, None]  # up (row 0 = top)
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, H, W, 3], looks along -z
    dirs = torch.einsum("bkc,bhwc->bhwk", c2w[:, :3, :3], d_cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w[:, None, None, :3, 3].expand(batch, height, width, 3)
    return origins, dirs
