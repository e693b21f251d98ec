"""Tri-plane field (EG3D, arXiv 2112.07945, §4): three axis-aligned feature planes and a small decoder MLP.

    f_xy, f_xz, f_yz = bilinear samples of the planes at the point's projections   # [M, C] each
    features         = f_xy + f_xz + f_yz   (EG3D; or the product, or the concat [M, 3C])
    raw, a           = MLP(features)                                              # [M], [M, 3]
    density          = activation(raw + blob(x)),   albedo = sigmoid(a)

The density activation and the Magic3D blob bias are the NeRF field's (fields/nerf.py), imported, not
copied: a fresh field (planes ~ 0) is the same soft ball as a fresh NeRF field.

Plane conventions (also written into ``triplane.npz`` by :func:`save_planes`):
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

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FieldConfig, OptimConfig
from ..errors import ConfigError, UserError
from .nerf import NeRFField, _check_points, check_decoder_config, decode_outputs, init_decoder

__all__ = ["TriplaneField", "PLANE_AXES", "save_planes", "load_planes"]

PLANE_AXES = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}  # plane -> (column axis, row axis)
_AGGREGATIONS = ("sum", "product", "concat")
_INIT_STD = 0.1  # N(0, 0.1) planes: measured to converge with the demo prior (see tests/test_triplane.py)
_FORMAT = "dreamfusion-triplane/1"
_NO_GRAD_CHUNK = 2 ** 18  # points per pass without autograd (~0.4 GB of temporaries at C = 32)


class TriplaneField(nn.Module):
    """Volumetric field (DESIGN.md "fields/"): ``forward(points [M, 3]) -> dict(density [M], albedo [M, 3])``."""

    blob = NeRFField.blob  # Magic3D bias blob_density * (1 - |x| / blob_radius), added before the activation

    def __init__(self, cfg: FieldConfig, device: torch.device | str = "cpu", albedo_channels: int = 3):
        super().__init__()
        check_decoder_config(cfg)
        if cfg.triplane_aggregation not in _AGGREGATIONS:
            raise ConfigError(f"bad value '{cfg.triplane_aggregation}' for 'field.triplane_aggregation': "
                              f"choose one of {', '.join(_AGGREGATIONS)}")
        if cfg.triplane_resolution < 2 or cfg.triplane_channels < 1:
            raise ConfigError(f"field.triplane_resolution must be >= 2 and field.triplane_channels >= 1, "
                              f"got {cfg.triplane_resolution} and {cfg.triplane_channels}")
        self.cfg = cfg
        self.aggregation = cfg.triplane_aggregation
        C, N = cfg.triplane_channels, cfg.triplane_resolution
        self.planes = nn.Parameter(torch.randn(3, C, N, N, device=device) * _INIT_STD)  # xy, xz, yz
        init_decoder(self, cfg, albedo_channels, 3 * C if self.aggregation == "concat" else C, device)

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

    def forward(self, points: Tensor) -> dict[str, Tensor]:
        """points ``[M, 3]`` -> ``density [M]`` (>= 0, 0 outside the box), ``albedo [M, 3]`` in [0, 1]."""
        _check_points(points)
        if points.shape[0] > _NO_GRAD_CHUNK and not torch.is_grad_enabled():  # export / video: bound temporaries
            parts = [self(chunk) for chunk in points.split(_NO_GRAD_CHUNK)]
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        out = self.mlp(self.features(points))  # [M, 4]
        return decode_outputs(out, points, self._activation, self.blob(points), self.bound)

    def density(self, points: Tensor) -> Tensor:  # [M, 3] -> [M]
        return self.forward(points)["density"]

    def tv_loss(self) -> Tensor:
        """Total variation of the planes: the mean |difference| over every pair of row- or column-neighbours."""
        p = self.planes
        d_row = (p[:, :, 1:, :] - p[:, :, :-1, :]).abs()
        d_col = (p[:, :, :, 1:] - p[:, :, :, :-1]).abs()
        return (d_row.sum() + d_col.sum()) / (d_row.numel() + d_col.numel())

    def param_groups(self, optim_cfg: OptimConfig) -> list[dict]:
        """Adam groups: the planes at ``triplane_lr``, the MLP at ``network_lr``."""
        return [{"name": "planes", "params": [self.planes], "lr": optim_cfg.triplane_lr},
                {"name": "network", "params": list(self.mlp.parameters()), "lr": optim_cfg.network_lr}]


# -- plane files ------------------------------------------------------------------------------------------

_META_KEYS = ("bound", "triplane_resolution", "triplane_channels", "triplane_aggregation", "hidden_dim",
              "n_hidden_layers", "density_activation", "blob_density", "blob_radius")


def save_planes(field: TriplaneField, path: str | Path) -> Path:
    """Write ``triplane.npz``: float32 arrays ``xy, xz, yz`` ``[C, N, N]``, the MLP as ``mlp.<i>.weight`` /
    ``mlp.<i>.bias`` (``nn.Linear`` layout ``[out, in]``, ReLU between layers) and ``meta``, a JSON string
    with the field config, the axis conventions and the decoder's output layout. Loads with
    ``np.load(path)`` (no pickle). Written to ``*.tmp`` then renamed, so a reader never sees half a file.
    """
    path = Path(path)
    meta = {key: getattr(field.cfg, key) for key in _META_KEYS}
    meta.update({
        "format": _FORMAT,
        "planes": {name: {"column_axis": "xyz"[a], "row_axis": "xyz"[b]} for name, (a, b) in PLANE_AXES.items()},
        "layout": "each plane [C, N, N] indexed [channel, row, column]",
        "sampling": "bilinear, align_corners=True: column i at -bound + i * 2 * bound / (N - 1); "
                    "points outside the box are clamped to it and get density 0",
        "decoder": "mlp.<i> are nn.Linear (y = x W^T + b) with ReLU between; output 0 is raw density, "
                   "density = activation(raw + blob_density * (1 - |x| / blob_radius)); with albedo_channels "
                   "3, outputs 1-3 are albedo logits, albedo = sigmoid; with 4, outputs 1-4 are Stable Diffusion "
                   "latents (scaled by the VAE's scaling_factor), used as they are",
        "albedo_channels": field.albedo_channels,
        "mlp_layers": [name for name, m in field.mlp.named_children() if isinstance(m, nn.Linear)],
    })
    arrays = {name: field.planes[i].detach().cpu().float().numpy() for i, name in enumerate(PLANE_AXES)}
    for name, tensor in field.mlp.state_dict().items():
        arrays[f"mlp.{name}"] = tensor.detach().cpu().float().numpy()
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


def load_planes(path: str | Path, field: TriplaneField | None = None,
                device: torch.device | str = "cpu") -> TriplaneField:
    """A :class:`TriplaneField` from a ``triplane.npz``; with ``field``, the arrays are copied into it
    (its shapes must match the file's)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read tri-plane file '{path}': {str(exc).splitlines()[0]}") from None
    if meta.get("format") != _FORMAT:
        raise UserError(f"'{path}' is not a dreamfusion tri-plane file (format {meta.get('format')!r})")
    if field is None:
        field = TriplaneField(FieldConfig(type="triplane", **{k: meta[k] for k in _META_KEYS}), device,
                             albedo_channels=meta.get("albedo_channels", 3))
    differ = [f"{k}={meta[k]!r} (field: {getattr(field.cfg, k)!r})" for k in _META_KEYS
              if meta[k] != getattr(field.cfg, k)]
    if differ:
        raise UserError(f"tri-plane file '{path}' was saved with {', '.join(differ)}")
    planes = torch.from_numpy(np.stack([arrays.pop(name) for name in PLANE_AXES]))
    mlp_state = {k[len("mlp."):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("mlp.")}
    if planes.shape != field.planes.shape:
        raise UserError(f"tri-plane file '{path}' holds planes {list(planes.shape)}, the field has "
                        f"{list(field.planes.shape)}")
    try:
        field.mlp.load_state_dict(mlp_state)
    except RuntimeError as exc:
        raise UserError(f"tri-plane file '{path}' does not match the field's MLP "
                        f"({str(exc).splitlines()[0][:160]})") from None
    with torch.no_grad():
        field.planes.copy_(planes)
    return field
