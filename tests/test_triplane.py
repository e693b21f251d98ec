"""Tri-plane field: sampling against a hand-written bilinear twin, the blob at init, TV, plane files, CLI."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dreamfusion.config import FieldConfig, OptimConfig, TriplaneConfig, load_config
from dreamfusion.errors import ConfigError, UserError
from dreamfusion.fields import TriplaneField, build_field, decoder
from dreamfusion.export.planes import load_planes, save_planes
from dreamfusion.fields.triplane import PLANE_AXES
from dreamfusion.renderer import render_views
from render.cameras import orbit_cameras

SMALL = dict(type="triplane", bound=1.5, hidden_dim=16)
PLANES = dict(resolution=7, channels=3)


def reference_plane(points, plane, bound, a, b):
    """Bilinear sample [M, C] of one plane [C, N, N] at (p_a, p_b): column from axis a, row from axis b,
    texel i at -bound + i * 2 bound / (N - 1), points clamped to the box; the 4 neighbours spelled out."""
    n = plane.shape[-1]
    u = ((points[:, a] / bound + 1) / 2 * (n - 1)).clamp(0, n - 1)  # fractional column
    v = ((points[:, b] / bound + 1) / 2 * (n - 1)).clamp(0, n - 1)  # fractional row
    i0 = torch.clamp(u.detach().floor(), max=n - 2).long()  # the last face uses the last cell
    j0 = torch.clamp(v.detach().floor(), max=n - 2).long()
    fu, fv = u - i0, v - j0
    out = 0
    for di, wu in ((0, 1 - fu), (1, fu)):
        for dj, wv in ((0, 1 - fv), (1, fv)):
            out = out + (wu * wv)[:, None] * plane[:, j0 + dj, i0 + di].T
    return out


def _points(n, bound, seed=0, outside=True):
    gen = torch.Generator().manual_seed(seed)
    scale = 1.2 if outside else 0.999
    return (torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1) * bound * scale


def _field(aggregation: str = "sum", resolution: int = 7, channels: int = 3, **overrides):
    torch.manual_seed(0)
    planes = TriplaneConfig(resolution=resolution, channels=channels, aggregation=aggregation)
    field = TriplaneField(FieldConfig(**{**SMALL, "triplane": planes, **overrides})).double()
    with torch.no_grad():
        field.planes.normal_()  # O(1) features so the comparisons mean something
    return field


@pytest.mark.parametrize("k, name", list(enumerate(PLANE_AXES)))
def test_sampling_matches_bilinear_twin_values_and_gradients(k, name):
    field = _field()
    a, b = PLANE_AXES[name]
    pts = torch.cat([_points(500, 1.5, outside=False), torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]],
                                                                    dtype=torch.float64)]).requires_grad_()
    out = field.sample_planes(pts)[k]
    ref = reference_plane(pts, field.planes[k], 1.5, a, b)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    interior = slice(0, 500)  # gradients w.r.t. points: away from the box faces (clamp kinks)
    w = torch.randn_like(out)
    g_planes, g_pts = torch.autograd.grad(out, (field.planes, pts), w, create_graph=True)
    r_planes, r_pts = torch.autograd.grad(ref, (field.planes, pts), w, create_graph=True)
    torch.testing.assert_close(g_planes, r_planes, atol=1e-12, rtol=0)
    torch.testing.assert_close(g_pts[interior], r_pts[interior], atol=1e-10, rtol=0)
    assert torch.equal(g_pts[interior][:, 3 - a - b], torch.zeros(500, dtype=torch.float64))  # off-plane axis
    # second order: normals = -grad density are trained through (d <grad_x, u> / d planes)
    u = torch.randn_like(g_pts)
    gg, = torch.autograd.grad((g_pts[interior] * u[interior]).sum(), field.planes)
    rr, = torch.autograd.grad((r_pts[interior] * u[interior]).sum(), field.planes)
    torch.testing.assert_close(gg, rr, atol=1e-10, rtol=0)


def test_texel_lattice_convention():
    """align_corners=True: texel (row j, column i) of plane 'ab' is the value at a_i, b_j exactly."""
    field = _field()
    n, lattice = 7, torch.linspace(-1.5, 1.5, 7, dtype=torch.float64)
    j, i = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    for k, (a, b) in enumerate(PLANE_AXES.values()):
        pts = torch.zeros(n * n, 3, dtype=torch.float64)
        pts[:, a], pts[:, b] = lattice[i.reshape(-1)], lattice[j.reshape(-1)]
        expected = field.planes[k][:, j.reshape(-1), i.reshape(-1)].T
        torch.testing.assert_close(field.sample_planes(pts)[k], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("aggregation", ["sum", "product", "concat"])
def test_aggregations_against_twin(aggregation):
    field = _field(aggregation=aggregation)
    pts = _points(300, 1.5)
    r = [reference_plane(pts, field.planes[k], 1.5, *ab) for k, ab in enumerate(PLANE_AXES.values())]
    expected = {"sum": r[0] + r[1] + r[2], "product": r[0] * r[1] * r[2], "concat": torch.cat(r, -1)}[aggregation]
    torch.testing.assert_close(field.features(pts), expected, atol=1e-12, rtol=0)
    assert field.mlp[0].in_features == (9 if aggregation == "concat" else 3)
    out = field(pts)
    raw = field.mlp(expected)
    inside = (pts.abs() <= 1.5).all(-1)
    assert 0 < inside.sum() < 300  # both kinds of points are exercised
    expected_density = torch.where(inside, F.softplus(raw[:, 0] + field.blob(pts)), torch.zeros(300, dtype=pts.dtype))
    torch.testing.assert_close(out["density"], expected_density, atol=1e-12, rtol=0)
    torch.testing.assert_close(out["albedo"], torch.sigmoid(raw[:, 1:]), atol=1e-12, rtol=0)


def test_out_of_bounds_points_are_empty_and_clamped():
    field = _field()
    pts = torch.tensor([[1.6, 0.2, 0.3], [0.1, -2.0, 0.0], [5.0, 5.0, -5.0], [-1.5001, 1.0, 1.0]], dtype=torch.float64)
    out = field(pts)
    assert torch.equal(out["density"], torch.zeros(4, dtype=torch.float64))  # documented: density 0 outside
    clamped = field(pts.clamp(-1.5, 1.5))  # documented: albedo of the clamped point (border padding)
    torch.testing.assert_close(out["albedo"], clamped["albedo"], atol=1e-12, rtol=0)
    assert clamped["density"].min() > 0  # the same points on the box face are not empty


def test_no_grad_chunks_equal_one_pass(monkeypatch):
    field = _field()
    pts = _points(1000, 1.5)
    whole = field(pts)  # grad mode: one pass
    monkeypatch.setattr(decoder, "_NO_GRAD_CHUNK", 128)
    with torch.no_grad():
        chunked = field(pts)
    for key in ("density", "albedo"):
        assert torch.equal(chunked[key], whole[key].detach())


def test_tv_loss_against_loop_twin_and_closed_form():
    field = _field(resolution=5, channels=2)
    P = field.planes
    total, pairs = 0.0, 0
    for k in range(3):
        for c in range(2):
            for r in range(5):
                for q in range(5):
                    if r + 1 < 5:
                        total, pairs = total + (P[k, c, r + 1, q] - P[k, c, r, q]).abs(), pairs + 1
                    if q + 1 < 5:
                        total, pairs = total + (P[k, c, r, q + 1] - P[k, c, r, q]).abs(), pairs + 1
    tv = field.tv_loss()
    torch.testing.assert_close(tv, total / pairs, atol=1e-12, rtol=0)
    g, = torch.autograd.grad(tv, P)
    r, = torch.autograd.grad(total / pairs, P)
    torch.testing.assert_close(g, r, atol=1e-12, rtol=0)
    with torch.no_grad():  # ramp 0.3 * column: column pairs differ by 0.3, row pairs by 0 -> tv = 0.15
        P.copy_(0.3 * torch.arange(5, dtype=P.dtype).expand(3, 2, 5, 5))
    torch.testing.assert_close(field.tv_loss(), torch.tensor(0.15, dtype=P.dtype), atol=1e-12, rtol=0)


def test_param_groups_and_builder():
    field = build_field(FieldConfig(type="triplane", triplane=TriplaneConfig(resolution=8, channels=4), n_hidden_layers=2))
    assert isinstance(field, TriplaneField) and field.planes.shape == (3, 4, 8, 8)
    groups = field.param_groups(OptimConfig(triplane_lr=0.05, network_lr=0.002, encoding_lr=0.3))
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in field.parameters())
    assert {g["name"]: g["lr"] for g in groups} == {"planes": 0.05, "network": 0.002}
    assert [id(p) for p in groups[0]["params"]] == [id(field.planes)]
    torch.optim.Adam(groups)
    for bad, key in ((dict(triplane=TriplaneConfig(resolution=1)), "field.triplane.resolution"),
                     (dict(triplane=TriplaneConfig(aggregation="max")), "field.triplane.aggregation"),
                     (dict(density_activation="relu"), "field.density_activation")):
        with pytest.raises(ConfigError, match=key):
            TriplaneField(FieldConfig(type="triplane", **bad))


def test_save_load_round_trip(tmp_path):
    field = _field(aggregation="concat", density_activation="exp", blob_density=3.0).float()
    with torch.no_grad():
        field.planes.mul_(0.3)
        for p in field.mlp.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = save_planes(field, tmp_path / "triplane.npz")
    assert path == tmp_path / "triplane.npz" and [p.name for p in tmp_path.iterdir()] == ["triplane.npz"]
    with np.load(path, allow_pickle=False) as data:  # readable by any numpy user, no pickle
        for k, name in enumerate(("xy", "xz", "yz")):
            assert data[name].dtype == np.float32 and data[name].shape == (3, 7, 7)
            assert np.array_equal(data[name], field.planes[k].detach().numpy())
        assert np.array_equal(data["mlp.0.weight"], field.mlp[0].weight.detach().numpy())
        meta = json.loads(str(data["meta"]))
    assert meta["bound"] == 1.5 and meta["triplane_aggregation"] == "concat"
    assert meta["planes"]["xz"] == {"column_axis": "x", "row_axis": "z"}
    assert meta["mlp_layers"] == ["0", "2"]
    loaded = load_planes(path)
    pts = _points(400, 1.5).float()
    a, b = field(pts), loaded(pts)
    assert torch.equal(a["density"], b["density"]) and torch.equal(a["albedo"], b["albedo"])
    cams = orbit_cameras(2, 20.0, 3.0, 45.0)
    ra = render_views(field, None, cams, 12, 12, n_samples=24, perturb=False)
    rb = render_views(loaded, None, cams, 12, 12, n_samples=24, perturb=False)
    for key in ("rgb", "opacity", "depth"):
        torch.testing.assert_close(ra[key], rb[key], atol=1e-6, rtol=0)
    into = TriplaneField(loaded.cfg)  # into an existing field of the same shape
    assert load_planes(path, into) is into and torch.equal(into(pts)["density"], a["density"])
    with pytest.raises(UserError, match=r"saved with triplane_resolution=7 \(field: 9\)"):
        load_planes(path, TriplaneField(FieldConfig(**{**loaded.cfg.__dict__, "triplane": TriplaneConfig(9, 3, "concat")})))
    with pytest.raises(UserError, match=r"triplane_aggregation='concat' \(field: 'sum'\)"):
        load_planes(path, TriplaneField(FieldConfig(**{**loaded.cfg.__dict__, "triplane": TriplaneConfig(7, 3, "sum")})))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read tri-plane file"):
        load_planes(tmp_path / "bad.npz")


def test_triplane_config_runs_sds_and_exports(tiny_sd_dir, tmp_path, monkeypatch):
    cfg = load_config("triplane")
    assert (cfg.field.type, cfg.guidance.type, cfg.field.triplane.aggregation) == ("triplane", "sds", "sum")
    from dreamfusion.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["--config", "triplane", "prompt=a hamburger", f"guidance.stable_diffusion.model={tiny_sd_dir}", "steps=3",
               "render.width=16", "render.height=16", "render.n_samples=16", "guidance.stable_diffusion.vae_resolution=32",
               "export.resolution=16", "export.video_frames=4", "export.video_resolution=16",
               "export.texture=vertex", f"output_dir={tmp_path}", "checkpoint_every=3", "preview_every=0",
               "field.triplane.resolution=16", "field.triplane.channels=4", "device=cpu"])
    assert rc == 0
    run = next(p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("a-hamburger"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and np.isfinite(rows[-1]["loss_sds"])
    assert (run / "orbit.mp4").stat().st_size > 0 and (run / "mesh" / "model.glb").stat().st_size > 0
