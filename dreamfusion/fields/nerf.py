"""Hash-grid NeRF field: points -> (density, albedo), with the Magic3D density blob at init.

    features = HashGrid(x)                                  # [M, L * F]
    raw, a   = MLP(features)                                # raw density [M], albedo logits [M, 3]
    density  = activation(raw + blob(x)),  blob(x) = blob_density * (1 - |x| / blob_radius)
    albedo   = sigmoid(a)

The blob (Magic3D, arXiv 2211.10440, §4) is added to the raw density *before* the activation, so a
fresh field (table ~ 0) is a soft ball of radius ``blob_radius`` that the guidance sculpts, and it
keeps shaping the density throughout training. Points outside ``[-bound, bound]^3`` get density 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FieldConfig, OptimConfig
from ..errors import ConfigError
from .hashgrid import make_hashgrid

__all__ = ["NeRFField", "trunc_exp", "decode_outputs", "check_decoder_config", "check_albedo_channels",
           "init_decoder"]

_EXP_CLAMP = 15.0  # exp(15) ~ 3.3e6: far past any useful density


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


def decode_outputs(raw: Tensor, points: Tensor, activation, blob: Tensor, bound: float) -> dict[str, Tensor]:
    """MLP output [M, 1 + C] -> density [M] = activation(raw + blob), 0 outside the box; albedo [M, C]:
    sigmoid for RGB (C = 3), the raw outputs for Stable Diffusion latents (C = 4, guidance.latent_render)."""
    density = activation(raw[:, 0] + blob)
    inside = (points.abs() <= bound).all(dim=-1)
    albedo = torch.sigmoid(raw[:, 1:]) if raw.shape[1] == 4 else raw[:, 1:]
    return {"density": torch.where(inside, density, torch.zeros_like(density)), "albedo": albedo}


def check_albedo_channels(channels: int) -> int:
    if channels not in (3, 4):
        raise ConfigError(f"a field renders 3 albedo channels (RGB) or 4 (SD latents), got {channels}")
    return channels


def check_decoder_config(cfg: FieldConfig) -> None:
    """The settings every MLP-decoded field shares (NeRF, tri-plane): activation, MLP size, blob."""
    if cfg.density_activation not in _ACTIVATIONS:
        raise ConfigError(f"bad value '{cfg.density_activation}' for 'field.density_activation': "
                          f"choose one of {', '.join(_ACTIVATIONS)}")
    if cfg.hidden_dim < 1 or cfg.n_hidden_layers < 0:
        raise ConfigError(f"field.hidden_dim must be >= 1 and field.n_hidden_layers >= 0, "
                          f"got {cfg.hidden_dim} and {cfg.n_hidden_layers}")
    if cfg.blob_radius <= 0:
        raise ConfigError(f"field.blob_radius must be positive, got {cfg.blob_radius}")


def init_decoder(field: nn.Module, cfg: FieldConfig, albedo_channels: int, in_width: int,
                 device: torch.device | str) -> None:
    """The decoder every MLP-decoded field shares (NeRF, tri-plane): bound, blob, density activation and
    ``field.mlp``: in_width -> (Linear, ReLU) x n_hidden_layers -> 1 raw density + albedo_channels outputs."""
    field.albedo_channels = check_albedo_channels(albedo_channels)
    field.bound = float(cfg.bound)
    field.blob_density = float(cfg.blob_density)
    field.blob_radius = float(cfg.blob_radius)
    field.density_activation = cfg.density_activation
    field._activation = _ACTIVATIONS[cfg.density_activation]
    layers: list[nn.Module] = []
    width = in_width
    for _ in range(cfg.n_hidden_layers):
        layers += [nn.Linear(width, cfg.hidden_dim), nn.ReLU(inplace=True)]
        width = cfg.hidden_dim
    layers.append(nn.Linear(width, 1 + albedo_channels))  # raw density, 3 albedo logits (or 4 latents)
    field.mlp = nn.Sequential(*layers).to(device)


class NeRFField(nn.Module):
    """Volumetric field (DESIGN.md "fields/"): ``forward(points [M, 3]) -> dict(density [M], albedo [M, 3])``."""

    def __init__(self, cfg: FieldConfig, device: torch.device | str = "cpu", albedo_channels: int = 3):
        super().__init__()
        check_decoder_config(cfg)
        self.encoding = make_hashgrid(cfg, device)
        init_decoder(self, cfg, albedo_channels, self.encoding.output_dim, device)

    def blob(self, points: Tensor) -> Tensor:  # [M, 3] -> [M]
        """Magic3D density bias blob_density * (1 - |x| / blob_radius), added before the activation."""
        return self.blob_density * (1.0 - points.norm(dim=-1) / self.blob_radius)

    def forward(self, points: Tensor) -> dict[str, Tensor]:
        """points ``[M, 3]`` -> ``density [M]`` (>= 0, 0 outside the box), ``albedo [M, 3]`` in [0, 1]."""
        _check_points(points)
        out = self.mlp(self.encoding(points))  # [M, 4]
        return decode_outputs(out, points, self._activation, self.blob(points), self.bound)

    def density(self, points: Tensor) -> Tensor:  # [M, 3] -> [M]
        return self.forward(points)["density"]

    def param_groups(self, optim_cfg: OptimConfig) -> list[dict]:
        """Adam groups: the hash table at ``encoding_lr``, the MLP at ``network_lr``."""
        return [{"name": "encoding", "params": list(self.encoding.parameters()), "lr": optim_cfg.encoding_lr},
                {"name": "network", "params": list(self.mlp.parameters()), "lr": optim_cfg.network_lr}]


def _check_points(points: Tensor) -> None:
    if points.dim() != 2 or points.shape[-1] != 3:
        raise ValueError(f"field expects points [M, 3], got {list(points.shape)}")
