"""render/tets.py against its oracles: the grid's counts and conformity, marching tetrahedra of the embedded
prior's five primitives (analytic SDFs) against the shapes themselves (IoU, closed, outward, volume), the
linear zero crossing in closed form, and gradients through the SDF and the deformation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from dreamfusion.world.primitives import SHAPES, inside, sdf
from dreamfusion.world.scores import volumetric_iou
from render.tets import marching_tets, tet_grid


def test_grid_counts_and_volume():
    vertices, tets = tet_grid(32)
    assert vertices.shape == (35937, 3) and tets.shape == (196608, 4)  # 33^3 and 6 * 32^3
    assert float(vertices.min()) == -1.0 and float(vertices.max()) == 1.0
    a, b, c, d = (vertices[tets[:, k]].double() for k in range(4))
    volume = torch.linalg.det(torch.stack([b - a, c - a, d - a], dim=1)).abs() / 6
    assert torch.allclose(volume, torch.full_like(volume, (2 / 32) ** 3 / 6))  # six equal tetrahedra a cell
    assert abs(float(volume.sum()) - 8.0) < 1e-9  # they fill the cube


def test_grid_is_conforming():
    """Every triangle of the tetrahedra is shared by two tetrahedra, except on the cube's boundary."""
    vertices, tets = tet_grid(3)
    faces = torch.cat([tets[:, [0, 1, 2]], tets[:, [0, 1, 3]], tets[:, [0, 2, 3]], tets[:, [1, 2, 3]]])
    _, counts = torch.unique(torch.sort(faces, dim=1).values, dim=0, return_counts=True)
    boundary = 6 * 3 * 3 * 2  # two triangles per boundary square
    assert int((counts == 1).sum()) == boundary and int((counts == 2).sum()) == (len(faces) - boundary) // 2
    assert int(counts.max()) == 2


def _mesh(points, faces):
    return trimesh.Trimesh(points.detach().numpy(), faces.numpy(), process=False)


@pytest.mark.parametrize("shape", SHAPES)
def test_primitives_are_recovered(shape):
    vertices, tets = tet_grid(32)
    points, faces = marching_tets(vertices, sdf(shape, vertices), tets)
    mesh = _mesh(points, faces)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward winding
    iou = volumetric_iou(mesh.vertices, mesh.faces, lambda p: inside(shape, p), 96)
    assert iou >= 0.97, f"{shape}: IoU {iou:.4f}"


def test_zero_crossing_closed_form_and_gradients():
    """One tetrahedron, vertex 0 inside: the three surface points lie at s0 / (s0 - sk) along edges 0-k, and
    their gradients with respect to the SDF values and the vertex positions are that formula's."""
    vertices = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64, requires_grad=True)
    values = torch.tensor([-0.25, 0.75, 0.25, 1.75], dtype=torch.float64, requires_grad=True)
    tets = torch.tensor([[0, 1, 2, 3]])
    points, faces = marching_tets(vertices, values, tets)
    assert faces.shape == (1, 3) and points.shape == (3, 3)
    expected = sorted([0.25 / (0.25 + s) for s in (0.75, 0.25, 1.75)])
    assert np.allclose(sorted(points.detach().sum(1).tolist()), expected)  # each point on one axis
    normal = torch.linalg.cross(points[faces[0, 1]] - points[faces[0, 0]], points[faces[0, 2]] - points[faces[0, 0]])
    assert float((normal.detach() * torch.ones(3, dtype=torch.float64)).sum()) > 0  # away from vertex 0
    assert torch.autograd.gradcheck(lambda v, s: marching_tets(v, s, tets)[0], (vertices, values))


def test_no_surface_gives_empty_mesh_and_shapes_are_checked():
    vertices, tets = tet_grid(2)
    points, faces = marching_tets(vertices, torch.ones(len(vertices)), tets)
    assert points.shape == (0, 3) and faces.shape == (0, 3)
    with pytest.raises(ValueError, match=r"sdf \[N\]"):
        marching_tets(vertices, torch.ones(3), tets)


def test_face_adjacency_of_an_octahedron_and_a_sheet():
    """Each face of a closed octahedron has three neighbours, each across the edge opposite the right vertex and
    pointing back; a lone triangle has none."""
    from render.tets import face_adjacency

    faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    across = face_adjacency(faces)
    for f in range(len(faces)):
        for k in range(3):
            g = int(across[f, k])
            edge = {int(faces[f, (k + 1) % 3]), int(faces[f, (k + 2) % 3])}
            assert edge <= set(faces[g].tolist()) and g != f
            assert f in across[g].tolist()
    assert face_adjacency(torch.tensor([[0, 1, 2]])).tolist() == [[-1, -1, -1]]
