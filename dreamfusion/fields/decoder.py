"""The MLP decoder that NeRF (hash-grid features) and tri-plane (plane features) share.

    raw, a   = MLP(features(x))                   raw density [M], albedo logits [M, C]
    density  = activation(raw + blob(x)),  blob(x) = blob_density * (1 - |x| / blob_radius)
    albedo   = sigmoid(a) for RGB (C = 3); a as it is for Stable Diffusion latents (C = 4)

The blob (Magic3D, arXiv 2211.10440, §4) is added to the raw density *before* the activation, so a fresh
field (features ~ 0) is a soft ball of radius ``blob_radius`` that the guidance sculpts. Points outside
``[-bound, bound]^3`` get density 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FieldConfig
from ..settings import check_choice
from ..errors import ConfigError
from .base import Field

__all__ = ["DecodedField", "trunc_exp", "check_points"]

_EXP_CLAMP = 15.0  # exp(15) ~ 3.3e6: far past any useful density
_NO_GRAD_CHUNK = 2 ** 18  # points per pass without autograd (export, video): bounds the temporaries


class _TruncExp(torch.autograd.Function):
    """exp(min(x, 15)); the backward passes g * exp(min(x, 15)) (torch-ngp's trunc_exp clamps the same
    way), finite for any x. Above the clamp this is a straight-through gradient, so the optimiser can
    still pull a huge raw density back down. Written with differentiable ops on the saved input, so it
    has a second derivative (normals from the density gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x.clamp(max=_EXP_CLAMP))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=_EXP_CLAMP))


def trunc_exp(x: Tensor) -> Tensor:
    """Truncated exponential density activation: exp(min(x, 15)) with a finite gradient everywhere."""
    return _TruncExp.apply(x)


_ACTIVATIONS = {"softplus": F.softplus, "exp": trunc_exp}


def check_points(points: Tensor) -> None:
    if points.dim() != 2 or points.shape[-1] != 3:
        raise ValueError(f"field expects points [M, 3], got {list(points.shape)}")


class DecodedField(Field):
    """A field whose ``features(points)`` one MLP decodes. A subclass calls ``nn.Module.__init__`` (via
    ``super().__init__()``), builds its encoding, then ``init_decoder`` with the encoding's width."""

    def init_decoder(self, cfg: FieldConfig, in_width: int, albedo_channels: int, device) -> None:
        """bound, blob, density activation and ``self.mlp``: in_width -> (Linear, ReLU) x n_hidden_layers ->
        1 raw density + albedo_channels outputs."""
        if albedo_channels not in (3, 4):
            raise ConfigError(f"a field renders 3 albedo channels (RGB) or 4 (SD latents), got {albedo_channels}")
        if cfg.hidden_dim < 1 or cfg.n_hidden_layers < 0:
            raise ConfigError(f"field.hidden_dim must be >= 1 and field.n_hidden_layers >= 0, "
                              f"got {cfg.hidden_dim} and {cfg.n_hidden_layers}")
        if cfg.blob_radius <= 0:
            raise ConfigError(f"field.blob_radius must be positive, got {cfg.blob_radius}")
        self.albedo_channels = albedo_channels
        self.bound = float(cfg.bound)
        self.blob_density = float(cfg.blob_density)
        self.blob_radius = float(cfg.blob_radius)
        self.density_activation = check_choice(cfg, "density_activation", "field.density_activation")
        self._activation = _ACTIVATIONS[cfg.density_activation]
        layers: list[nn.Module] = []
        width = in_width
        for _ in range(cfg.n_hidden_layers):
            layers += [nn.Linear(width, cfg.hidden_dim), nn.ReLU(inplace=True)]
            width = cfg.hidden_dim
        layers.append(nn.Linear(width, 1 + albedo_channels))  # raw density, 3 albedo logits (or 4 latents)
        self.mlp = nn.Sequential(*layers).to(device)

    def features(self, points: Tensor) -> Tensor:
        """points [M, 3] -> features [M, in_width] for the MLP."""
        raise NotImplementedError

    def blob(self, points: Tensor) -> Tensor:  # [M, 3] -> [M]
        """Magic3D density bias blob_density * (1 - |x| / blob_radius), added before the activation."""
        return self.blob_density * (1.0 - points.norm(dim=-1) / self.blob_radius)

    def forward(self, points: Tensor) -> dict[str, Tensor]:
        """points ``[M, 3]`` -> ``density [M]`` (>= 0, 0 outside the box), ``albedo [M, C]``."""
        check_points(points)
        if points.shape[0] > _NO_GRAD_CHUNK and not torch.is_grad_enabled():
            parts = [self(chunk) for chunk in points.split(_NO_GRAD_CHUNK)]
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        raw = self.mlp(self.features(points))  # [M, 1 + C]
        density = self._activation(raw[:, 0] + self.blob(points))
        inside = (points.abs() <= self.bound).all(dim=-1)
        albedo = torch.sigmoid(raw[:, 1:]) if raw.shape[1] == 4 else raw[:, 1:]
        return {"density": torch.where(inside, density, torch.zeros_like(density)), "albedo": albedo}
