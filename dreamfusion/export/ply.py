"""Gaussian splat files: the 3DGS .ply (SuperSplat, GaussianSplats3D, antimatter15, viser) and the .splat.

.ply: binary little-endian float32 vertex properties in the order
    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 [f_rest_0 ...] opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3
with values stored before activation (logit opacity, log scale, raw quaternion w first) and zero normals.
f_rest is channel-major, as 3DGS writes it: f_rest_{c * (K - 1) + k} is coefficient k + 1 of channel c.

.splat (antimatter15): 32 bytes per splat, largest (scale volume x opacity) first: position 3 x float32,
scale 3 x float32 (activated), RGBA 4 x uint8 (colour 0.5 + 0.28209479 f_dc, alpha sigmoid(opacity)),
quaternion 4 x uint8 (q / |q| * 128 + 128, w first).

Positions are in the world frame of docs/DESIGN.md (glTF: y up, front +z), which viewers built for
COLMAP captures (y down) may show upside down.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from render.splat_math import SH_C0

from ..errors import UserError
from ..io import atomic_write

__all__ = ["write_ply", "read_ply", "write_splat"]

_KEYS = ("means", "log_scales", "quats", "opacity_logits", "sh_dc")


def _tensors(field_or_tensors) -> dict[str, np.ndarray]:
    """A GaussianField or a dict with means [N,3], log_scales [N,3], quats [N,4], opacity_logits [N],
    sh_dc [N,3] and optional sh_rest [N,K-1,3] -> float32 numpy arrays."""
    source = field_or_tensors
    if not isinstance(source, dict):
        source = {k: getattr(source, k) for k in (*_KEYS, "sh_rest") if getattr(source, k, None) is not None}
    missing = [k for k in _KEYS if k not in source]
    if missing:
        raise ValueError(f"splat export needs {', '.join(_KEYS)}; missing {', '.join(missing)}")
    out = {k: v.detach().float().cpu().numpy() if torch.is_tensor(v) else np.asarray(v, dtype=np.float32)
           for k, v in source.items() if v is not None}  # a tensor leaves its own device
    n = out["means"].shape[0]
    shapes = {"means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "opacity_logits": (n,), "sh_dc": (n, 3)}
    for k, shape in shapes.items():
        if out[k].shape != shape:
            raise ValueError(f"splat export: {k} must be {list(shape)}, got {list(out[k].shape)}")
    if "sh_rest" in out and (out["sh_rest"].ndim != 3 or out["sh_rest"].shape[0] != n or out["sh_rest"].shape[2] != 3):
        raise ValueError(f"splat export: sh_rest must be [N, K-1, 3], got {list(out['sh_rest'].shape)}")
    return out


def write_ply(path, field_or_tensors) -> Path:
    """Write the standard 3DGS .ply of a GaussianField (or of a dict of its tensors); returns the path."""
    t = _tensors(field_or_tensors)
    n = t["means"].shape[0]
    rest = t.get("sh_rest")
    rest = np.zeros((n, 0), np.float32) if rest is None else rest.transpose(0, 2, 1).reshape(n, -1)  # channel-major
    columns = [t["means"], np.zeros((n, 3), np.float32), t["sh_dc"], rest, t["opacity_logits"][:, None],
               t["log_scales"], t["quats"]]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
             *[f"f_rest_{i}" for i in range(rest.shape[1])], "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    header = ("ply\nformat binary_little_endian 1.0\n" f"element vertex {n}\n"
              + "".join(f"property float {name}\n" for name in names) + "end_header\n")
    body = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype="<f4").tobytes()
    return atomic_write(path, header.encode("ascii") + body)


def read_ply(path) -> dict[str, Tensor]:
    """Read a 3DGS .ply (binary little-endian; float properties in any order) -> dict of float32 tensors:
    means [N,3], log_scales [N,3], quats [N,4], opacity_logits [N], sh_dc [N,3], sh_rest [N,K-1,3] if present."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read '{path}': {exc.strerror or exc}") from None
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise UserError(f"'{path}' is not a PLY file (no 'ply' ... 'end_header' header)")
    lines = raw[:end].decode("ascii", "replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise UserError(f"'{path}' is not a binary little-endian PLY; only that format holds Gaussian splats")
    count, names = None, []
    for line in lines:
        parts = line.split()
        if parts[:2] == ["element", "vertex"]:
            count = int(parts[2])
        elif parts[:1] == ["element"] and count is not None:
            raise UserError(f"'{path}': only a single 'vertex' element is supported")
        elif parts[:1] == ["property"]:
            if parts[1] not in ("float", "float32") or len(parts) != 3:
                raise UserError(f"'{path}': property '{' '.join(parts[1:])}' is not a float; not a 3DGS .ply")
            names.append(parts[2])
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [k for k in need if k not in names]
    if count is None or missing:
        raise UserError(f"'{path}' is not a 3DGS splat file: missing {', '.join(missing) or 'element vertex'}")
    body = raw[end + len(b"end_header\n"):]
    if len(body) < count * 4 * len(names):
        raise UserError(f"'{path}' is truncated: {len(body)} bytes for {count} splats x {len(names)} floats")
    data = np.frombuffer(body, dtype="<f4", count=count * len(names)).reshape(count, len(names))
    col = {name: i for i, name in enumerate(names)}
    pick = lambda keys: torch.from_numpy(np.ascontiguousarray(data[:, [col[k] for k in keys]], dtype=np.float32))
    out = {"means": pick(["x", "y", "z"]), "log_scales": pick(["scale_0", "scale_1", "scale_2"]),
           "quats": pick(["rot_0", "rot_1", "rot_2", "rot_3"]), "opacity_logits": pick(["opacity"])[:, 0],
           "sh_dc": pick(["f_dc_0", "f_dc_1", "f_dc_2"])}
    rest = sorted((k for k in names if k.startswith("f_rest_")), key=lambda k: int(k.split("_")[-1]))
    if rest:
        if len(rest) % 3:
            raise UserError(f"'{path}': {len(rest)} f_rest properties is not a multiple of 3")
        out["sh_rest"] = pick(rest).reshape(count, 3, len(rest) // 3).transpose(1, 2).contiguous()
    return out


def write_splat(path, field_or_tensors) -> Path:
    """Write the antimatter15 .splat (32 bytes per splat, largest first); returns the path."""
    t = _tensors(field_or_tensors)
    scales = np.exp(t["log_scales"])
    opacity = 1.0 / (1.0 + np.exp(-t["opacity_logits"]))
    order = np.argsort(-(scales.prod(-1) * opacity), kind="stable")
    rgba = np.concatenate([0.5 + SH_C0 * t["sh_dc"], opacity[:, None]], 1)[order]
    q = t["quats"][order]
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    record = np.zeros(len(order), dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    record["pos"], record["scale"] = t["means"][order], scales[order]
    record["rgba"] = np.clip(np.round(rgba * 255.0), 0, 255).astype(np.uint8)
    record["rot"] = np.clip(np.round(q * 128.0 + 128.0), 0, 255).astype(np.uint8)
    return atomic_write(path, record.tobytes())
