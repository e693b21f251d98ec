"""Backgrounds behind the object: a learned colour per view direction, a solid colour, or a random texture.

DreamFusion (§3.1) composites the render over a background predicted by a small MLP of the ray
direction; without it the field learns to paint the background into the scene. ``random`` draws one
uniform colour per view, which stops the object from relying on any particular background;
``white_or_black`` picks white or black per view with equal odds (DreamGaussian's text stage).
``augment`` draws Dream Fields' random textures per view (Jain et al., arXiv 2112.01455, §4.2;
:func:`random_backgrounds`): one of Gaussian noise, a checkerboard (random period, phase and two colours) or a
random Fourier texture (a sum of low-frequency sinusoids), then a Gaussian blur of random width, so that CLIP
cannot be satisfied by a see-through scene: a transparent render shows the (random) background, never the
prompt. Every random draw comes from the ``generator`` passed in (on the generator's own device, then moved),
so a seeded CPU generator gives the same backgrounds on any device.

Previews and the orbit video render over :func:`eval_background` (issue 34): the training colour where it is fixed,
so that the faint fog it hid stays hidden (over white, fog that gray hid shows as a halo in the object's
complementary colour), and mid gray where it was learned or drawn, so that a white and a black object both stand out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..settings import choices_of
from .config import RenderConfig

__all__ = ["LearnedBackground", "solid_background", "build_background", "random_backgrounds", "eval_background",
           "SOLID_KINDS"]

KINDS = choices_of(RenderConfig)["background"]  # render.background's allowed values
SOLID_KINDS = tuple(k for k in KINDS if k != "learned")  # drawn per call, no parameters
FIXED_KINDS = ("white", "black", "gray")  # one colour for every view of every step
EVAL_NEUTRAL = "gray"  # 0.5: half the range away from a white (1) and from a black (0) object


def eval_background(kind: str) -> str:
    """The solid background previews and the orbit video show for a run trained over ``kind`` (render.background):
    that colour where it is fixed (white, black, gray), else (learned, random, white_or_black, augment) mid gray."""
    if kind not in KINDS:
        raise ConfigError(f"bad value '{kind}' for 'render.background': choose one of {', '.join(KINDS)}")
    return kind if kind in FIXED_KINDS else EVAL_NEUTRAL


class LearnedBackground(nn.Module):
    """Unit view direction ``[..., 3]`` -> rgb ``[..., 3]`` in [0, 1].

    A low-frequency encoding (d, sin(2^k pi d), cos(2^k pi d) for k < n_frequencies) keeps the
    background smooth, then an MLP and a sigmoid. The last layer starts at zero: the initial
    background is a uniform 0.5 grey."""

    def __init__(self, n_frequencies: int = 2, hidden_dim: int = 32, n_hidden_layers: int = 1):
        super().__init__()
        self.n_frequencies = n_frequencies
        self.register_buffer("_freqs", math.pi * 2.0 ** torch.arange(n_frequencies), persistent=False)
        layers: list[nn.Module] = []
        width = 3 + 6 * n_frequencies
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU(inplace=True)]
            width = hidden_dim
        last = nn.Linear(width, 3)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*layers, last)

    def forward(self, dirs: Tensor) -> Tensor:  # [..., 3] -> [..., 3]
        if dirs.shape[-1] != 3:
            raise ValueError(f"LearnedBackground expects directions [..., 3], got {list(dirs.shape)}")
        d = nn.functional.normalize(dirs, dim=-1)
        angles = (d.unsqueeze(-1) * self._freqs).flatten(-2)  # [..., 3 * n_frequencies]
        encoded = torch.cat([d, torch.sin(angles), torch.cos(angles)], dim=-1)
        return torch.sigmoid(self.mlp(encoded))

    def param_groups(self, optim_cfg) -> list[dict]:
        return [{"name": "background", "params": list(self.parameters()), "lr": optim_cfg.background_lr}]


def solid_background(kind: str, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None, *,
                     device: torch.device | str) -> Tensor:
    """A solid background ``[*shape, 3]``; ``shape[0]`` is the number of views.

    white = 1, black = 0, gray = 0.5; random = one colour per view, uniform in [0, 1]^3, drawn from ``generator``
    (on the generator's device, then moved), the same over the view's pixels; white_or_black = white or black
    per view, drawn the same way; augment = Dream Fields'
    random texture per view (:func:`random_backgrounds`; shape must be (B, H, W))."""
    shape = tuple(shape)
    if kind == "white":
        return torch.ones(*shape, 3, device=device)
    if kind == "black":
        return torch.zeros(*shape, 3, device=device)
    if kind == "gray":
        return torch.full((*shape, 3), 0.5, device=device)
    if kind in ("random", "white_or_black"):  # one draw per view, the same over the view's pixels
        if not shape:
            raise ValueError(f"solid_background('{kind}') needs a shape whose first entry is the number of views")
        draw_device = generator.device if generator is not None else device
        if kind == "random":
            colour = torch.rand(shape[0], 3, generator=generator, device=draw_device)  # [B, 3]
        else:
            colour = (torch.rand(shape[0], 1, generator=generator, device=draw_device) < 0.5).float().expand(-1, 3)
        colour = colour.to(device).view(shape[0], *([1] * (len(shape) - 1)), 3)
        return colour.expand(*shape, 3).contiguous()
    if kind == "augment":
        if len(shape) != 3:
            raise ValueError(f"solid_background('augment') needs a shape (B, H, W), got {shape}")
        return random_backgrounds(*shape, generator=generator, device=device)
    raise ConfigError(f"bad background '{kind}': choose one of learned, {', '.join(SOLID_KINDS)}")


def build_background(kind: str, device: torch.device | str = "cpu") -> LearnedBackground | None:
    """The module for ``learned``; ``None`` for the solid kinds (use :func:`solid_background`)."""
    if kind not in KINDS:
        raise ConfigError(f"bad value '{kind}' for 'render.background': choose one of {', '.join(KINDS)}")
    if kind == "learned":
        return LearnedBackground().to(device)
    return None


# -- Dream Fields' random textures (render.background=augment) ------------------------------------------

TEXTURE_KINDS = ("noise", "checkerboard", "fourier")
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

    Per view the draws are, in order: the kind (uniform over TEXTURE_KINDS), the kind's own
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
