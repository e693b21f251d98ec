"""Dream Fields augmentations (Jain et al., arXiv 2112.01455, §4.2): random crops of the renders for CLIP.

Pure functions of tensors; every random draw comes from the ``generator`` passed in (on the generator's
own device, then moved), so a seeded CPU generator gives the same crops on any device. (The random-texture
backgrounds of §4.2 are the renderer's: ``render.background=augment``, dreamfusion/renderer/backgrounds.py.)

Crops: boxes covering ``fraction`` of the render side at a uniform random position, always fully
inside the image; ``crop`` cuts them out (the CLIP wrapper resizes them to its input size).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_crop_boxes", "crop"]


def _draw(generator: torch.Generator | None, fn, *shape: int, **kwargs) -> Tensor:
    """torch.rand / randn / randint on the generator's device (CPU when none)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return fn(*shape, generator=generator, device=device, **kwargs)


def random_crop_boxes(n: int, height: int, width: int, fraction: float,
                      generator: torch.Generator | None = None) -> Tensor:
    """[n, 4] long (top, left, crop_height, crop_width), each box inside the H x W image.

    Every box has side round(fraction * side) (at least 1 pixel, at most the side); its top-left
    corner is uniform over the integer positions that keep it inside: top in [0, H - h], left in [0, W - w].
    """
    if n <= 0:
        raise ValueError(f"random_crop_boxes: n must be positive, got {n}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"random_crop_boxes: fraction must be in (0, 1], got {fraction}")
    ch = min(max(round(fraction * height), 1), height)
    cw = min(max(round(fraction * width), 1), width)
    u = _draw(generator, torch.rand, 2, n).cpu().double()
    top = (u[0] * (height - ch + 1)).floor().long().clamp(max=height - ch)
    left = (u[1] * (width - cw + 1)).floor().long().clamp(max=width - cw)
    return torch.stack([top, left, torch.full_like(top, ch), torch.full_like(top, cw)], dim=1)


def crop(images: Tensor, boxes: Tensor, per_image: int) -> Tensor:
    """images [B, H, W, 3], boxes [B * per_image, 4] (all the same size) -> crops [B * per_image, 3, h, w].

    Crop i comes from image i // per_image. Differentiable (plain slicing).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"crop: images must be [B, H, W, 3], got {tuple(images.shape)}")
    if boxes.shape != (images.shape[0] * per_image, 4):
        raise ValueError(f"crop: expected boxes [{images.shape[0] * per_image}, 4], got {tuple(boxes.shape)}")
    x = images.permute(0, 3, 1, 2)  # [B, 3, H, W]
    return torch.stack([x[i // per_image, :, t:t + h, l:l + w] for i, (t, l, h, w) in enumerate(boxes.tolist())])
