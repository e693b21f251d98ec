"""Measurements of an exported asset against a known object: volumetric IoU and mean surface albedo."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["grid_points", "mesh_occupancy", "volumetric_iou", "mean_surface_albedo", "prior_scores"]

_JITTER = (1.234567e-5, 2.345678e-5)  # keeps query columns off triangle edges (no double counting)


def grid_points(resolution: int, bound: float) -> np.ndarray:
    """Cell centres [R^3, 3] of a regular grid over [-bound, bound]^3, x slowest, z fastest."""
    c = (np.arange(resolution) + 0.5) / resolution * 2 * bound - bound
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)


def mesh_occupancy(vertices: np.ndarray, faces: np.ndarray, resolution: int, bound: float) -> np.ndarray:
    """Inside test [R,R,R] bool (x, y, z indexing) of a closed mesh on the grid of `grid_points`.

    A vertical ray from each cell centre toward +y crosses the surface an odd number of times iff the
    centre is inside: every triangle is intersected with the columns its xz footprint covers.
    """
    R, h = resolution, 2 * bound / resolution
    tri = vertices[faces].astype(np.float64)  # [F,3,3]
    tri[..., 0] -= _JITTER[0]
    tri[..., 2] -= _JITTER[1]
    col = lambda v: (v + bound) / h - 0.5  # world -> column index (fractional)
    lo = np.clip(np.ceil(col(tri[..., [0, 2]].min(1))), 0, R - 1).astype(int)  # [F,2]
    hi = np.clip(np.floor(col(tri[..., [0, 2]].max(1))), 0, R - 1).astype(int)
    keep = (hi >= lo).all(1)
    tri, lo, hi = tri[keep], lo[keep], hi[keep]
    span = int((hi - lo).max()) + 1 if len(tri) else 0
    hits_col, hits_y = [], []
    for ox in range(span):
        for oz in range(span):
            ix, iz = lo[:, 0] + ox, lo[:, 1] + oz
            m = (ix <= hi[:, 0]) & (iz <= hi[:, 1])
            t, px, pz = tri[m], (ix[m] + 0.5) * h - bound, (iz[m] + 0.5) * h - bound
            a, b, c = t[:, 0], t[:, 1], t[:, 2]
            # barycentric coordinates of (px, pz) in the triangle's xz projection
            d = (b[:, 0] - a[:, 0]) * (c[:, 2] - a[:, 2]) - (c[:, 0] - a[:, 0]) * (b[:, 2] - a[:, 2])
            ok = np.abs(d) > 1e-18
            d = np.where(ok, d, 1.0)
            u = ((b[:, 0] - px) * (c[:, 2] - pz) - (c[:, 0] - px) * (b[:, 2] - pz)) / d
            v = ((c[:, 0] - px) * (a[:, 2] - pz) - (a[:, 0] - px) * (c[:, 2] - pz)) / d
            w = 1 - u - v
            inside = ok & (u >= 0) & (v >= 0) & (w >= 0)
            hits_col.append((ix[m] * R + iz[m])[inside])
            hits_y.append((u * a[:, 1] + v * b[:, 1] + w * c[:, 1])[inside])
    occ = np.zeros((R, R, R), dtype=bool)
    if not hits_col:
        return occ
    cols, ys = np.concatenate(hits_col), np.concatenate(hits_y)
    key = np.sort(cols * 4.0 * (bound + 1) + ys)  # columns never overlap: |y| <= bound
    centres = (np.arange(R) + 0.5) * h - bound
    colid = np.arange(R * R)[:, None] * 4.0 * (bound + 1)
    above = np.searchsorted(key, colid + bound + 1, side="left") - np.searchsorted(key, colid + centres[None], side="right")
    occ = (above % 2 == 1).reshape(R, R, R)  # [x, z, y]
    return occ.transpose(0, 2, 1)


def volumetric_iou(vertices: np.ndarray, faces: np.ndarray, inside_fn, resolution: int = 96,
                   bound: float = 1.0) -> float:
    """IoU of the mesh's interior and the reference inside_fn(points [M,3] torch) -> bool [M] on a grid."""
    pred = mesh_occupancy(vertices, faces, resolution, bound).reshape(-1)
    gt = inside_fn(torch.from_numpy(grid_points(resolution, bound)).float()).numpy()
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 0.0


def mean_surface_albedo(mesh) -> np.ndarray:
    """Area-weighted mean colour [3] in [0,1] of a trimesh mesh with texture or vertex colours (a .glb's
    COLOR_0 beside a material comes back from trimesh as the vertex attribute 'color')."""
    attributes = getattr(mesh.visual, "vertex_attributes", {})
    if "color" in attributes:
        colors = np.asarray(attributes["color"])[:, :3].astype(np.float64) / 255.0
    else:
        visual = mesh.visual.to_color() if hasattr(mesh.visual, "to_color") else mesh.visual  # texture -> vertex
        colors = visual.vertex_colors[:, :3].astype(np.float64) / 255.0
    face_colors = colors[mesh.faces].mean(1)
    area = mesh.area_faces
    return (face_colors * area[:, None]).sum(0) / area.sum()


def prior_scores(glb_path, prompt: str, resolution: int = 96) -> dict[str, float]:
    """A mesh made under the embedded prior against the prompt's known object: volumetric IoU with the analytic
    primitive and the largest per-channel error of the mean surface albedo against its colour."""
    import trimesh

    from .guidance.primitives import COLOURS, inside, parse_prompt

    shape, colour = parse_prompt(prompt)
    scene = trimesh.load(glb_path)  # a Scene keeps the vertex colours that force="mesh" would drop
    mesh = scene if isinstance(scene, trimesh.Trimesh) else next(iter(scene.geometry.values()))
    iou = volumetric_iou(np.asarray(mesh.vertices), np.asarray(mesh.faces), lambda p: inside(shape, p), resolution)
    albedo = mean_surface_albedo(mesh)
    return {"iou": iou, "albedo_err": float(np.abs(albedo - np.array(COLOURS[colour])).max()),
            "albedo_r": float(albedo[0]), "albedo_g": float(albedo[1]), "albedo_b": float(albedo[2])}
