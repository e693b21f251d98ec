"""Fields: the hash grid against a naive per-level twin, the NeRF field at init, backgrounds, builders."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from dreamfusion.config import FieldConfig, GaussianConfig, HashGridConfig, OptimConfig, TriplaneConfig
from dreamfusion.errors import ConfigError
from dreamfusion.fields import HashGrid, NeRFField, build_field, make_hashgrid
from dreamfusion.renderer import LearnedBackground, build_background, solid_background
from dreamfusion.fields import hashgrid
from dreamfusion.fields.hashgrid import _import_tcnn
from dreamfusion.fields.decoder import trunc_exp

PRIMES = (1, 2654435761, 805459861)
SMALL = dict(bound=1.5, n_levels=6, log2_hashmap_size=11, base_resolution=3, per_level_scale=1.9)
# resolutions 3, 5, 10, 20, 39, 74: (R + 1)^3 = 64, 216, 1331 <= 2048 < 9261: levels 0-2 dense, 3-5 hashed


def reference_encoding(points, table, bound, n_levels, n_feat, log2_size, base, scale):
    """Naive twin: loop over levels and over the 8 corners, each corner's index and weight spelled out."""
    size_cap = 2 ** log2_size
    unit = ((points + bound) / (2 * bound)).clamp(0, 1)
    outs, offset = [], 0
    for level in range(n_levels):
        res = math.floor(base * scale ** level)
        dense = (res + 1) ** 3 <= size_cap
        size = min(size_cap, (res + 1) ** 3)
        level_table = table[offset:offset + size]
        offset += size
        pos = unit * res
        lower = torch.clamp(pos.detach().floor(), max=res - 1).long()  # upper face uses the last cell
        frac = pos - lower
        feat = torch.zeros(points.shape[0], n_feat, dtype=table.dtype)
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    x, y, z = lower[:, 0] + dx, lower[:, 1] + dy, lower[:, 2] + dz
                    if dense:
                        idx = x + y * (res + 1) + z * (res + 1) ** 2
                    else:
                        idx = ((x * PRIMES[0]) ^ (y * PRIMES[1]) ^ (z * PRIMES[2])) % size_cap
                    w = ((frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                         * (frac[:, 2] if dz else 1 - frac[:, 2]))
                    feat = feat + w[:, None] * level_table[idx]
        outs.append(feat)
    assert offset == table.shape[0]
    return torch.cat(outs, dim=-1)


def _points(n, bound, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pts = (torch.rand(n, 3, generator=gen, dtype=dtype) * 2 - 1) * bound * 1.1  # some outside: clamped
    corners = torch.tensor([[-1, -1, -1], [1, 1, 1], [1, -1, 0.3]], dtype=dtype) * bound  # faces of the box
    return torch.cat([pts, corners])


@pytest.mark.parametrize("n_feat", [2, 3, 4])  # 2: 1-D complex gather, 3: plain rows, 4: rows of 2 complex
def test_hashgrid_matches_naive_twin_values_and_gradients(n_feat):
    torch.manual_seed(0)
    grid = HashGrid(n_features_per_level=n_feat, **SMALL).double()
    assert grid.hashed == [False, False, False, True, True, True]  # both index kinds are exercised
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)  # O(1) features so the comparison means something
    pts = _points(3000, SMALL["bound"], torch.float64).requires_grad_()
    out = grid(pts)
    ref = reference_encoding(pts, grid.embeddings, SMALL["bound"], SMALL["n_levels"], n_feat,
                             SMALL["log2_hashmap_size"], SMALL["base_resolution"], SMALL["per_level_scale"])
    assert out.shape == (pts.shape[0], SMALL["n_levels"] * n_feat)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    v = torch.randn_like(out)
    g_table, g_pts = torch.autograd.grad(out, (grid.embeddings, pts), v, create_graph=True)
    r_table, r_pts = torch.autograd.grad(ref, (grid.embeddings, pts), v, create_graph=True)
    torch.testing.assert_close(g_table, r_table, atol=1e-6, rtol=0)
    torch.testing.assert_close(g_pts, r_pts, atol=1e-6, rtol=1e-9)
    # second order (normals = -grad density, trained through): d<grad_x, u>/d table
    u = torch.randn_like(g_pts)
    gg, = torch.autograd.grad((g_pts * u).sum(), grid.embeddings)
    rr, = torch.autograd.grad((r_pts * u).sum(), grid.embeddings)
    torch.testing.assert_close(gg, rr, atol=1e-6, rtol=1e-9)


def test_hashgrid_coarsening_levels_hashed_first_match_twin():
    # per_level_scale < 1: resolutions fall with the level, so the hashed levels come first and the
    # dense ones last; each group writes its own run of levels of the output
    kwargs = dict(bound=1.0, n_levels=4, log2_hashmap_size=9, base_resolution=20, per_level_scale=0.5)
    grid = HashGrid(**kwargs).double()
    assert grid.hashed == [True, True, False, False]  # resolutions 20, 10, 5, 2
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)
    pts = _points(500, 1.0, torch.float64, seed=2)
    ref = reference_encoding(pts, grid.embeddings, 1.0, 4, 2, 9, 20, 0.5)
    torch.testing.assert_close(grid(pts), ref, atol=1e-9, rtol=0)


def test_hashgrid_default_config_float32_matches_twin():
    cfg = FieldConfig().hashgrid
    bound = FieldConfig().bound
    grid = make_hashgrid(FieldConfig(hashgrid=HashGridConfig(backend="torch")), "cpu")
    assert isinstance(grid, HashGrid)
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)
    pts = _points(500, bound, torch.float32, seed=1).requires_grad_()
    out = grid(pts)
    ref = reference_encoding(pts, grid.embeddings, bound, cfg.n_levels, cfg.n_features_per_level,
                             cfg.log2_hashmap_size, cfg.base_resolution, cfg.per_level_scale)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)  # same float32 positions, other summation order
    g_table, = torch.autograd.grad(out.sum(), grid.embeddings)
    r_table, = torch.autograd.grad(ref.sum(), grid.embeddings)
    torch.testing.assert_close(g_table, r_table, atol=1e-6, rtol=0)


def test_hashgrid_no_grad_chunks_equal_one_pass(monkeypatch):
    grid = HashGrid(**SMALL)
    pts = _points(1000, SMALL["bound"], torch.float32)
    whole = grid(pts)  # grad mode: one pass
    monkeypatch.setattr(hashgrid, "_NO_GRAD_CHUNK", 128)
    with torch.no_grad():
        chunked = grid(pts)
    assert torch.equal(chunked, whole.detach())


def test_hashgrid_dense_to_hashed_switch_closed_form():
    cfg = FieldConfig().hashgrid  # 16 levels, base 16, scale 1.447, 2^19 entries
    grid = HashGrid(FieldConfig().bound, cfg.n_levels, cfg.n_features_per_level, cfg.log2_hashmap_size,
                    cfg.base_resolution, cfg.per_level_scale)
    res = [math.floor(16 * 1.447 ** level) for level in range(16)]
    sizes = [min(2 ** 19, (r + 1) ** 3) for r in res]
    assert grid.resolutions == res and grid.table_sizes == sizes
    assert grid.embeddings.shape == (sum(sizes), 2)
    # (70 + 1)^3 = 357,911 <= 2^19 = 524,288 < (101 + 1)^3: levels 0-4 dense, 5-15 hashed
    assert res[4] == 70 and res[5] == 101
    assert grid.hashed == [False] * 5 + [True] * 11
    assert grid.offsets == [sum(sizes[:level]) for level in range(16)]
    assert float(grid.embeddings.detach().abs().max()) <= 1e-4  # U(-1e-4, 1e-4)


def _zeroed_field(kind: str = "nerf", **overrides):
    """A NeRF (hash table) or tri-plane (planes) field whose features and last MLP layer are zero."""
    torch.manual_seed(0)
    field = build_field(FieldConfig(type=kind, hashgrid=HashGridConfig(backend="torch", n_levels=4, log2_hashmap_size=12),
                                    triplane=TriplaneConfig(resolution=16, channels=4), **overrides))
    with torch.no_grad():
        (field.encoding.embeddings if kind == "nerf" else field.planes).zero_()
        field.mlp[-1].weight.zero_()
        field.mlp[-1].bias.zero_()
    return field


@pytest.mark.parametrize("kind", ["nerf", "triplane"])
@pytest.mark.parametrize("activation", ["softplus", "exp"])
def test_field_at_init_is_the_blob(kind, activation):
    """Both MLP-decoded fields share the decoder (fields/decoder.py): zero features and a zero last layer leave only the blob."""
    field = _zeroed_field(kind, density_activation=activation, blob_density=10.0, blob_radius=0.5)
    gen = torch.Generator().manual_seed(0)
    inside = torch.rand(400, 3, generator=gen) * 2 - 1
    outside = torch.tensor([[1.2, 0.0, 0.0], [0.0, -1.01, 0.5], [2.0, 2.0, 2.0]])
    out = field(torch.cat([inside, outside]))
    blob = 10.0 * (1 - inside.norm(dim=-1) / 0.5)  # Magic3D, added before the activation
    expected = F.softplus(blob) if activation == "softplus" else torch.exp(blob)
    torch.testing.assert_close(out["density"][:400], expected, atol=0, rtol=1e-6)
    assert torch.equal(out["density"][400:], torch.zeros(3))
    assert torch.equal(out["albedo"], torch.full((403, 3), 0.5))
    torch.testing.assert_close(field.density(inside), out["density"][:400], atol=0, rtol=0)
    assert field.bound == 1.0


def test_trunc_exp_forward_and_finite_gradient():
    x = torch.linspace(-20.0, 14.9, 200, dtype=torch.float64, requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x), atol=0, rtol=1e-12)
    g, = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.exp(x), atol=0, rtol=1e-12)  # d exp = exp below the clamp
    big = torch.tensor([15.0, 100.0, 1e4, 1e30], requires_grad=True)
    yb = trunc_exp(big)
    gb, = torch.autograd.grad(yb.sum(), big)
    clamped = torch.exp(torch.full((4,), 15.0))  # float32 exp(15): within an ulp of e^15, by the CPU's exp kernel
    assert torch.equal(yb, clamped) and torch.equal(gb, clamped)  # finite, clamped like torch-ngp
    assert clamped[0].item() == pytest.approx(math.exp(15.0), rel=2 ** -22)


def test_param_groups_cover_each_parameter_once():
    optim = OptimConfig(encoding_lr=0.03, network_lr=0.002, background_lr=0.0007)
    field = NeRFField(FieldConfig(hashgrid=HashGridConfig(backend="torch", n_levels=4, log2_hashmap_size=12),
                                  n_hidden_layers=2))
    groups = field.param_groups(optim)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in field.parameters())  # each exactly once, none missing
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"encoding": 0.03, "network": 0.002}
    assert [id(p) for p in groups[0]["params"]] == [id(field.encoding.embeddings)]
    torch.optim.Adam(groups)  # accepted as is
    bg = LearnedBackground()
    bg_groups = bg.param_groups(optim)
    assert sorted(id(p) for g in bg_groups for p in g["params"]) == sorted(id(p) for p in bg.parameters())
    assert [g["lr"] for g in bg_groups] == [0.0007]


def test_solid_backgrounds():
    assert torch.equal(solid_background("white", (2, 4, 5), None, device="cpu"), torch.ones(2, 4, 5, 3))
    assert torch.equal(solid_background("black", (2, 4, 5), None, device="cpu"), torch.zeros(2, 4, 5, 3))
    a = solid_background("random", (3, 4, 5), torch.Generator().manual_seed(7), device="cpu")
    b = solid_background("random", (3, 4, 5), torch.Generator().manual_seed(7), device="cpu")
    assert torch.equal(a, b)
    colours = torch.rand(3, 3, generator=torch.Generator().manual_seed(7))  # one draw per view
    assert torch.equal(a, colours[:, None, None, :].expand(3, 4, 5, 3))
    with pytest.raises(ConfigError, match="background"):
        solid_background("grey", (1, 2, 2), None, device="cpu")


def test_learned_background():
    bg = build_background("learned", "cpu")
    assert isinstance(bg, LearnedBackground)
    for kind in ("white", "black", "random"):
        assert build_background(kind, "cpu") is None
    dirs = torch.randn(2, 3, 4, 3)
    rgb = bg(dirs)
    assert torch.equal(rgb, torch.full((2, 3, 4, 3), 0.5))  # zero last layer -> sigmoid(0)
    torch.testing.assert_close(bg(dirs * 3.0), rgb, atol=0, rtol=0)  # depends on the direction only
    with pytest.raises(ConfigError, match="render.background"):
        build_background("checker", "cpu")


def test_build_field_and_backends(monkeypatch):
    field = build_field(FieldConfig(hashgrid=HashGridConfig(backend="auto", n_levels=2, log2_hashmap_size=10)), "cpu")
    assert isinstance(field, NeRFField) and isinstance(field.encoding, HashGrid)  # auto on CPU: torch twin
    from dreamfusion.fields.gaussian import GaussianField
    from dreamfusion.fields.triplane import TriplaneField

    assert isinstance(build_field(FieldConfig(type="triplane", triplane=TriplaneConfig(resolution=8)), "cpu"), TriplaneField)
    assert isinstance(build_field(FieldConfig(type="gaussian", gaussian=GaussianConfig(count=10)), "cpu"), GaussianField)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        make_hashgrid(FieldConfig(hashgrid=HashGridConfig(backend="tcnn")), "cpu")
    monkeypatch.setitem(sys.modules, "tinycudann", None)  # as if not installed
    with pytest.raises(ConfigError, match="not on PyPI"):
        _import_tcnn()
    with pytest.raises(ValueError, match=r"\[M, 3\]"):
        field(torch.zeros(4, 2))
