"""Tetrahedral grids and marching tetrahedra (DMTet, Shen et al. 2021, §3.1), pure functions of tensors.

``tet_grid(resolution)`` cuts the cube [-1, 1]^3 into resolution^3 cells and each cell into six tetrahedra
that share its main diagonal (Freudenthal's triangulation: one tetrahedron per order in which the path
from the cell's low corner to its high corner takes the three axes). Every cell is cut the same way, so
neighbouring cells' faces match and the extracted surface is closed: 32^3 cells give 35,937 vertices and
196,608 tetrahedra. The grid is generated here at run time; no grid file is read.

``marching_tets(vertices, sdf, tets)`` extracts the zero level set of an SDF sampled at the grid's vertices
(negative inside): one vertex on every grid edge whose ends have opposite signs, at the zero of the linear
interpolation along it, shared by every tetrahedron around the edge; one triangle per tetrahedron with one
or three vertices inside, two (a quad) for two inside. Triangles are wound so that their normal points
outward. The surface's vertices are differentiable in ``vertices`` (a deformed grid) and in ``sdf``.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

__all__ = ["tet_grid", "marching_tets", "face_adjacency"]

_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))  # the six edges of a tetrahedron


def tet_grid(resolution: int, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Vertices [(R + 1)^3, 3] spanning [-1, 1]^3 (x fastest) and tetrahedra [6 R^3, 4] (vertex indices)."""
    if resolution < 1:
        raise ValueError(f"tet_grid: resolution must be >= 1, got {resolution}")
    n = resolution + 1
    axis = torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vertices = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    r = torch.arange(resolution, device=device)
    cz, cy, cx = (c.reshape(-1) for c in torch.meshgrid(r, r, r, indexing="ij"))
    stride = torch.tensor([1, n, n * n], device=device)  # index step along x, y, z
    low = cx + n * cy + n * n * cz  # [C] the low corner of each cell
    tets = []
    for order in itertools.permutations(range(3)):
        path = [low]
        for axis_index in order:
            path.append(path[-1] + stride[axis_index])
        tets.append(torch.stack(path, dim=1))  # [C, 4]: low corner, +1 axis, +2 axes, high corner
    return vertices, torch.stack(tets, dim=1).reshape(-1, 4)


def _case_tables(device) -> tuple[Tensor, Tensor]:
    """For each of the 16 inside patterns of a tetrahedron (bit k: vertex k inside): up to two triangles as
    indices into the tetrahedron's six edges [16, 2, 3] (-1: none) and each triangle's count [16]."""
    edge_index = {frozenset(e): k for k, e in enumerate(_EDGES)}
    triangles = torch.full((16, 2, 3), -1, dtype=torch.long)
    count = torch.zeros(16, dtype=torch.long)
    for case in range(16):
        inside = [k for k in range(4) if case >> k & 1]
        outside = [k for k in range(4) if not case >> k & 1]
        if len(inside) in (1, 3):
            lone, rest = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            triangles[case, 0] = torch.tensor([edge_index[frozenset((lone, o))] for o in rest])
            count[case] = 1
        elif len(inside) == 2:
            (a, b), (c, d) = inside, outside
            ring = [edge_index[frozenset(e)] for e in ((a, c), (a, d), (b, d), (b, c))]  # a cycle around the quad
            triangles[case, 0] = torch.tensor(ring[:3])
            triangles[case, 1] = torch.tensor([ring[0], ring[2], ring[3]])
            count[case] = 2
    return triangles.to(device), count.to(device)


def marching_tets(vertices: Tensor, sdf: Tensor, tets: Tensor) -> tuple[Tensor, Tensor]:
    """The surface sdf = 0 of an SDF on a tetrahedral grid: vertices [N, 3], sdf [N] (negative inside), tets
    [T, 4] -> (mesh vertices [M, 3], faces [K, 3] long), outward winding; empty tensors when no tetrahedron
    crosses the surface. Differentiable in ``vertices`` and ``sdf``."""
    if vertices.dim() != 2 or vertices.shape[1] != 3 or sdf.shape != vertices.shape[:1]:
        raise ValueError(f"marching_tets: vertices must be [N, 3] and sdf [N], got {tuple(vertices.shape)} "
                         f"and {tuple(sdf.shape)}")
    inside = sdf < 0
    code = (inside[tets].long() << torch.arange(4, device=tets.device)).sum(1)  # [T]
    crossing = (code > 0) & (code < 15)
    tets, code = tets[crossing], code[crossing]
    if len(tets) == 0:
        return vertices.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=vertices.device)
    ends = tets[:, torch.tensor(_EDGES, device=tets.device)]  # [T, 6, 2] global vertex ids of each edge
    ends = torch.sort(ends, dim=-1).values
    key = ends[..., 0] * len(vertices) + ends[..., 1]  # one id per grid edge
    cut = inside[ends[..., 0]] != inside[ends[..., 1]]  # [T, 6]
    unique, slot = torch.unique(key[cut], return_inverse=True)
    index = torch.full(key.shape, -1, dtype=torch.long, device=key.device)
    index[cut] = slot  # [T, 6]: the surface vertex on each cut edge
    i, j = unique // len(vertices), unique % len(vertices)
    si, sj = sdf[i], sdf[j]
    w = (si / (si - sj))[:, None]  # the zero of the linear interpolation from i to j
    points = vertices[i] + w * (vertices[j] - vertices[i])
    table, count = _case_tables(tets.device)
    tri_edges = table[code]  # [T, 2, 3]
    used = torch.arange(2, device=tets.device)[None] < count[code][:, None]  # [T, 2]
    owner = torch.arange(len(tets), device=tets.device)[:, None].expand(-1, 2)[used]
    faces = index[owner[:, None], tri_edges[used]]  # [K, 3]
    # outward: the normal points away from the tetrahedron's inside vertices. Judged on the triangle through the
    # cut edges' midpoints, which has the same orientation as the surface's triangle (the cut points only slide
    # along those edges) and never degenerates, also where the SDF is exactly 0 at a grid vertex
    with torch.no_grad():
        corners = vertices[tets[owner]]  # [K, 4, 3]
        pairs = torch.tensor(_EDGES, device=tets.device)[tri_edges[used]]  # [K, 3, 2] tet-local vertex pairs
        mid = 0.5 * (corners.gather(1, pairs[..., 0, None].expand(-1, -1, 3))
                     + corners.gather(1, pairs[..., 1, None].expand(-1, -1, 3)))  # [K, 3, 3]
        normal = torch.linalg.cross(mid[:, 1] - mid[:, 0], mid[:, 2] - mid[:, 0])
        tet_inside = inside[tets[owner]].to(vertices.dtype)  # [K, 4]
        centre_in = (corners * tet_inside[..., None]).sum(1) / tet_inside.sum(1, keepdim=True)
        flip = (normal * (mid.mean(1) - centre_in)).sum(-1) < 0
    faces = torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
    return points, faces


def face_adjacency(faces: Tensor) -> Tensor:
    """[F, 3]: the face across edge k (the edge opposite vertex k) of each face of a triangle mesh, -1 on a
    boundary (an edge of one face). The rasterizer walks it to silhouettes; the DMTet field pairs normals by it."""
    n_faces = faces.shape[0]
    edges = torch.stack([faces[:, [1, 2]], faces[:, [2, 0]], faces[:, [0, 1]]], dim=1).reshape(-1, 2)
    edges = torch.sort(edges, dim=1).values
    key = edges[:, 0] * (int(faces.max()) + 1) + edges[:, 1]
    order = torch.argsort(key, stable=True)
    same = key[order][1:] == key[order][:-1]  # consecutive equal keys: the two sides of one edge
    adjacent = torch.full((3 * n_faces,), -1, dtype=torch.long, device=faces.device)
    first, second = order[:-1][same], order[1:][same]
    adjacent[first], adjacent[second] = second // 3, first // 3
    return adjacent.view(n_faces, 3)
