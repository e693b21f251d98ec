"""Tri-plane field (EG3D, arXiv 2112.07945, §4): three axis-aligned feature planes and a small decoder MLP.

    f_xy, f_xz, f_yz = bilinear samples of the planes at the point's projections   # [M, C] each
    features         = f_xy + f_xz + f_yz   (EG3D; or the product, or the concat [M, 3C])
    raw, a           = MLP(features)                                              # [M], [M, 3]
    density          = activation(raw + blob(x)),   albedo = sigmoid(a)

The density activation, the Magic3D blob bias and the MLP are the decoder NeRF shares (fields/decoder.py): a
fresh field (planes ~ 0) is the same soft ball as a fresh NeRF field. Settings in field.triplane.

Plane conventions (also written into ``triplane.npz`` by ``export.planes.save_planes``):
- ``planes`` is one parameter ``[3, C, N, N]`` holding the planes in the order ``xy, xz, yz``.
- Plane ``"ab"`` is indexed ``[channel, row, column]``: the column follows the first axis ``a``, the row
  the second axis ``b`` (``F.grid_sample``: grid[..., 0] picks the column, grid[..., 1] the row).
- ``align_corners=True``: texel centres sit on a regular lattice that includes the faces of the box,
  column ``i`` at ``a = -bound + i * 2 bound / (N - 1)`` (same for rows), so ``a = -bound`` is exactly
  texel 0 and ``a = +bound`` texel ``N - 1``.
- Points outside ``[-bound, bound]^3`` have density 0 (as in the NeRF field); their albedo is sampled
  with ``padding_mode="border"`` (the clamped point), so it stays finite and lies in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..settings import check_choice
from .config import FieldConfig
from .decoder import DecodedField

__all__ = ["TriplaneField", "PLANE_AXES"]

PLANE_AXES = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}  # plane -> (column axis, row axis)
_INIT_STD = 0.1  # N(0, 0.1) planes: measured to converge with the demo prior (see tests/test_triplane.py)


class TriplaneField(DecodedField):
    """Volumetric field (DESIGN.md "Fields"): ``forward(points [M, 3]) -> dict(density [M], albedo [M, 3])``."""

    def __init__(self, cfg: FieldConfig, device: torch.device | str = "cpu", albedo_channels: int = 3):
        super().__init__()
        t = cfg.triplane
        self.aggregation = check_choice(t, "aggregation", "field.triplane.aggregation")
        if t.resolution < 2 or t.channels < 1:
            raise ConfigError(f"field.triplane.resolution must be >= 2 and field.triplane.channels >= 1, "
                              f"got {t.resolution} and {t.channels}")
        self.cfg = cfg
        C, N = t.channels, t.resolution
        self.planes = nn.Parameter(torch.randn(3, C, N, N, device=device) * _INIT_STD)  # xy, xz, yz
        self.init_decoder(cfg, 3 * C if self.aggregation == "concat" else C, albedo_channels, device)

    def sample_planes(self, points: Tensor) -> Tensor:  # [M, 3] -> [3, M, C]
        """Bilinear samples of the xy, xz, yz planes at the point's projections (conventions: module doc)."""
        unit = points / self.bound  # [-1, 1] inside the box
        grid = torch.stack([unit[:, list(ab)] for ab in PLANE_AXES.values()])  # [3, M, 2] (column, row)
        feats = F.grid_sample(self.planes, grid[:, None], mode="bilinear", padding_mode="border",
                              align_corners=True)  # [3, C, 1, M]
        return feats[:, :, 0].transpose(1, 2)  # [3, M, C]

    def features(self, points: Tensor) -> Tensor:  # [M, 3] -> [M, C] or [M, 3C]
        """The three plane samples aggregated by sum (EG3D), product or concat (xy | xz | yz)."""
        f = self.sample_planes(points)
        if self.aggregation == "sum":
            return f[0] + f[1] + f[2]
        if self.aggregation == "product":
            return f[0] * f[1] * f[2]
        return torch.cat([f[0], f[1], f[2]], dim=-1)

    def tv_loss(self) -> Tensor:
        """Total variation of the planes: the mean |difference| over every pair of row- or column-neighbours."""
        p = self.planes
        d_row = (p[:, :, 1:, :] - p[:, :, :-1, :]).abs()
        d_col = (p[:, :, :, 1:] - p[:, :, :, :-1]).abs()
        return (d_row.sum() + d_col.sum()) / (d_row.numel() + d_col.numel())

    def regularizers(self) -> dict[str, Tensor]:
        return {"loss_tv": self.tv_loss()}

    def param_groups(self, optim_cfg) -> list[dict]:
        """Adam groups: the planes at ``triplane_lr``, the MLP at ``network_lr``."""
        return [{"name": "planes", "params": [self.planes], "lr": optim_cfg.triplane_lr},
                {"name": "network", "params": list(self.mlp.parameters()), "lr": optim_cfg.network_lr}]
