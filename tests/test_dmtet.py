"""The DMTet surface field and its mesh renderer: the regularisers' closed forms, a sphere's silhouette against
the analytic disc, the coverage's gradient against a finite difference, the SDF read by volumetric callers."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from dreamfusion.fields.config import DMTetConfig, FieldConfig
from dreamfusion.fields.dmtet import DMTetField, laplacian, normal_consistency
from dreamfusion.renderer.mesh import render_mesh, vertex_normals
from render.cameras import look_at, Cameras


def _field(resolution=24, radius=0.5):
    base = FieldConfig()
    cfg = replace(base, hidden_dim=16, hashgrid=replace(base.hashgrid, n_levels=4, log2_hashmap_size=12),
                  dmtet=DMTetConfig(resolution=resolution, max_deform=0.5, init_radius=radius))
    torch.manual_seed(0)
    return DMTetField(cfg)


def _cameras(distance=2.0, fovy=0.8, n=1):
    eye = torch.tensor([[0.3, 0.4, distance]])
    eye = eye / eye.norm(dim=-1, keepdim=True) * distance
    c2w = look_at(eye.expand(n, 3))
    return Cameras(c2w, torch.full((n,), fovy), torch.zeros(n), torch.zeros(n), torch.full((n,), distance))


def test_normal_consistency_closed_forms():
    flat = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    assert float(normal_consistency(flat, faces)) == 0.0
    folded = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 1]])  # the second face folded up along the diagonal
    n1 = torch.tensor([0.0, 0, 1])
    n2 = torch.linalg.cross(folded[2] - folded[0], folded[3] - folded[0])
    expected = 1 - float((n1 * n2).sum() / n2.norm())
    assert abs(float(normal_consistency(folded, faces)) - expected) < 1e-6
    assert expected > 0.1
    # edge-preserving (field.dmtet.normal_edge = c): c x / (x + c), below c for the sharp fold, ~x for a slight one
    for c in (0.02, 0.5):
        assert abs(float(normal_consistency(folded, faces, edge=c)) - c * expected / (expected + c)) < 1e-6
    slight = folded.clone()
    slight[3, 2] = 0.01
    x = float(normal_consistency(slight, faces))
    assert abs(float(normal_consistency(slight, faces, edge=0.5)) - x) < 0.01 * x and 0 < x < 1e-3


def test_laplacian_of_an_octahedron():
    """Each vertex of the unit octahedron has four neighbours whose mean is the origin: offset -v, |v|^2 = 1."""
    vertices = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    assert abs(float(laplacian(vertices, faces)) - 1.0) < 1e-6
    assert abs(float(laplacian(vertices * 2, faces)) - 4.0) < 1e-6


def test_vertex_normals_of_an_octahedron_point_outward():
    vertices = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    assert torch.allclose(vertex_normals(vertices, faces), vertices, atol=1e-6)


def test_sphere_silhouette_matches_the_disc():
    field = _field(resolution=32, radius=0.5)
    size, distance, fovy = 64, 2.0, 0.8
    cams = _cameras(distance, fovy)
    with torch.no_grad():
        out = render_mesh(field, None, cams, size, size, background_kind="white")
    # analytic: rays within asin(r / d) of the direction to the centre hit the sphere
    forward = -cams.c2w[0, :3, 2]
    cosine = (out["dirs"][0] * forward).sum(-1)
    disc = cosine > math.cos(math.asin(0.5 / distance))
    got = out["opacity"][0, ..., 0] > 0.5
    iou = float((disc & got).sum() / (disc | got).sum())
    assert iou > 0.97, iou
    inscribed = 0.5 * math.cos(math.pi / 32)  # the polygonal sphere lies between it and the sphere
    area = float(out["opacity"].sum())
    focal = 0.5 * size / math.tan(0.5 * fovy)
    disc_area = lambda r: math.pi * (focal * math.tan(math.asin(r / distance))) ** 2
    assert 0.97 * disc_area(inscribed) < area < disc_area(0.5) * 1.01
    hit = out["opacity"][0, ..., 0] > 0.999
    depth = out["depth"][0, ..., 0][hit]
    assert float(depth.min()) > distance - 0.5 - 1e-3 and float(depth.max()) < distance  # on the near half


def test_coverage_gradient_matches_finite_differences_and_the_disc():
    """d coverage / d sdf along 'shrink everything' (sdf + eps), float64: autograd through marching tetrahedra,
    rasterization and antialiasing equals the finite difference of the same render, and is the derivative of
    the analytic disc's area in pixels with the sphere's radius to 15 % (a sign or a doubled share fails)."""
    field = _field(resolution=16, radius=0.55).double()
    cams = Cameras(*(x.double() for x in _cameras()))
    size, distance, fovy, radius = 48, 2.0, 0.8, 0.55
    render_mesh(field, None, cams, size, size)["opacity"].sum().backward()
    predicted = float(field.sdf.grad.sum())
    eps = 1e-5
    with torch.no_grad():
        field.sdf += eps
        plus = float(render_mesh(field, None, cams, size, size)["opacity"].sum())
        field.sdf -= 2 * eps
        minus = float(render_mesh(field, None, cams, size, size)["opacity"].sum())
    assert abs(predicted - (plus - minus) / (2 * eps)) < 1e-4 * abs(predicted)
    focal = 0.5 * size / math.tan(0.5 * fovy)
    ratio = radius / distance
    d_area = 2 * math.pi * focal ** 2 * (ratio / math.sqrt(1 - ratio ** 2)) / distance / (1 - ratio ** 2) ** 1.5
    assert abs(-predicted - d_area) < 0.15 * d_area, (predicted, d_area)


def test_volumetric_density_reads_the_sdf():
    field = _field(resolution=16, radius=0.5)
    points = torch.tensor([[0.0, 0, 0], [0.3, 0.1, 0], [0.7, 0, 0], [0, 0, 0.9], [1.2, 0, 0]])
    density = field(points)["density"]
    assert density.tolist() == [1e3, 1e3, 0.0, 0.0, 0.0]


def test_the_renderer_rasterizes_a_surface_field():
    """render_views picks the mesh renderer for a DMTetField (renderer/core.py's class map)."""
    from dreamfusion.renderer import render_views

    field = _field(resolution=16)
    cams = _cameras()
    with torch.no_grad():
        expected = render_mesh(field, None, cams, 24, 24, background_kind="white")
        got = render_views(field, None, cams, 24, 24, n_samples=8, background_kind="white")
    assert torch.equal(got["rgb"], expected["rgb"]) and torch.equal(got["opacity"], expected["opacity"])
