"""Colour for an extracted mesh: per-vertex albedo, or a UV atlas (xatlas) with a baked albedo texture.

`albedo_fn(points [M, 3] float32 tensor) -> [M, 3]` in [0, 1] is any callable (e.g.
`lambda p: field(p)["albedo"]`); nothing here knows about field classes. Points go to `albedo_fn` on the
`device` the caller names (the field's, `field_device(field)`): there is no default device.

UV convention (OBJ): `uv = (u, v)` in [0, 1], v = 0 at the *bottom* of the image. The texture array is
stored row 0 = top, so texel (row, col) has its centre at `u = (col + 0.5) / W`, `v = 1 - (row + 0.5) / H`.
`write_obj` writes these uv as is; glTF has v = 0 at the top and `write_glb` leaves the flip to trimesh,
which writes `1 - v` (checked by tests/test_export.py reading the raw TEXCOORD_0 accessor).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

__all__ = ["vertex_colors", "unwrap", "bake_albedo", "bake_texture"]

_MAX_CANDIDATES = 1 << 20  # texel candidates tested per rasterisation chunk (~150 MB of temporaries)


@torch.no_grad()
def _query(albedo_fn: Callable[[torch.Tensor], torch.Tensor], points: np.ndarray, chunk: int,
           device: str | torch.device) -> np.ndarray:
    """albedo_fn over points [M, 3] in chunks -> float32 [M, 3] clipped to [0, 1]."""
    out = np.empty((len(points), 3), dtype=np.float32)
    for start in range(0, len(points), chunk):
        pts = torch.from_numpy(np.array(points[start:start + chunk], dtype=np.float32)).to(device)  # a writable copy
        rgb = albedo_fn(pts)
        if tuple(rgb.shape) != (len(pts), 3):
            raise ValueError(f"albedo_fn returned shape {tuple(rgb.shape)} for {len(pts)} points; expected [{len(pts)}, 3]")
        out[start:start + chunk] = rgb.detach().float().cpu().numpy()
    return np.clip(out, 0.0, 1.0)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def vertex_colors(vertices: np.ndarray, albedo_fn: Callable[[torch.Tensor], torch.Tensor],
                  chunk: int = 65536, *, device: str | torch.device) -> np.ndarray:
    """Albedo at each vertex -> uint8 [V, 3] (round(255 * clip(albedo, 0, 1)))."""
    vertices = np.asarray(vertices)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertex_colors expects vertices [V, 3], got {vertices.shape}")
    return _to_uint8(_query(albedo_fn, vertices, chunk, device))


def _unwrap(vertices: np.ndarray, faces: np.ndarray, size: int, padding: int):
    """xatlas charts packed for a size x size atlas -> (vmapping [V'], faces' [F, 3], uv [V', 2])."""
    import xatlas

    # xatlas ignores faces with area below FLT_EPSILON (absolute) and leaves their uv at 0; marching
    # cubes makes many slivers that small at unit scale. The unwrap is scale-free, so work at ~1000 units.
    centre = 0.5 * (vertices.min(axis=0) + vertices.max(axis=0))
    scale = 1000.0 / max(float(np.ptp(vertices, axis=0).max()), 1e-12)
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray((vertices - centre) * scale, dtype=np.float32),
                   np.ascontiguousarray(faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = int(padding) + 1  # texels between charts: room for the conservative edge + dilation
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:  # should not happen with texels_per_unit chosen by xatlas
        raise RuntimeError(f"xatlas packed the charts into {atlas.atlas_count} atlases; expected 1")
    vmapping, indices, uv = atlas[0]  # uv normalised to [0, 1] by the atlas width / height
    return vmapping.astype(np.int64), indices.astype(np.int64), uv.astype(np.float32)


def _rasterize(tri: np.ndarray, height: int, width: int):
    """Triangles in pixel coordinates [F, 3, 2] (x right, y down, texel (row, col) spans
    [col, col + 1] x [row, row + 1]) -> (face id [H, W] int64, -1 where uncovered; barycentric weights
    [H, W, 3] float32 of a point on that triangle).

    Conservative: every texel whose square overlaps a triangle is covered (separating-axis test), so
    the texel under any vertex's uv belongs to a triangle of that vertex's chart. A texel whose centre
    lies inside a triangle takes that triangle; otherwise a triangle that only grazes it, with the
    barycentric weights of its centre clamped to the triangle. Vectorised over the candidate texels of
    the triangles' bounding boxes, in chunks of triangles.
    """
    face_id = np.full((height, width), -1, dtype=np.int64)
    bary = np.zeros((height, width, 3), dtype=np.float32)
    priority = np.zeros((height, width), dtype=np.int8)  # 0 empty, 1 grazed, 2 centre inside
    lo = np.maximum(np.floor(tri.min(axis=1)).astype(np.int64), 0)
    hi = np.minimum(np.ceil(tri.max(axis=1)).astype(np.int64) - 1, [width - 1, height - 1])
    extent = np.maximum(hi - lo + 1, 0)  # [F, 2] (nx, ny) texels whose squares meet the bounding box
    count = extent[:, 0] * extent[:, 1]
    cum = np.cumsum(count)
    start = 0
    while start < len(tri):
        # Chunk: as many triangles as fit in _MAX_CANDIDATES texel candidates (at least one).
        base = cum[start - 1] if start else 0
        stop = max(int(np.searchsorted(cum, base + _MAX_CANDIDATES, side="right")), start + 1)
        ids = np.arange(start, stop)
        n = count[ids]
        owner = np.repeat(ids, n)                                     # triangle of each candidate
        offset = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)  # index inside its bbox
        nx = np.maximum(extent[owner, 0], 1)
        px = lo[owner, 0] + offset % nx
        py = lo[owner, 1] + offset // nx
        cx, cy = px + 0.5, py + 0.5
        a, b, c = tri[owner, 0], tri[owner, 1], tri[owner, 2]        # [K, 2]
        area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        sign = np.where(area < 0, -1.0, 1.0)
        # Edge function of edge (p, q) at the texel centre, positive inside whatever the winding;
        # the square of half-side 0.5 meets the half-plane iff e + 0.5 (|dx| + |dy|) >= 0.
        e, reach = [], []
        for p, q in ((b, c), (c, a), (a, b)):
            dx, dy = q[:, 0] - p[:, 0], q[:, 1] - p[:, 1]
            e.append(sign * (dx * (cy - p[:, 1]) - dy * (cx - p[:, 0])))
            reach.append(0.5 * (np.abs(dx) + np.abs(dy)))
        e, reach = np.stack(e, axis=1), np.stack(reach, axis=1)       # [K, 3]
        valid = area != 0
        overlap = valid & (e + reach >= 0).all(axis=1)
        inside = valid & (e >= 0).all(axis=1)
        w = np.clip(e / np.where(valid, np.abs(area), 1.0)[:, None], 0.0, None)  # barycentrics, clamped
        w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
        for level, mask in ((1, overlap & ~inside), (2, inside)):
            mask = mask & (priority[py, px] <= level)
            face_id[py[mask], px[mask]] = owner[mask]
            bary[py[mask], px[mask]] = w[mask]
            priority[py[mask], px[mask]] = level
        start = stop
    return face_id, bary


def _dilate(rgb: np.ndarray, filled: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Grow the filled region `steps` texels: an empty texel takes the mean of its filled 8-neighbours."""
    rgb, filled = rgb.copy(), filled.copy()
    h, w = filled.shape
    for _ in range(steps):
        pad_rgb = np.pad(rgb * filled[..., None], ((1, 1), (1, 1), (0, 0)))
        pad_f = np.pad(filled.astype(np.float32), 1)
        total = np.zeros_like(rgb)
        n = np.zeros(filled.shape, dtype=np.float32)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == 0 and dx == 0:
                    continue
                total += pad_rgb[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                n += pad_f[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        grow = ~filled & (n > 0)
        if not grow.any():
            break
        rgb[grow] = total[grow] / n[grow, None]
        filled = filled | grow
    return rgb, filled


def unwrap(vertices: np.ndarray, faces: np.ndarray, size: int = 1024,
           padding: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UV atlas of a mesh (xatlas) for a size x size texture -> (vertices' [V', 3] float32, faces' [F, 3]
    int64, uv [V', 2] float32, OBJ convention). Vertices are duplicated along UV seams."""
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"unwrap expects vertices [V, 3] and faces [F, 3], got {vertices.shape} and {faces.shape}")
    vmapping, faces2, uv = _unwrap(vertices, faces, size, padding)
    return vertices[vmapping], faces2, uv


def bake_albedo(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray,
                albedo_fn: Callable[[torch.Tensor], torch.Tensor], size: int = 1024, padding: int = 2,
                chunk: int = 65536, *, device: str | torch.device) -> np.ndarray:
    """Albedo of an unwrapped mesh baked into its texture -> uint8 [size, size, 3] (row 0 = top).

    Each texel that a triangle's UV image overlaps gets the albedo at the matching 3D point (see
    `_rasterize`); filled texels are then dilated `padding` texels outward so that bilinear / mip-mapped
    lookups at chart borders do not pick up the background, which is set to the mean albedo.
    """
    vertices = np.asarray(vertices, dtype=np.float32)
    pix = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=1).astype(np.float64)  # x right, y down
    face_id, bary = _rasterize(pix[faces], size, size)
    filled = face_id >= 0
    corners = vertices[faces[face_id[filled]]]                        # [K, 3, 3]
    points = np.einsum("kj,kjc->kc", bary[filled], corners)            # 3D point of each texel
    rgb = np.zeros((size, size, 3), dtype=np.float32)
    rgb[filled] = _query(albedo_fn, points, chunk, device)
    rgb, grown = _dilate(rgb, filled, padding)
    if filled.any():
        rgb[~grown] = rgb[filled].mean(axis=0)
    return _to_uint8(rgb)


def bake_texture(vertices: np.ndarray, faces: np.ndarray, albedo_fn: Callable[[torch.Tensor], torch.Tensor],
                 size: int = 1024, padding: int = 2, chunk: int = 65536, *,
                 device: str | torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`unwrap` then `bake_albedo`: (vertices' [V', 3] float32, faces' [F, 3] int64, uv [V', 2] float32 (OBJ
    convention, v = 0 at the bottom), texture uint8 [size, size, 3] (row 0 = top))."""
    vertices2, faces2, uv = unwrap(vertices, faces, size, padding)
    return vertices2, faces2, uv, bake_albedo(vertices2, faces2, uv, albedo_fn, size, padding, chunk, device=device)
