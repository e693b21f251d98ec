"""The nvdiffrast fast path of the mesh rasterizer (render/mesh_raster_nvdiffrast.py) and its choice key
(render.mesh_rasterizer). On the CPU: the convention mapping against a simulated nvdiffrast output built from the
brute-force ray oracle, the choice's one-line errors and its auto rule, the Renderer's wiring. On a GPU (``gpu``
marker, nvdiffrast installed): the CUDA path against the PyTorch twin, forward and gradient, and the closed-form
coverage of an antialiased strip."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import require_oracle
from test_dmtet import _cameras, _field
from test_mesh_raster import _brute_force, _edge_pixels, _scene, _square

import dreamfusion.renderer.mesh as mesh_renderer
from dreamfusion.errors import ConfigError
from dreamfusion.renderer import Renderer
from dreamfusion.renderer.config import RenderConfig
from dreamfusion.renderer.mesh import pick_mesh_rasterizer, render_mesh
from render.cameras import sample_cameras
from render.mesh_raster import antialias, clip_positions, interpolate, rasterize_mesh
from render.mesh_raster_nvdiffrast import (NVDIFFRAST_INSTALL, antialias_nvdiffrast, from_nvdiffrast,
                                           interpolate_nvdiffrast, nvdiffrast_available, rasterize_mesh_nvdiffrast)
from render.rays import generate_rays


def _views(n=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    cams = sample_cameras(n, (-30, 60), (-180, 180), (1.6, 2.4), (35, 60), generator=g)
    return cams.c2w.to(dtype), cams.fovy.to(dtype)


def _simulated_nvdiffrast(vertices, faces, c2w, fovy, height, width):
    """What nvdiffrast's rasterize returns, written from its documentation and the ray oracle, not from our
    rasterizer: per pixel (u, v, z/w, triangle id + 1) with vertex 0 at (u, v) = (1, 0), vertex 1 at (0, 1),
    vertex 2 at (0, 0), zeros where no triangle, and row 0 the image's bottom."""
    tri, _ = _brute_force(vertices, faces, c2w, fovy, height, width)  # [B, H, W], row 0 the top
    origins, dirs = generate_rays(c2w, fovy, height, width)
    a, b, c = (vertices[faces[tri.clamp(min=0), k]] for k in range(3))  # [B, H, W, 3]
    e1, e2 = b - a, c - a  # Moller-Trumbore: hit = (1 - s - t) a + s b + t c
    p = torch.linalg.cross(dirs, e2)
    inv = 1.0 / (e1 * p).sum(-1)
    r = origins - a
    s = (r * p).sum(-1) * inv
    t = (dirs * torch.linalg.cross(r, e1)).sum(-1) * inv
    hit = (1 - s - t)[..., None] * a + s[..., None] * b + t[..., None] * c
    clip = torch.stack([clip_positions(hit[i].reshape(-1, 3), c2w[i:i + 1], fovy[i:i + 1], height, width)[0]
                        for i in range(len(c2w))]).view(*tri.shape, 4)
    raw = torch.stack([1 - s - t, s, clip[..., 2] / clip[..., 3], (tri + 1).to(s.dtype)], dim=-1)
    return (raw * (tri >= 0)[..., None]).flip(1)


@pytest.mark.parametrize("height,width", [(40, 40), (32, 48)])
def test_from_nvdiffrast_gives_our_rasterizer_on_a_simulated_output(height, width):
    """The mapping (rows flipped, id - 1, bary = (u, v, 1 - u - v), depth = the blend of w) turns nvdiffrast's
    output into rasterize_mesh's: masks equal except on at most 0.5 % of edge pixels, ids on 99.5 % of shared
    pixels, barycentrics and depth to 1e-9 where the ids agree."""
    vertices, faces = _scene()
    c2w, fovy = _views()
    pos = clip_positions(vertices, c2w, fovy, height, width)
    got = from_nvdiffrast(_simulated_nvdiffrast(vertices, faces, c2w, fovy, height, width), pos, faces)
    want = rasterize_mesh(pos, faces, height, width)
    differ = got["mask"] != want["mask"]
    assert want["mask"].float().mean() > 0.1
    assert bool((~differ | _edge_pixels(want["mask"])).all())
    assert int(differ.sum()) <= 0.005 * int(_edge_pixels(want["mask"]).sum())
    same = got["mask"] & want["mask"] & (got["triangle"] == want["triangle"])
    assert float(same.sum()) >= 0.995 * float((got["mask"] & want["mask"]).sum())
    assert torch.allclose(got["bary"][same], want["bary"][same], atol=1e-9, rtol=0)
    assert torch.allclose(got["depth"][same], want["depth"][same], atol=1e-9, rtol=0)
    for key in ("triangle", "bary", "depth"):  # the empty pixels as our contract has them: -1 and zeros
        assert bool((got[key][~got["mask"]] == (-1 if key == "triangle" else 0)).all())


def test_pick_mesh_rasterizer_one_line_errors_and_auto(monkeypatch):
    with pytest.raises(ConfigError, match="render.mesh_rasterizer=nvdiffrast needs a CUDA device") as cpu:
        pick_mesh_rasterizer("nvdiffrast", "cpu")
    monkeypatch.setitem(sys.modules, "nvdiffrast", None)  # not installed, whatever this machine has
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", None)
    with pytest.raises(ConfigError, match="needs nvdiffrast, which is not installed: pip install git") as missing:
        pick_mesh_rasterizer("nvdiffrast", "cuda")
    assert "\n" not in str(cpu.value) and "\n" not in str(missing.value)
    assert "render.mesh_rasterizer=torch" in str(missing.value)
    assert pick_mesh_rasterizer("auto", "cpu") == "torch" and pick_mesh_rasterizer("torch", "cuda") == "torch"
    monkeypatch.setattr(mesh_renderer, "nvdiffrast_available", lambda: True)
    assert pick_mesh_rasterizer("auto", "cuda") == "nvdiffrast" and pick_mesh_rasterizer("auto", "cpu") == "torch"
    monkeypatch.setattr(mesh_renderer, "nvdiffrast_available", lambda: False)
    assert pick_mesh_rasterizer("auto", "cuda") == "torch"


def test_renderer_resolves_the_choice_and_hands_it_to_render_mesh(monkeypatch):
    field = _field(resolution=12)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Renderer(RenderConfig(mesh_rasterizer="nvdiffrast"), field, "cpu")
    renderer = Renderer(RenderConfig(background="white"), field, "cpu")
    assert renderer.mesh_rasterizer == "torch"
    cams = _cameras()
    with torch.no_grad():
        want = render_mesh(field, None, cams, 12, 12, background_kind="white")
        got = renderer.render(cams, 12, 12, background=None, perturb=False)
    assert torch.equal(got["rgb"], want["rgb"])
    seen = []
    torch_path = mesh_renderer._RASTERIZERS["torch"]
    spy = (lambda *a: seen.append("rasterize") or torch_path[0](*a), *torch_path[1:])
    monkeypatch.setitem(mesh_renderer._RASTERIZERS, "nvdiffrast", spy)
    renderer.mesh_rasterizer = "nvdiffrast"  # as on CUDA with nvdiffrast: the renders go through that path
    with torch.no_grad():
        renderer.render(cams, 12, 12, background=None)
    assert seen == ["rasterize"]


# ---------------------------------------------------------------- on a GPU, against the PyTorch twin

def _cuda_nvdiffrast():
    """nvdiffrast is in no extra (not on PyPI, non-commercial licence): the gate is that it imports on CUDA."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    require_oracle(nvdiffrast_available(), "nvdiffrast", f"{NVDIFFRAST_INSTALL} (non-commercial licence)")


@pytest.mark.gpu
def test_nvdiffrast_rasterize_matches_the_twin_and_the_ray_oracle():
    _cuda_nvdiffrast()
    vertices, faces = _scene()
    height, width = 96, 128
    c2w, fovy = _views(4, seed=1)
    pos = clip_positions(vertices, c2w, fovy, height, width).float().cuda()
    on_gpu = faces.cuda()
    fast, twin = rasterize_mesh_nvdiffrast(pos, on_gpu, height, width), rasterize_mesh(pos, on_gpu, height, width)
    tri, depth = _brute_force(vertices, faces, c2w, fovy, height, width)
    for rast in (fast, twin):
        mask = rast["mask"].cpu()
        differ = mask != (tri >= 0)
        edges = _edge_pixels(tri >= 0)
        assert bool((~differ | edges).all()) and int(differ.sum()) <= 0.005 * int(edges.sum())
        both = mask & (tri >= 0)  # float32 barycentrics: 1e-5 plus a few dozen ulps of the depth (~2)
        assert torch.allclose(rast["depth"].cpu()[both].double(), depth[both], atol=1e-5, rtol=1e-5)
    same = fast["mask"] & twin["mask"] & (fast["triangle"] == twin["triangle"])
    assert float(same.sum()) >= 0.995 * float((fast["mask"] & twin["mask"]).sum())
    torch.testing.assert_close(fast["depth"][same], twin["depth"][same], atol=1e-5, rtol=0)
    torch.testing.assert_close(fast["bary"][same], twin["bary"][same], atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_nvdiffrast_interpolate_matches_the_twin_with_gradients():
    _cuda_nvdiffrast()
    vertices, faces = _scene()
    c2w, fovy = _views(2, seed=2)
    faces = faces.cuda()
    attributes = torch.rand(len(vertices), 5, generator=torch.Generator().manual_seed(0)).cuda()
    runs = []
    for rasterize, interp in ((rasterize_mesh_nvdiffrast, interpolate_nvdiffrast), (rasterize_mesh, interpolate)):
        pos = clip_positions(vertices, c2w, fovy, 64, 80).float().cuda().requires_grad_()
        attr = attributes.clone().requires_grad_()
        rast = rasterize(pos, faces, 64, 80)
        runs.append((pos, attr, interp(attr, rast, faces), rast["triangle"]))
    agree = (runs[0][3] == runs[1][3]) & (runs[0][3] >= 0)  # the loss sees the pixels both give one triangle
    weight = torch.rand(agree.shape, generator=torch.Generator().manual_seed(1)).cuda() * agree
    torch.testing.assert_close(runs[0][2][agree], runs[1][2][agree], atol=1e-4, rtol=0)
    grads = [torch.autograd.grad((value * weight[..., None]).sum(), (pos, attr)) for pos, attr, value, _ in runs]
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-2)


@pytest.mark.gpu
def test_nvdiffrast_antialias_covers_the_strip_exactly():
    """The closed form of tests/test_mesh_raster.py's strip, on nvdiffrast's antialias: the image's sum is the
    strip's area in pixels and moving its right edge by one pixel adds the image's height."""
    _cuda_nvdiffrast()
    size = 20
    pos, faces = _square(-0.43, 0.38, -1.5, 1.5, dtype=torch.float32)
    pos, faces = pos.cuda().requires_grad_(), faces.cuda()
    rast = rasterize_mesh_nvdiffrast(pos, faces, size, size)
    total = antialias_nvdiffrast(rast["mask"][..., None].float(), rast, pos, faces).sum()
    area = (0.38 + 0.43) * (size / 2) * size
    assert abs(float(total.detach()) - area) < 1e-3 * area
    total.backward()
    right = float(pos.grad[0, 1, 0] + pos.grad[0, 2, 0])
    assert abs(right - size * (size / 2)) < 2e-2 * size * (size / 2)


@pytest.mark.gpu
def test_nvdiffrast_antialias_gradients_match_the_twin():
    """Colour gradients agree where both paths see the same triangles; the position gradients of the silhouettes
    (two implementations of one coverage rule) point the same way with the same size, to 10 %."""
    _cuda_nvdiffrast()
    vertices, faces = _scene()
    c2w, fovy = _views(2, seed=3)
    faces = faces.cuda()
    colours = torch.rand(len(vertices), 3, generator=torch.Generator().manual_seed(4)).cuda()
    runs = []
    for rasterize, smooth in ((rasterize_mesh_nvdiffrast, antialias_nvdiffrast), (rasterize_mesh, antialias)):
        pos = clip_positions(vertices, c2w, fovy, 128, 128).float().cuda().requires_grad_()
        rast = rasterize(pos, faces, 128, 128)
        colour = (interpolate(colours, rast, faces) * rast["mask"][..., None]).detach().requires_grad_()
        out = smooth(colour, rast, pos, faces)
        runs.append((pos, colour, torch.autograd.grad(out.sum(), (pos, colour)), rast["triangle"]))
    agree = runs[0][3] == runs[1][3]
    torch.testing.assert_close(runs[0][2][1][agree], runs[1][2][1][agree], atol=0.05, rtol=0)
    fast, twin = runs[0][2][0][..., :2].flatten(), runs[1][2][0][..., :2].flatten()
    cosine = float(fast @ twin / (fast.norm() * twin.norm()))
    assert cosine > 0.9 and 0.9 < float(fast.norm() / twin.norm()) < 1.1, (cosine, float(fast.norm() / twin.norm()))


@pytest.mark.gpu
def test_render_mesh_with_nvdiffrast_matches_the_torch_path():
    """The refine stage's render of a DMTet sphere on both paths: the same images away from the silhouette, the
    same coverage gradient for the field's parameters (cosine > 0.9)."""
    _cuda_nvdiffrast()
    field = _field(resolution=32).cuda()
    cams = _cameras(n=2)
    cams = type(cams)(*(x.cuda() for x in cams))
    outs, grads = [], []
    for rasterizer in ("nvdiffrast", "torch"):
        field.zero_grad()
        out = render_mesh(field, None, cams, 96, 96, background_kind="white", rasterizer=rasterizer)
        out["opacity"].sum().backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in field.parameters() if p.grad is not None]))
    covered = [out["opacity"][..., 0].detach() > 0 for out in outs]
    inside = ~(_edge_pixels(covered[0]) | _edge_pixels(covered[1]))  # antialias moves only silhouette pixels
    for key in ("rgb", "opacity", "depth", "normal"):
        torch.testing.assert_close(outs[0][key][inside], outs[1][key][inside], atol=1e-3, rtol=0,
                                   msg=lambda m: f"{key}: {m}")
    cosine = float(grads[0] @ grads[1] / (grads[0].norm() * grads[1].norm()))
    assert cosine > 0.9, cosine
