"""Hash-grid NeRF field: points -> (density, albedo) through a multiresolution hash encoding and the shared
MLP decoder (fields/decoder.py: density activation, Magic3D blob, sigmoid albedo).

    features = HashGrid(x)        # [M, L * F] (Instant-NGP; settings in field.hashgrid)
    density, albedo = decode(MLP(features), x)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import FieldConfig
from .decoder import DecodedField
from .hashgrid import make_hashgrid

__all__ = ["NeRFField"]


class NeRFField(DecodedField):
    """Volumetric field (DESIGN.md "Fields"): ``forward(points [M, 3]) -> dict(density [M], albedo [M, 3])``."""

    def __init__(self, cfg: FieldConfig, device: torch.device | str = "cpu", albedo_channels: int = 3):
        super().__init__()
        self.encoding = make_hashgrid(cfg, device)
        self.init_decoder(cfg, self.encoding.output_dim, albedo_channels, device)

    def features(self, points: Tensor) -> Tensor:  # [M, 3] -> [M, L * F]
        return self.encoding(points)

    def param_groups(self, optim_cfg) -> list[dict]:
        """Adam groups: the hash table at ``encoding_lr``, the MLP at ``network_lr``."""
        return [{"name": "encoding", "params": list(self.encoding.parameters()), "lr": optim_cfg.encoding_lr},
                {"name": "network", "params": list(self.mlp.parameters()), "lr": optim_cfg.network_lr}]
