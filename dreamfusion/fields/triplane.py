"""Tri-plane field (EG3D, arXiv 2112.07945, §4): three axis-aligned feature planes and a small decoder MLP.

    f_xy, f_xz, f_yz = bilinear samples of the planes at the point's projections   # [M, C] each
    features         = f_xy + f_xz + f_yz   (EG3D; or the product, or the concat [M, 3C])
    raw, a           = MLP(features)                                              # [M], [M, 3]
    density          = activation(raw + blob(x)),   albedo = sigmoid(a)

The density activation, the Magic3D blob bias and the MLP are the decoder NeRF shares (fields/decoder.py): a
fresh field (planes ~ 0) is the same soft ball as a fresh NeRF field. Settings in field.triplane.

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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FieldConfig, OptimConfig, TriplaneConfig
from ..settings import check_choice
from ..errors import ConfigError, UserError
from ..io import atomic_write
from .decoder import DecodedField

__all__ = ["TriplaneField", "PLANE_AXES", "save_planes", "load_planes"]

PLANE_AXES = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}  # plane -> (column axis, row axis)
_INIT_STD = 0.1  # N(0, 0.1) planes: measured to converge with the demo prior (see tests/test_triplane.py)
_FORMAT = "dreamfusion-triplane/1"


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

    def param_groups(self, optim_cfg: OptimConfig) -> list[dict]:
        """Adam groups: the planes at ``triplane_lr``, the MLP at ``network_lr``."""
        return [{"name": "planes", "params": [self.planes], "lr": optim_cfg.triplane_lr},
                {"name": "network", "params": list(self.mlp.parameters()), "lr": optim_cfg.network_lr}]

    def write_artifacts(self, run_dir: Path) -> dict[str, Path]:
        """triplane.npz: the planes and decoder as arrays with their conventions, for other tools."""
        return {"planes": save_planes(self, Path(run_dir) / "triplane.npz")}


# -- plane files ------------------------------------------------------------------------------------------

# The file's meta keys (format 1) -> where the config holds them.
_META_KEYS = {"bound": "bound", "triplane_resolution": "triplane.resolution", "triplane_channels": "triplane.channels",
              "triplane_aggregation": "triplane.aggregation", "hidden_dim": "hidden_dim",
              "n_hidden_layers": "n_hidden_layers", "density_activation": "density_activation",
              "blob_density": "blob_density", "blob_radius": "blob_radius"}


def _meta_value(cfg: FieldConfig, key: str):
    value = cfg
    for part in _META_KEYS[key].split("."):
        value = getattr(value, part)
    return value


def _config_from_meta(meta: dict) -> FieldConfig:
    triplane = TriplaneConfig(resolution=meta["triplane_resolution"], channels=meta["triplane_channels"],
                              aggregation=meta["triplane_aggregation"])
    return FieldConfig(type="triplane", triplane=triplane,
                       **{k: meta[k] for k, where in _META_KEYS.items() if "." not in where})


def save_planes(field: TriplaneField, path: str | Path) -> Path:
    """Write ``triplane.npz``: float32 arrays ``xy, xz, yz`` ``[C, N, N]``, the MLP as ``mlp.<i>.weight`` /
    ``mlp.<i>.bias`` (``nn.Linear`` layout ``[out, in]``, ReLU between layers) and ``meta``, a JSON string
    with the field config, the axis conventions and the decoder's output layout. Loads with
    ``np.load(path)`` (no pickle). Written atomically, so a reader never sees half a file.
    """
    path = Path(path)
    meta = {key: _meta_value(field.cfg, key) for key in _META_KEYS}
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
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


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
        field = TriplaneField(_config_from_meta(meta), device, albedo_channels=meta.get("albedo_channels", 3))
    differ = [f"{k}={meta[k]!r} (field: {_meta_value(field.cfg, k)!r})" for k in _META_KEYS
              if meta[k] != _meta_value(field.cfg, k)]
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
