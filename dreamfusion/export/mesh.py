"""Mesh extraction from a density field: sample a grid, pick a level, marching cubes, clean up.

Works on a plain callable `density_fn(points [M, 3] float32 tensor) -> density [M]`, so it knows
nothing about field classes (`field.density` is such a callable).

Grid convention: the grid is sampled at its *vertices*, which span exactly `[-bound, bound]` on every
axis: `grid[i, j, k]` is the density at `(x_i, y_j, z_k)` with `x_i = -bound + i * h`,
`h = 2 * bound / (R - 1)` (axis 0 = x, 1 = y, 2 = z, the world frame of docs/DESIGN.md). Marching
cubes works in index units, so a mesh vertex at index coordinates `p` is at `-bound + p * h` in the world.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from dreamfusion.errors import UserError

__all__ = ["density_grid", "optical_depth", "surface_level", "extract_mesh", "clean_mesh", "decimate"]

_LOG_EPS = 1e-6  # offset of the log of densities: densities are >= 0


def _grid_axis(bound: float, resolution: int) -> np.ndarray:
    return np.linspace(-bound, bound, resolution, dtype=np.float64)


@torch.no_grad()
def density_grid(density_fn: Callable[[torch.Tensor], torch.Tensor], bound: float, resolution: int,
                 chunk: int = 65536, *, device: str | torch.device) -> np.ndarray:
    """Density at the R^3 grid vertices spanning exactly [-bound, bound]^3 -> float32 [R, R, R].

    `grid[i, j, k]` is the density at `(x_i, y_j, z_k)`, `x_i = -bound + i * 2 bound / (R - 1)`.
    Points are passed to `density_fn` as float32 tensors [M, 3] on `device` (the field's: `field_device(field)`,
    no default: a CPU default once fed CUDA fields CPU points), M <= chunk.
    """
    if resolution < 2:
        raise ValueError(f"density_grid needs resolution >= 2, got {resolution}")
    axis = torch.from_numpy(_grid_axis(bound, resolution).astype(np.float32)).to(device)
    r = resolution
    n = r ** 3
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk):  # C order: flat index = (i * R + j) * R + k
        stop = min(start + chunk, n)
        idx = torch.arange(start, stop, device=axis.device)
        pts = torch.stack([axis[idx // (r * r)], axis[(idx // r) % r], axis[idx % r]], dim=1)  # [M, 3]
        sigma = density_fn(pts)
        if tuple(sigma.shape) not in ((stop - start,), (stop - start, 1)):
            raise ValueError(f"density_fn returned shape {tuple(sigma.shape)} for {stop - start} points; "
                             f"expected [{stop - start}]")
        out[start:stop] = sigma.detach().reshape(-1).float().cpu().numpy()
    return out.reshape(r, r, r)


def optical_depth(grid: np.ndarray, spacing: float) -> np.ndarray:
    """Optical depth [R,R,R] of each grid point seen from outside: the smallest, over the six axis
    directions, of the integral of density from the box face to the point (trapezoid rule).

    A renderer shows the surface where a ray's transmittance exp(-optical depth) drops through a level, so
    an iso-surface of this field follows what the views show, whatever the scale of the densities, and a
    faint fog (small integral) is carved away instead of becoming part of the mesh.
    """
    g = np.asarray(grid, dtype=np.float64)
    tau = np.full(g.shape, np.inf)
    for axis in range(3):
        for flip in (False, True):
            d = np.flip(g, axis) if flip else g
            acc = (np.cumsum(d, axis=axis) - 0.5 * d - 0.5 * np.take(d, [0], axis=axis)) * spacing
            tau = np.minimum(tau, np.flip(acc, axis) if flip else acc)
    return tau


def _empty_error(grid: np.ndarray, threshold: float, bound: float) -> UserError:
    top = float(grid.max())
    if top > 0.0 and float(grid.min()) < top:
        hint = f"try export.threshold=<lower>, e.g. export.threshold={0.5 * top:.3g}"
    else:
        hint = "the density is constant over the grid, so there is no surface; try export.threshold=<lower> or train longer"
    return UserError(f"the field is empty at threshold {threshold:.4g}: the largest density in "
                     f"[-{bound:g}, {bound:g}]^3 is {top:.4g}; {hint}")


def _keep_large_components(vertices: np.ndarray, faces: np.ndarray, min_ratio: float):
    """Drop connected pieces with fewer faces than min_ratio * (faces of the largest piece)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nv = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]], axis=0)
    adj = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(nv, nv))
    _, labels = connected_components(adj, directed=False)
    face_label = labels[faces[:, 0]]
    counts = np.bincount(face_label)
    keep_label = counts >= min_ratio * counts.max()
    return _compact(vertices, faces[keep_label[face_label]])


def _compact(vertices: np.ndarray, faces: np.ndarray):
    """Remove vertices no face uses; re-index faces."""
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    return vertices[used], remap[faces]


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Sum of signed tetrahedron volumes (origin, a, b, c); positive when normals point outward."""
    v = vertices.astype(np.float64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def decimate(vertices: np.ndarray, faces: np.ndarray, target: int,
             option: str = "export.decimate_faces") -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation (fast-simplification) to about `target` faces, outward winding kept ->
    (vertices float32, faces int64). A mesh with at most `target` faces comes back as it is. `option` is
    the config key named in the error when the package is missing."""
    if target <= 0 or len(faces) <= target:
        return vertices, faces
    try:
        import fast_simplification  # noqa: F401  (trimesh's decimation wraps it)
    except ImportError:
        raise UserError(f"{option} needs the fast-simplification package: "
                        f"pip install fast-simplification (or set {option}=0)") from None
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    simple = mesh.simplify_quadric_decimation(face_count=int(target))
    verts, faces = np.asarray(simple.vertices, dtype=np.float32), np.asarray(simple.faces, dtype=np.int64)
    if _signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1].copy()
    return verts, faces


def surface_level(grid: np.ndarray, spacing: float, bound: float, threshold: float | None = None,
                  auto_optical_depth: float = 0.3) -> tuple[np.ndarray, float]:
    """(values [R,R,R], level): the exported surface is ``values == level`` on the density grid of
    ``density_grid`` (vertex spacing ``spacing``). threshold None -> the optical depth seen from outside at
    ``auto_optical_depth``; else log density at log ``threshold``. A UserError when the field is empty there or
    the threshold is not positive. The refine stage's conversion reads the same level (refine/convert.py)."""
    if threshold is not None and threshold <= 0:
        raise UserError(f"export.threshold must be a density > 0 (or null for automatic), got {threshold}")
    if threshold is None:
        values, level = optical_depth(grid, spacing), float(auto_optical_depth)
        if not (values > level).any():
            raise UserError(f"the field is empty at threshold auto (no point lies behind optical depth {level:g}; "
                            f"largest density {grid.max():.4g}): train longer or set export.threshold=<density>")
        return values, level
    if not (grid > threshold).any():
        raise _empty_error(grid, float(threshold), bound)
    # Marching cubes runs on log(density + 1e-6) at log(level + 1e-6): the same level set (log is monotonic), but
    # the linear interpolation along cell edges is far more accurate for densities that grow exponentially across
    # the surface (exp / softplus activations), as fields' do.
    return np.log(grid.astype(np.float64) + _LOG_EPS), float(np.log(float(threshold) + _LOG_EPS))


def extract_mesh(density_fn: Callable[[torch.Tensor], torch.Tensor], bound: float, resolution: int,
                 threshold: float | None = None, min_component_ratio: float = 0.05,
                 decimate_faces: int = 0, auto_optical_depth: float = 0.3, chunk: int = 65536, *,
                 device: str | torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Surface `density == threshold` of a field -> (vertices [V, 3] float32 world, faces [F, 3] int64).

    threshold None -> automatic: the iso-surface where `optical_depth` reaches `auto_optical_depth`. The grid is padded by one empty layer before
    marching cubes, so the mesh is closed even where the object touches the box (those vertices are
    clamped onto the box faces). Triangles wind counter-clockwise seen from outside (signed volume > 0),
    the glTF / OBJ front-face convention. Pieces with fewer faces than `min_component_ratio` times the
    largest piece are dropped (floaters); `decimate_faces > 0` then simplifies to about that many faces.
    `density_fn` must return densities >= 0 (activated, as `Field.density` does). Raises UserError
    when nothing in the grid exceeds the threshold, the threshold is not positive, or the grid holds
    NaN / inf (a diverged checkpoint). `device`: where `density_fn` takes its points (the field's device).
    """
    from skimage.measure import marching_cubes

    grid = density_grid(density_fn, bound, resolution, chunk=chunk, device=device)
    bad = int((~np.isfinite(grid)).sum())
    if bad:
        raise UserError(f"the field's density is NaN or infinite at {bad} of {grid.size} grid points: the "
                        f"checkpoint has diverged; export an earlier one or retrain with a lower learning rate")
    if grid.min() < 0:
        raise ValueError(f"density_fn returned negative densities (min {grid.min():.4g}); densities are >= 0")
    h = 2.0 * bound / (resolution - 1)
    values, level = surface_level(grid, h, bound, threshold, auto_optical_depth)
    # Pad with a value far below the level: the crossing on a padded edge sits on the last real vertex.
    far_below = level - 1e6 * max(float(values.max()) - level, 1.0)
    padded = np.pad(values, 1, mode="constant", constant_values=far_below)
    verts, faces, _, _ = marching_cubes(padded, level=level, gradient_direction="descent",
                                        allow_degenerate=False)
    verts = np.clip((verts - 1.0) * h - bound, -bound, bound)  # index units (minus the pad) -> world
    faces = faces.astype(np.int64)

    # skimage's winding depends on the gradient convention; make it outward by the oracle itself.
    if _signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1].copy()
    return clean_mesh(verts, faces, min_component_ratio, decimate_faces)


def clean_mesh(vertices: np.ndarray, faces: np.ndarray, min_component_ratio: float = 0.0,
               decimate_faces: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An outward surface as exported: components under ``min_component_ratio`` of the largest one's faces dropped,
    then decimated to ``decimate_faces`` (0: kept); float32 vertices, int64 faces."""
    if min_component_ratio > 0:
        vertices, faces = _keep_large_components(vertices, faces, min_component_ratio)
    vertices, faces = decimate(vertices, faces, decimate_faces)
    return vertices.astype(np.float32), np.ascontiguousarray(faces, dtype=np.int64)
