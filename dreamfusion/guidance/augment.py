"""Dream Fields augmentations (Jain et al., arXiv 2112.01455, §4.2): random backgrounds and random crops.

Pure functions of tensors; every random draw comes from the ``generator`` passed in (on the generator's
own device, then moved), so a seeded CPU generator gives the same backgrounds and crops on any device.

Backgrounds: per view one of Gaussian noise, a checkerboard (random period, phase and two colours) or a
random Fourier texture (a sum of low-frequency sinusoids), then a Gaussian blur of random width. Dream
Fields composites renders over such backgrounds so that CLIP cannot be satisfied by a see-through
scene: a transparent render shows the (random) background, never the prompt.

Crops: boxes covering ``fraction`` of the render side at a uniform random position, always fully
inside the image; ``crop`` cuts them out (the CLIP wrapper resizes them to its input size).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_backgrounds", "random_crop_boxes", "crop", "BACKGROUND_KINDS"]

BACKGROUND_KINDS = ("noise", "checkerboard", "fourier")
_NOISE_STD = 0.25  # Gaussian noise around mid grey, clamped to [0, 1]
_CHECKER_PERIODS = (1 / 16, 1 / 4)  # checker square side as a fraction of the image side (min, max)
_FOURIER_WAVES = 8  # sinusoids per channel
_FOURIER_MAX_FREQ = 4.0  # cycles per image side: low frequencies only
_BLUR_MAX = 1 / 32  # largest blur sigma as a fraction of the image side


def _draw(generator: torch.Generator | None, fn, *shape: int, **kwargs) -> Tensor:
    """torch.rand / randn / randint on the generator's device (CPU when none)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return fn(*shape, generator=generator, device=device, **kwargs)


def _noise(h: int, w: int, generator) -> Tensor:
    return (0.5 + _NOISE_STD * _draw(generator, torch.randn, h, w, 3)).clamp(0.0, 1.0)


def _checkerboard(h: int, w: int, generator) -> Tensor:
    u = _draw(generator, torch.rand, 3)  # period, phase y, phase x
    colours = _draw(generator, torch.rand, 2, 3)
    lo, hi = _CHECKER_PERIODS
    period = max(2.0, (lo + (hi - lo) * float(u[0])) * max(h, w))  # pixels per square
    ys = (torch.arange(h, dtype=torch.float32) + float(u[1]) * 2 * period) // period
    xs = (torch.arange(w, dtype=torch.float32) + float(u[2]) * 2 * period) // period
    parity = ((ys[:, None] + xs[None, :]) % 2).to(torch.long)  # [h, w] in {0, 1}
    return colours.cpu()[parity]  # [h, w, 3]


def _fourier(h: int, w: int, generator) -> Tensor:
    """sum_k a_k sin(2 pi (f_k . p) + phi_k) per channel, p in [0, 1)^2, |f| <= 4 cycles; rescaled to [0, 1]."""
    freq = (_draw(generator, torch.rand, 3, _FOURIER_WAVES, 2) * 2 - 1).cpu() * _FOURIER_MAX_FREQ
    phase = _draw(generator, torch.rand, 3, _FOURIER_WAVES).cpu() * 2 * math.pi
    amp = _draw(generator, torch.randn, 3, _FOURIER_WAVES).cpu()
    py = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    px = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    arg = 2 * math.pi * (freq[..., 0, None, None] * py[:, None] + freq[..., 1, None, None] * px[None, :])
    tex = (amp[..., None, None] * torch.sin(arg + phase[..., None, None])).sum(1)  # [3, h, w]
    lo = tex.flatten(1).min(1).values[:, None, None]
    hi = tex.flatten(1).max(1).values[:, None, None]
    return ((tex - lo) / (hi - lo).clamp(min=1e-6)).permute(1, 2, 0)  # [h, w, 3]


def _blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [h, w, 3] with reflect padding; sigma in pixels (< 0.3: unchanged)."""
    if sigma < 0.3:
        return image
    h, w = image.shape[:2]
    radius = min(int(math.ceil(3 * sigma)), h - 1, w - 1)
    if radius < 1:
        return image
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = image.permute(2, 0, 1)[None]  # [1, 3, h, w]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x[0].permute(1, 2, 0)


def random_backgrounds(batch: int, height: int, width: int, generator: torch.Generator | None = None, *,
                       device: torch.device | str) -> Tensor:
    """[B, H, W, 3] in [0, 1]: per view one of noise / checkerboard / Fourier texture, then a random blur.

    Per view the draws are, in order: the kind (uniform over BACKGROUND_KINDS), the kind's own
    parameters, the blur sigma (uniform in [0, side / 32] pixels).
    """
    if batch <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"random_backgrounds: need positive batch, height, width, got {(batch, height, width)}")
    makers = (_noise, _checkerboard, _fourier)
    views = []
    for _ in range(batch):
        kind = int(_draw(generator, torch.randint, len(makers), (1,)))
        image = makers[kind](height, width, generator).float().cpu()
        sigma = float(_draw(generator, torch.rand, 1)) * _BLUR_MAX * max(height, width)
        views.append(_blur(image, sigma).clamp(0.0, 1.0))
    return torch.stack(views).to(device)


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
