"""The tri-plane file, ``triplane.npz``: a TriplaneField's planes and decoder as plain arrays for other tools.

:func:`save_planes` writes it (export_run, via :func:`dreamfusion.export.write_field_files`), :func:`load_planes`
reads it back into a field; the plane conventions are those of fields/triplane.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..fields.config import FieldConfig, TriplaneConfig
from ..fields.triplane import PLANE_AXES, TriplaneField
from ..io import atomic_write

__all__ = ["save_planes", "load_planes"]

_FORMAT = "dreamfusion-triplane/1"

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
