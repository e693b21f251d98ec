"""render/mesh_raster.py against its oracles: brute-force ray-triangle intersection (which triangle, depth),
float64 gradcheck of interpolation and antialiasing, and closed forms (texel centres, the area of a square)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from render.cameras import look_at, sample_cameras
from render.mesh_raster import antialias, clip_positions, interpolate, rasterize_mesh, texture_lookup
from render.rays import generate_rays


def _scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A sphere partly hidden behind a box: silhouettes, occlusion and a shared-edge interior, float64."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    box = trimesh.creation.box(extents=(0.6, 0.4, 0.5))
    box.apply_translation((0.35, -0.1, 0.45))
    mesh = trimesh.util.concatenate([sphere, box])
    return torch.tensor(mesh.vertices, dtype=torch.float64), torch.tensor(mesh.faces, dtype=torch.long)


def _brute_force(vertices, faces, c2w, fovy, height, width):
    """Nearest hit of every pixel's ray (Moller-Trumbore against every triangle): triangle id [B, H, W] (-1
    none) and view depth [B, H, W] (t along the unit ray times its cosine with the camera's forward axis)."""
    origins, dirs = generate_rays(c2w, fovy, height, width)
    o, d = origins.reshape(-1, 1, 3), dirs.reshape(-1, 1, 3)
    a, b, c = (vertices[faces[:, k]][None] for k in range(3))  # [1, F, 3]
    e1, e2 = b - a, c - a
    p = torch.linalg.cross(d, e2)
    det = (e1 * p).sum(-1)
    inv = 1.0 / det
    s = o - a
    u = (s * p).sum(-1) * inv
    q = torch.linalg.cross(s, e1)
    v = (d * q).sum(-1) * inv
    t = (e2 * q).sum(-1) * inv
    hit = (det.abs() > 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    t = torch.where(hit, t, torch.full_like(t, math.inf))
    best, tri = t.min(1)
    tri = torch.where(torch.isfinite(best), tri, -1)
    forward = -c2w[:, :3, 2]  # [B, 3]
    cosine = (dirs * forward[:, None, None]).sum(-1).reshape(-1)
    depth = torch.where(torch.isfinite(best), best * cosine, torch.zeros_like(best))
    shape = (c2w.shape[0], height, width)
    return tri.view(shape), depth.view(shape)


def _edge_pixels(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 4-neighbourhood holds both covered and uncovered pixels."""
    m = torch.nn.functional.pad(mask.float()[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    stack = torch.stack([m[:, 1:-1, 1:-1], m[:, :-2, 1:-1], m[:, 2:, 1:-1], m[:, 1:-1, :-2], m[:, 1:-1, 2:]])
    return stack.amax(0) != stack.amin(0)


@pytest.mark.parametrize("height,width", [(48, 48), (40, 64)])
def test_rasterizer_matches_ray_triangle_intersection(height, width):
    vertices, faces = _scene()
    g = torch.Generator().manual_seed(0)
    cams = sample_cameras(3, (-30, 60), (-180, 180), (1.6, 2.4), (35, 60), generator=g)
    c2w, fovy = cams.c2w.double(), cams.fovy.double()
    rast = rasterize_mesh(clip_positions(vertices, c2w, fovy, height, width), faces, height, width)
    tri, depth = _brute_force(vertices, faces, c2w, fovy, height, width)
    mask = tri >= 0
    differ = rast["mask"] != mask
    edges = _edge_pixels(mask)
    assert mask.float().mean() > 0.1, "the scene must fill part of the image"
    assert bool((~differ | edges).all()), "a mask difference away from the silhouette"
    assert int(differ.sum()) <= 0.005 * int(edges.sum())
    both = rast["mask"] & mask
    assert torch.allclose(rast["depth"][both], depth[both], atol=1e-5, rtol=0)
    same = (rast["triangle"] == tri)[both]
    assert same.float().mean() > 0.995  # only pixel centres on a shared edge may pick the neighbour
    assert bool((rast["depth"][~rast["mask"]] == 0).all()) and bool((rast["triangle"][~rast["mask"]] == -1).all())


def test_interpolated_positions_lie_on_the_rays():
    """Interpolating world positions with the perspective-correct barycentrics gives the ray's hit point."""
    vertices, faces = _scene()
    c2w = look_at(torch.tensor([[0.4, 0.6, 2.0]], dtype=torch.float64))
    fovy = torch.tensor([0.8], dtype=torch.float64)
    rast = rasterize_mesh(clip_positions(vertices, c2w, fovy, 32, 32), faces, 32, 32)
    points = interpolate(vertices, rast, faces)  # [1, H, W, 3]
    origins, dirs = generate_rays(c2w, fovy, 32, 32)
    to_point = points - origins
    along = (to_point * dirs).sum(-1, keepdim=True)
    off_ray = (to_point - along * dirs).norm(dim=-1)
    assert float(off_ray[rast["mask"]].max()) < 1e-9


def _two_triangles(dtype=torch.float64):
    pos = torch.tensor([[[-0.7, -0.6, 0.1, 1.0], [0.65, -0.5, 0.2, 1.3], [0.1, 0.7, 0.3, 0.9],
                         [0.8, 0.75, 0.2, 1.1]]], dtype=dtype)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    return pos, faces


def test_interpolate_gradcheck():
    pos, faces = _two_triangles()
    attributes = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pos.requires_grad_(True)
    attributes.requires_grad_(True)

    def f(p, a):
        return interpolate(a, rasterize_mesh(p, faces, 9, 11), faces)

    assert torch.autograd.gradcheck(f, (pos, attributes), eps=1e-6, atol=1e-7)


def test_antialias_gradcheck():
    pos, faces = _two_triangles()
    g = torch.Generator().manual_seed(2)
    color = torch.rand(1, 7, 9, 1, dtype=torch.float64, generator=g)
    rast = rasterize_mesh(pos, faces, 7, 9)
    pos.requires_grad_(True)
    color.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, c: antialias(c, rast, p, faces), (pos, color), eps=1e-6, atol=1e-7)


def _square(left, right, bottom, top, dtype=torch.float64):
    pos = torch.tensor([[[left, bottom, 0.0, 1.0], [right, bottom, 0.0, 1.0], [right, top, 0.0, 1.0],
                         [left, top, 0.0, 1.0]]], dtype=dtype)
    return pos, torch.tensor([[0, 1, 2], [0, 2, 3]])


def test_antialias_covers_the_exact_area_and_its_gradient():
    """A white strip on black, running off the top and bottom of the image: after antialiasing, the image's sum
    is the strip's area in pixels (exact for edges along the pixel grid), and moving its right edge by one
    pixel adds the image's height."""
    size = 20
    pos, faces = _square(-0.43, 0.38, -1.5, 1.5)
    pos.requires_grad_(True)
    rast = rasterize_mesh(pos, faces, size, size)
    white = rast["mask"][..., None].to(pos.dtype)
    total = antialias(white, rast, pos, faces).sum()
    area = (0.38 + 0.43) * (size / 2) * size
    assert abs(float(total.detach()) - area) < 1e-9
    assert abs(float(white.sum()) - area) > 0.5  # the hard mask is off: the oracle can tell
    total.backward()
    # d area / d (right edge, NDC): the height in pixels times pixels per NDC unit, over the two right vertices
    right = pos.grad[0, 1, 0] + pos.grad[0, 2, 0]
    assert abs(float(right) - size * (size / 2)) < 1e-9
    left = pos.grad[0, 0, 0] + pos.grad[0, 3, 0]
    assert abs(float(left) + size * (size / 2)) < 1e-9
    assert float(pos.grad[0, :, 2].abs().sum()) < 1e-12  # depth does not move an edge


def test_antialias_leaves_shared_edges_and_flat_images_alone():
    pos, faces = _square(-0.6, 0.6, -0.6, 0.6)
    rast = rasterize_mesh(pos, faces, 16, 16)
    assert set(rast["triangle"][rast["mask"]].tolist()) == {0, 1}  # the diagonal runs through the image
    flat = torch.full((1, 16, 16, 3), 0.3, dtype=torch.float64)
    assert torch.equal(antialias(flat, rast, pos, faces), flat)
    colours = torch.rand(1, 16, 16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    interior = rast["mask"].clone()
    interior[:, [0, -1]] = False
    interior[:, :, [0, -1]] = False
    interior &= ~_edge_pixels(rast["mask"])
    out = antialias(colours, rast, pos, faces)
    assert torch.equal(out[interior], colours[interior])  # the diagonal is shared: no blending across it


def test_texture_lookup_texel_centres_and_orientation():
    texture = torch.arange(12, dtype=torch.float64).view(3, 4, 1)  # row 0 is the top
    ys, xs = torch.meshgrid(torch.arange(3.0, dtype=torch.float64), torch.arange(4.0, dtype=torch.float64),
                            indexing="ij")
    uv = torch.stack([(xs + 0.5) / 4, 1 - (ys + 0.5) / 3], dim=-1)[None]
    assert torch.allclose(texture_lookup(texture, uv)[0], texture)
    corner = texture_lookup(texture, torch.tensor([[[[0.0, 0.0]]]], dtype=torch.float64))
    assert float(corner) == 8.0  # v = 0 is the bottom-left texel (clamped at the border)
    half = texture_lookup(texture, torch.tensor([[[[0.25, 1 - 0.5 / 3]]]], dtype=torch.float64))
    assert abs(float(half) - 0.5) < 1e-12  # bilinear between texels 0 and 1


def test_rasterizer_refuses_bad_shapes():
    with pytest.raises(ValueError, match=r"pos must be clip-space \[B, V, 4\]"):
        rasterize_mesh(torch.zeros(4, 4), torch.zeros(1, 3, dtype=torch.long), 8, 8)
    with pytest.raises(ValueError, match=r"faces must be integer \[F, 3\]"):
        rasterize_mesh(torch.zeros(1, 4, 4), torch.zeros(1, 3), 8, 8)


def test_rasterizer_on_the_default_device_of_its_data():
    """Every tensor the rasterizer makes follows ``pos``: under torch's default device set to meta nothing may
    be created on the CPU by default (a device mix-up on CUDA)."""
    vertices, faces = _scene()
    c2w = look_at(torch.tensor([[0.0, 0.3, 2.0]], dtype=torch.float64))
    pos = clip_positions(vertices, c2w, torch.tensor([0.8], dtype=torch.float64), 16, 16)
    expected = rasterize_mesh(pos, faces, 16, 16)
    with torch.device("meta"):
        assert torch.linspace(0, 1, 2).device.type == "meta"
        got = rasterize_mesh(pos, faces, 16, 16)  # on CPU data: no meta tensor may leak in
    for key in expected:
        assert got[key].device.type == "cpu"
        assert torch.equal(got[key], expected[key])


def test_large_triangles_and_many_small_ones_agree_with_numpy_coverage():
    """Binning by bounding boxes in chunks: a mesh whose candidates exceed one chunk gives the same image
    as the unchunked rasterization."""
    import render.mesh_raster as mr

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    vertices, faces = torch.tensor(sphere.vertices), torch.tensor(sphere.faces)
    c2w = look_at(torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64))
    pos = clip_positions(vertices, c2w, torch.tensor([0.9], dtype=torch.float64), 64, 64)
    whole = rasterize_mesh(pos, faces, 64, 64)
    saved = mr._MAX_CANDIDATES
    try:
        mr._MAX_CANDIDATES = 997
        chunked = rasterize_mesh(pos, faces, 64, 64)
    finally:
        mr._MAX_CANDIDATES = saved
    for key in whole:
        assert torch.equal(whole[key], chunked[key])
    expected = np.pi * 0.6 ** 2  # the sphere's silhouette disc (near-orthographic check of the scale only)
    assert whole["mask"].float().mean() > 0.5 * expected / ((2 * np.tan(0.45) * 2.0) ** 2)


def test_antialias_walk_stops_at_the_far_pixels_triangle_with_the_same_result(monkeypatch):
    """antialias's silhouette walk stops once it steps into the triangle seen at the segment's far end (the segment
    ends inside it). Oracle: the walk without that stop (which then steps back and forth to its last step):
    the same image and the same gradient on the scene's silhouettes and occlusions, in fewer triangle visits."""
    import render.mesh_raster as mr

    vertices, faces = _scene()
    cams = sample_cameras(3, (-30, 60), (-180, 180), (1.6, 2.4), (35, 60), generator=torch.Generator().manual_seed(1))
    pos = clip_positions(vertices, cams.c2w.double(), cams.fovy.double(), 48, 48).requires_grad_(True)
    rast = rasterize_mesh(pos.detach(), faces, 48, 48)
    colours = torch.rand(3, 48, 48, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = torch.rand_like(colours)
    walk, crossing, visits = mr._silhouette_edges, mr._crossing, []

    def counted(s, origin, step):
        visits.append(len(s))
        return crossing(s, origin, step)

    def run(stop: bool):
        visits.clear()
        monkeypatch.setattr(mr, "_silhouette_edges", lambda *a, end=None: walk(*a, end=end if stop else None))
        monkeypatch.setattr(mr, "_crossing", counted)
        out = antialias(colours, rast, pos, faces)
        grad, = torch.autograd.grad((out * weights).sum(), pos)
        return out, grad, sum(visits)

    fast, slow = run(True), run(False)
    assert not torch.equal(fast[0], colours)  # there are silhouettes to blend
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    assert fast[2] < 0.3 * slow[2]  # measured 3228 against 14429; stopping when back at the start: 6077
