"""Backgrounds behind the object: a learned colour per view direction, or a solid colour.

DreamFusion (§3.1) composites the render over a background predicted by a small MLP of the ray
direction; without it the field learns to paint the background into the scene. ``random`` draws one
uniform colour per view, which stops the object from relying on any particular background;
``white_or_black`` picks white or black per view with equal odds (DreamGaussian's text stage).
``augment`` draws Dream Fields' random textures per view (noise, checkerboard, Fourier; then a blur).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import CHOICES, OptimConfig
from ..errors import ConfigError

__all__ = ["LearnedBackground", "solid_background", "build_background"]

SOLID_KINDS = tuple(k for k in CHOICES["render.background"] if k != "learned")  # drawn per call, no parameters


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

    def param_groups(self, optim_cfg: OptimConfig) -> list[dict]:
        return [{"name": "background", "params": list(self.parameters()), "lr": optim_cfg.background_lr}]


def solid_background(kind: str, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None, *,
                     device: torch.device | str) -> Tensor:
    """A solid background ``[*shape, 3]``; ``shape[0]`` is the number of views.

    white = 1, black = 0, gray = 0.5; random = one colour per view, uniform in [0, 1]^3, drawn from ``generator``
    (on the generator's device, then moved), the same over the view's pixels; white_or_black = white or black
    per view, drawn the same way; augment = Dream Fields'
    random texture per view (``dreamfusion.guidance.augment.random_backgrounds``; shape must be (B, H, W))."""
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
        from ..guidance.augment import random_backgrounds  # lazy: fields do not depend on guidance otherwise

        return random_backgrounds(*shape, generator=generator, device=device)
    raise ConfigError(f"bad background '{kind}': choose one of learned, {', '.join(SOLID_KINDS)}")


def build_background(kind: str, device: torch.device | str = "cpu") -> LearnedBackground | None:
    """The module for ``learned``; ``None`` for the solid kinds (use :func:`solid_background`)."""
    if kind not in CHOICES["render.background"]:
        raise ConfigError(f"bad value '{kind}' for 'render.background': choose one of {', '.join(CHOICES['render.background'])}")
    if kind == "learned":
        return LearnedBackground().to(device)
    return None
