"""BakedField (render.eval_grid): a field sampled once on grid vertices, trilinear in between."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamfusion.config import FieldConfig, HashGridConfig, load_config
from dreamfusion.export import extract_mesh
from dreamfusion.fields import GaussianField, NeRFField
from dreamfusion.fields.base import Field
from dreamfusion.renderer import BakedField, eval_view, render_views_chunked, skip_grid
from render.cameras import orbit_cameras

BOUND = 1.0


class Multilinear(Field):
    """density and albedo multilinear in (x, y, z): trilinear interpolation reproduces them exactly."""

    bound = BOUND

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, p):
        x, y, z = p.unbind(-1)
        density = 3.0 + x + 0.5 * y - 0.7 * z + 0.4 * x * y * z + 0.3 * y * z
        albedo = torch.stack([0.5 + 0.2 * x * y, 0.5 - 0.3 * z, 0.4 + 0.1 * x * z + 0.2 * y], dim=-1)
        return {"density": density, "albedo": albedo}


def small_nerf(seed: int = 0) -> NeRFField:
    torch.manual_seed(seed)
    cfg = FieldConfig(hashgrid=HashGridConfig(backend="torch", n_levels=4, log2_hashmap_size=12), hidden_dim=16)
    return NeRFField(cfg, "cpu").eval()


def test_multilinear_field_is_reproduced_exactly_between_vertices():
    field = Multilinear()
    baked = BakedField.bake(field, 5)  # a 4-cell grid: the query points below fall between vertices
    pts = torch.rand(20001, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1  # odd: split over 2 threads
    want, got = field(pts), baked(pts)
    assert torch.allclose(got["density"], want["density"], atol=1e-5)
    assert torch.allclose(got["albedo"], want["albedo"], atol=1e-5)
    assert baked.albedo_channels == 3 and baked.resolution == 5


def test_grid_vertices_give_the_field_itself_and_outside_the_box_is_empty():
    field = small_nerf()
    r = 9
    axis = torch.linspace(-BOUND, BOUND, r)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    baked = BakedField.bake(field, r)
    with torch.no_grad():
        want = field(pts)
    got = baked(pts)
    assert torch.allclose(got["density"], want["density"], rtol=1e-4, atol=1e-5)
    assert torch.allclose(got["albedo"], want["albedo"], atol=1e-5)
    outside = torch.tensor([[1.2, 0.0, 0.0], [0.0, -1.01, 0.3], [0.5, 0.5, 3.0]])
    assert torch.equal(baked(outside)["density"], torch.zeros(3))


def test_mesh_of_the_baked_field_at_its_resolution_is_the_fields_mesh():
    field = small_nerf()
    r = 24
    baked = BakedField.bake(field, r)
    v1, f1 = extract_mesh(field.density, BOUND, r, device="cpu")
    v2, f2 = extract_mesh(baked.density, BOUND, r, device="cpu")
    assert np.array_equal(f1, f2) and len(f1) > 100
    assert np.abs(v1 - v2).max() < 1e-4


def test_baked_video_frames_converge_to_the_field_render():
    """Video frames of baked grids against rendering the field itself: close at 96^3, and trilinear
    interpolation's error falls as h^2, so 4x finer is >= 10 dB better (12 dB in theory)."""
    field = small_nerf(3)
    with torch.no_grad():  # random features of unit scale: structure at every level of the hash grid
        for name, p in field.named_parameters():
            if not name.startswith("mlp"):
                p.normal_(0.0, 1.0)
    cams = orbit_cameras(3, 20.0, 2.4, 45.0)
    kw = dict(n_samples=64, background_kind="white")
    want = render_views_chunked(field, None, cams, 48, 48, occupancy=skip_grid(field, 64), **kw)["rgb"]
    assert (want < 0.9).float().mean() > 0.1 and want.std() > 0.1  # the object fills part of the frame

    def psnr(r: int) -> float:
        baked = BakedField.bake(field, r)
        got = render_views_chunked(baked, None, cams, 48, 48, occupancy=skip_grid(baked, 64), **kw)["rgb"]
        return 10 * np.log10(1.0 / ((got - want) ** 2).mean().item())

    coarse, fine = psnr(24), psnr(96)
    assert fine >= 45.0 and fine - coarse >= 10.0, (coarse, fine)


def test_skip_grid_of_a_baked_field_is_made_once_and_is_the_occupancy_grid():
    from dreamfusion.renderer import occupancy_grid

    baked = BakedField.bake(small_nerf(), 16)
    first = skip_grid(baked, 64)
    want = occupancy_grid(baked, 64)
    assert skip_grid(baked, 64) is first
    assert (first is None) == (want.float().mean() > 0.5)
    assert first is None or torch.equal(first, want)


def test_splats_are_not_baked_and_a_baked_field_is_not_trained():
    cfg = load_config("demo", ["field.type=gaussian", "field.gaussian.count=50"]).field
    splats = GaussianField(cfg, "cpu")
    assert eval_view(splats, 32) is splats and skip_grid(splats, 64) is None
    with pytest.raises(TypeError, match="optimise the field itself"):
        BakedField.bake(Multilinear(), 3).param_groups(None)
    with pytest.raises(ValueError, match="resolution >= 2"):
        BakedField.bake(Multilinear(), 1)
