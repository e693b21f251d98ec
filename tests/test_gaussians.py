"""Gaussian splatting: rasterizer vs a brute-force oracle (values and gradients), projection vs gsplat's
pure-torch reference, .ply / .splat round trips, densification counts with the Adam state, checkpoints
with a different count, the field as a volume, and the gsplat CUDA twin (gpu marker)."""

from __future__ import annotations

import math
import struct

import pytest
import torch

from conftest import import_oracle
from render.cameras import look_at, orbit_cameras
from render.gaussians import eval_sh, rasterize_gaussians

from dreamfusion.config import FieldConfig, OptimConfig
from dreamfusion.fields import build_field
from dreamfusion.fields.gaussian import GaussianField, position_lr


# -- oracle: every pixel x every Gaussian, sorted by depth, written independently of render/gaussians.py --
def _rotation(q):  # (w, x, y, z) unit -> R = (w^2 - |v|^2) I + 2 v v^T + 2 w [v]_x
    w, v = q[0], q[1:]
    cross = torch.stack([torch.stack([0 * w, -v[2], v[1]]), torch.stack([v[2], 0 * w, -v[0]]),
                         torch.stack([-v[1], v[0], 0 * w])])
    return (w * w - v @ v) * torch.eye(3, dtype=q.dtype) + 2 * torch.outer(v, v) + 2 * w * cross


def _reference(means, quats, scales, opacities, colors, c2w, fovy, H, W, background=None):
    rgbs, alphas, depths = [], [], []
    for b in range(c2w.shape[0]):
        rot, eye = c2w[b, :3, :3], c2w[b, :3, 3]
        f = 0.5 * H / math.tan(0.5 * float(fovy[b]))
        jj, ii = torch.meshgrid(torch.arange(W, dtype=means.dtype), torch.arange(H, dtype=means.dtype), indexing="xy")
        u, v = jj + 0.5, ii + 0.5  # pixel centres, [H, W]
        ray_len = torch.sqrt(1 + ((u - W / 2) / f) ** 2 + ((v - H / 2) / f) ** 2)
        splats = []
        for n in range(means.shape[0]):
            p = rot.T @ (means[n] - eye)  # OpenGL camera frame: looks along -z, y up
            depth = -p[2]
            if depth <= 0.01:
                continue
            q = quats[n] / quats[n].norm()
            R = _rotation(q)
            cov = rot.T @ (R @ torch.diag(scales[n] ** 2) @ R.T) @ rot
            # u = W/2 - f x / z, v = H/2 + f y / z (z < 0 in front); J = d(u, v) / d(x, y, z)
            J = torch.stack([torch.stack([-f / p[2], 0 * f / p[2], f * p[0] / p[2] ** 2]),
                             torch.stack([0 * f / p[2], f / p[2], -f * p[1] / p[2] ** 2])])
            cov2 = J @ cov @ J.T + 0.3 * torch.eye(2, dtype=means.dtype)
            centre = torch.stack([W / 2 - f * p[0] / p[2], H / 2 + f * p[1] / p[2]])
            d = torch.stack([u - centre[0], v - centre[1]], -1)  # [H, W, 2]
            maha = torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(cov2), d)
            alpha = (opacities[n] * torch.exp(-0.5 * maha)).clamp(max=0.99)
            alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
            splats.append((float(depth.detach()), alpha, colors[n], depth))
        T = torch.ones(H, W, dtype=means.dtype)
        rgb = torch.zeros(H, W, 3, dtype=means.dtype)
        dep = torch.zeros(H, W, dtype=means.dtype)
        for _, alpha, colour, depth in sorted(splats, key=lambda s: s[0]):
            rgb = rgb + (T * alpha)[..., None] * colour
            dep = dep + T * alpha * depth * ray_len
            T = T * (1 - alpha)
        if background is not None:
            rgb = rgb + T[..., None] * background[b]
        rgbs.append(rgb), alphas.append(1 - T), depths.append(dep)
    return torch.stack(rgbs), torch.stack(alphas)[..., None], torch.stack(depths)[..., None]


def _scene(dtype=torch.float64, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 0.8
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = 0.05 + 0.15 * torch.rand(n, 3, generator=g, dtype=dtype)
    opacities = 0.3 + 0.65 * torch.rand(n, generator=g, dtype=dtype)
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    eye = torch.tensor([[0.3, 0.4, 2.2], [-1.8, 0.2, -1.0]], dtype=dtype)
    c2w = look_at(eye)
    fovy = torch.tensor([0.8, 0.7], dtype=dtype)
    return means, quats, scales, opacities, colors, c2w, fovy


@pytest.mark.parametrize("tile_size", [16, 8])
def test_rasterizer_matches_brute_force_values_and_gradients(tile_size):
    H, W = 20, 27  # not multiples of the tile: partial tiles
    means, quats, scales, opacities, colors, c2w, fovy = _scene()
    bg = torch.rand(2, H, W, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = [torch.rand(2, H, W, k, generator=torch.Generator().manual_seed(2 + k), dtype=torch.float64) for k in (3, 1, 1)]
    leaves = [t.clone().requires_grad_() for t in (means, quats, scales, opacities, colors)]
    out = rasterize_gaussians(*leaves, c2w, fovy, H, W, bg, tile_size=tile_size, backend="torch")
    ref = _reference(*leaves, c2w, fovy, H, W, bg)
    for got, want in zip((out["rgb"], out["alpha"], out["depth"]), ref):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert float(out["alpha"].detach().max()) > 0.5  # the scene is seen (not a vacuous match)

    def grads(outputs):
        loss = sum((o * w).sum() for o, w in zip(outputs, weights))
        return torch.autograd.grad(loss, leaves)

    for got, want, name in zip(grads((out["rgb"], out["alpha"], out["depth"])), grads(ref),
                                ("means", "quats", "scales", "opacities", "colors")):
        assert float(want.abs().max()) > 0, name
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_rasterizer_float32_matches_float64_and_culls_behind_camera():
    H, W = 24, 24
    scene = _scene()
    means = torch.cat([scene[0], torch.tensor([[0.3, 0.4, 3.0]], dtype=torch.float64)])  # behind camera 0
    rest = [torch.cat([t, t[:1]]) for t in scene[1:5]]
    out64 = rasterize_gaussians(means, *rest, scene[5], scene[6], H, W, backend="torch")
    out32 = rasterize_gaussians(means.float(), *(t.float() for t in rest), scene[5].float(), scene[6].float(), H, W,
                                backend="torch")
    torch.testing.assert_close(out32["rgb"].double(), out64["rgb"], atol=2e-4, rtol=0)
    assert float(out64["radii"][0, -1]) == 0.0  # culled: behind camera 0
    without = rasterize_gaussians(*scene[:5], scene[5], scene[6], H, W, backend="torch")
    torch.testing.assert_close(out64["rgb"][0], without["rgb"][0], rtol=0, atol=0)
    ref = _reference(means, *rest, scene[5], scene[6], H, W)
    torch.testing.assert_close(out64["rgb"], ref[0], rtol=1e-9, atol=1e-9)


def test_means2d_gradient_is_retained_and_matches_projection():
    means, quats, scales, opacities, colors, c2w, fovy = _scene(torch.float32)
    means.requires_grad_()
    out = rasterize_gaussians(means, quats, scales, opacities, colors, c2w, fovy, 32, 32, backend="torch")
    out["means2d"].retain_grad()
    out["rgb"].sum().backward()
    assert out["means2d"].shape == (2, 6, 2) and out["radii"].shape == (2, 6)
    assert out["means2d"].grad is not None and float(out["means2d"].grad.abs().sum()) > 0
    # camera 0 sees the first Gaussian where a pinhole projection puts it
    p = torch.linalg.inv(c2w[0]) @ torch.cat([means[0].detach(), torch.ones(1)])
    f = 16 / math.tan(0.4)
    torch.testing.assert_close(out["means2d"][0, 0].detach(), torch.stack([16 - f * p[0] / p[2], 16 + f * p[1] / p[2]]))


def test_sh_degree0_equals_rgb_and_eval_sh_degree1():
    means, quats, scales, opacities, colors, c2w, fovy = _scene(torch.float32)
    sh = ((colors - 0.5) / 0.28209479177387814)[:, None, :]
    a = rasterize_gaussians(means, quats, scales, opacities, colors, c2w, fovy, 16, 16, backend="torch")
    b = rasterize_gaussians(means, quats, scales, opacities, sh, c2w, fovy, 16, 16, backend="torch")
    torch.testing.assert_close(a["rgb"], b["rgb"], atol=1e-5, rtol=0)
    # degree 1: Y_1 terms are -C1 y, C1 z, -C1 x
    coeffs = torch.zeros(1, 4, 3)
    coeffs[0, 3] = 1.0
    d = torch.tensor([[0.6, 0.0, 0.8]])
    torch.testing.assert_close(eval_sh(coeffs, d), torch.full((1, 3), 0.5 - 0.4886025119029199 * 0.6))


def test_rasterizer_rejects_bad_shapes():
    means, quats, scales, opacities, colors, c2w, fovy = _scene(torch.float32)
    with pytest.raises(ValueError, match=r"quats must be \[6, 4\]"):
        rasterize_gaussians(means, quats[:, :3], scales, opacities, colors, c2w, fovy, 8, 8)
    with pytest.raises(ValueError, match="background must be"):
        rasterize_gaussians(means, quats, scales, opacities, colors, c2w, fovy, 8, 8, torch.zeros(2, 8, 8))


def test_projection_matches_gsplat_torch_reference():
    ref = import_oracle("gsplat.cuda._torch_impl", "pip install gsplat==1.5.3 (the dev extra)")
    _fully_fused_projection, _quat_scale_to_covar_preci = ref._fully_fused_projection, ref._quat_scale_to_covar_preci
    import render.gaussians as G

    means, quats, scales, opacities, colors, c2w, fovy = _scene(torch.float64)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    H, W = 40, 50
    covars = G._covariance(quats, scales)
    ref_cov, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    torch.testing.assert_close(covars, ref_cov)
    viewmats, Ks = G._viewmats(c2w), G._intrinsics(fovy, H, W)
    means2d, cov2d, depth = G._project(means, covars, viewmats, Ks, H, W)
    conic, _, _ = G._screen_extent(cov2d, depth, opacities, means2d, H, W, 0.01)
    radii, ref_means2d, ref_depth, ref_conic, _ = _fully_fused_projection(means, covars, viewmats, Ks, W, H, eps2d=0.3)
    torch.testing.assert_close(means2d, ref_means2d)
    torch.testing.assert_close(depth, ref_depth)
    torch.testing.assert_close(conic, ref_conic)


# -- the field ------------------------------------------------------------------------------------
def _field(**kw) -> GaussianField:
    torch.manual_seed(0)
    cfg = FieldConfig(type="gaussian", gaussian_count=kw.pop("count", 200), **kw)
    return build_field(cfg)


# DreamGaussian's text-stage rates (the defaults are tuned for the CPU demo; configs/gaussian.yaml sets these).
DREAMGAUSSIAN_OPTIM = OptimConfig(gaussian_position_lr=1e-3, gaussian_position_lr_final=2e-5,
                                  gaussian_position_lr_steps=300)


def test_position_lr_schedule():
    assert position_lr(0, 1e-3, 2e-5, 300) == pytest.approx(1e-3)
    assert position_lr(150, 1e-3, 2e-5, 300) == pytest.approx(math.sqrt(1e-3 * 2e-5))
    assert position_lr(300, 1e-3, 2e-5, 300) == pytest.approx(2e-5)
    assert position_lr(1000, 1e-3, 2e-5, 300) == pytest.approx(2e-5)


def test_field_init_and_render_contract():
    field = _field(count=300, gaussian_init_radius=0.5, gaussian_init_opacity=0.1)
    assert isinstance(field, GaussianField) and field.count == 300
    assert float(field.means.detach().norm(dim=-1).max()) <= 0.5 + 1e-6
    torch.testing.assert_close(field.opacities, torch.full((300,), 0.1))
    cams = orbit_cameras(2, 15.0, 2.0, 50.0)
    out = field.render(cams, 16, 12, background_kind="white")
    assert out["rgb"].shape == (2, 16, 12, 3) and out["opacity"].shape == (2, 16, 12, 1)
    assert out["depth"].shape == (2, 16, 12, 1) and out["albedo"].shape == (2, 16, 12, 3)
    assert out["dirs"].shape == (2, 16, 12, 3) and out["normal"] is None
    torch.testing.assert_close(out["rgb"], out["albedo"] + (1 - out["opacity"]))
    groups = {g["name"]: g["lr"] for g in field.param_groups(DREAMGAUSSIAN_OPTIM)}
    assert groups == {"gaussian_means": 1e-3, "gaussian_log_scales": 5e-3, "gaussian_quats": 5e-3,
                      "gaussian_opacity_logits": 0.05, "gaussian_sh_dc": 0.01}


def _constructed_field():
    """Four Gaussians: A small + hot (clone), B large + hot (split), C faint (prune), D quiet (keep)."""
    field = _field(count=4, gaussian_densify_grad_threshold=0.01, gaussian_dense_scale=0.05,
                   gaussian_prune_opacity=0.05, gaussian_prune_scale=0.5)
    with torch.no_grad():
        field.means.copy_(torch.tensor([[0.0, 0, 0], [0.3, 0, 0], [0, 0.3, 0], [0, 0, 0.3]]))
        field.log_scales.copy_(torch.tensor([0.02, 0.2, 0.05, 0.05]).log()[:, None].expand(4, 3))
        field.opacity_logits.copy_(torch.logit(torch.tensor([0.5, 0.5, 0.01, 0.5])))
        field.sh_dc.copy_(torch.arange(12.0).reshape(4, 3))
        field.grad_accum.copy_(torch.tensor([0.05, 0.05, 0.001, 0.001]) * 2)
        field.grad_count.fill_(2.0)
    return field


def test_densify_clone_split_prune_counts_and_adam_state():
    field = _constructed_field()
    optimizer = torch.optim.Adam(field.param_groups(OptimConfig()), eps=1e-15)
    loss = sum((p * p).sum() for p in field.parameters())
    loss.backward()
    optimizer.step()
    moments = {name: optimizer.state[p]["exp_avg"].clone() for name, p in field.named_parameters()}
    before = {name: p.detach().clone() for name, p in field.named_parameters()}
    counts = field.densify_and_prune(optimizer)
    assert counts == {"cloned": 1, "split": 1, "pruned": 1, "count": 5}
    assert field.count == 5  # A, D kept; A's clone; B's two children; C pruned
    for name, p in field.named_parameters():
        state = optimizer.state[p]
        assert p.shape[0] == 5 and state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape, name
        # rows: kept [A, D] carry their moments, new rows (A's clone, B's children) start at zero
        torch.testing.assert_close(state["exp_avg"][:2], moments[name][[0, 3]])
        assert float(state["exp_avg"][2:].abs().sum()) == 0.0
    for name in ("sh_dc", "opacity_logits", "quats"):  # rows A, D, A, B, B
        torch.testing.assert_close(getattr(field, name).detach(), before[name][[0, 3, 0, 1, 1]])
    torch.testing.assert_close(field.log_scales[:3].detach(), before["log_scales"][[0, 3, 0]])
    torch.testing.assert_close(field.scales[3:].detach(), before["log_scales"][[1, 1]].exp() / 1.6)
    assert field.grad_accum.shape == (5,) and float(field.grad_accum.sum()) == 0.0
    # the optimizer keeps stepping on the resized parameters
    sum((p * p).sum() for p in field.parameters()).backward()
    optimizer.step()


def test_after_step_schedule_and_densify_cadence():
    field = _constructed_field()
    field.cfg.gaussian_densify_every = 10
    optimizer = torch.optim.Adam(field.param_groups(DREAMGAUSSIAN_OPTIM))
    field.after_step(8, optimizer)
    assert field.count == 4
    assert optimizer.param_groups[0]["lr"] == pytest.approx(position_lr(9, 1e-3, 2e-5, 300))
    field.after_step(9, optimizer)  # the 10th step
    assert field.count == 5


def test_after_backward_accumulates_ndc_gradient():
    field = _field(count=50, gaussian_init_opacity=0.5)
    cams = orbit_cameras(2, 15.0, 2.0, 50.0)
    out = field.render(cams, 16, 16)
    out["rgb"].sum().backward()
    field.after_backward(out, 0)
    seen = (out["radii"] > 0).sum(0).float()
    torch.testing.assert_close(field.grad_count, seen)
    expected = ((out["means2d"].grad * torch.tensor([8.0, 8.0])).norm(dim=-1) * (out["radii"] > 0)).sum(0)
    torch.testing.assert_close(field.grad_accum, expected)


def test_checkpoint_with_a_different_count_loads_and_renders_identically():
    field = _constructed_field()
    field.densify_and_prune()
    state = {k: v.clone() for k, v in field.state_dict().items()}
    fresh = _field(count=4)
    optimizer = torch.optim.Adam(fresh.param_groups(OptimConfig()))
    fresh.load_state_dict(state)
    assert fresh.count == 5
    cams = orbit_cameras(1, 10.0, 2.0, 50.0)
    with torch.no_grad():
        torch.testing.assert_close(fresh.render(cams, 12, 12)["rgb"], field.render(cams, 12, 12)["rgb"])
    assert optimizer.param_groups[0]["params"][0] is fresh.means  # the optimizer still holds the parameters


def test_trainer_checkpoint_round_trip_after_densification(tmp_path):
    """The Trainer's own save / load path: a checkpoint whose Gaussian count changed loads into a fresh
    Trainer (field and Adam state), renders identically and keeps training."""
    from dreamfusion.config import load_config
    from dreamfusion.train import Trainer

    cfg = load_config("demo", ["field.type=gaussian", "field.gaussian_count=300", "field.gaussian_densify_every=1",
                               "field.gaussian_densify_grad_threshold=0.0", "field.gaussian_init_opacity=0.5"])
    trainer = Trainer(cfg, tmp_path, torch.device("cpu"))
    cams = orbit_cameras(1, 10.0, 2.4, 45.0)
    out = trainer.render_batch(cams, "albedo")
    out["rgb"].mean().backward()
    trainer.field.after_backward(out, 0)
    trainer.optimizer.step()
    trainer.field.after_step(0, trainer.optimizer)  # every Gaussian seen is hot: the count grows
    n = trainer.field.count
    assert n > 300
    state = trainer.state()
    fresh = Trainer(cfg, tmp_path, torch.device("cpu"))
    fresh.load(state)
    assert fresh.field.count == n
    for p_old, p_new in zip(trainer.optimizer.param_groups, fresh.optimizer.param_groups):
        for a, b in zip(p_old["params"], p_new["params"]):
            torch.testing.assert_close(trainer.optimizer.state[a]["exp_avg"], fresh.optimizer.state[b]["exp_avg"])
    with torch.no_grad():
        torch.testing.assert_close(fresh.field.render(cams, 16, 16)["rgb"], trainer.field.render(cams, 16, 16)["rgb"])
    fresh.render_batch(cams, "albedo")["rgb"].mean().backward()
    fresh.optimizer.step()


def test_density_integrates_to_the_splat_optical_depth():
    """Across a flat splat along its thin axis, the integral of density is -ln(1 - opacity) (up to the 3-sigma cut)."""
    field = _field(count=1, gaussian_init_opacity=0.6)
    with torch.no_grad():
        field.means.zero_()
        field.log_scales.copy_(torch.tensor([[0.1, 0.005, 0.1]]).log())
        field.quats.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    y = torch.linspace(-0.5, 0.5, 20001)
    pts = torch.stack([torch.zeros_like(y), y, torch.zeros_like(y)], -1)
    with torch.no_grad():
        tau = torch.trapezoid(field.density(pts), y)
    assert float(tau) == pytest.approx(-math.log(1 - 0.6) * math.erf(3 / math.sqrt(2)), rel=1e-4)


def test_density_matches_brute_force_and_albedo_is_weighted_colour():
    field = _field(count=400, gaussian_init_opacity=0.3)
    with torch.no_grad():
        field.sh_dc.uniform_(-1, 1)
        field.log_scales.add_(torch.randn_like(field.log_scales) * 0.3)
        field.quats.copy_(torch.randn_like(field.quats))
    points = (torch.rand(3000, 3, generator=torch.Generator().manual_seed(3)) - 0.5) * 1.4
    from render.gaussians import quat_to_rotmat

    # oracle: every point x every Gaussian; covariance widened by the volume dilation d (Sigma + d^2 I), peak
    # extinction -ln(1 - opacity) / (sqrt(2 pi) thinnest scale), cut at 3 sigma
    R = quat_to_rotmat(torch.nn.functional.normalize(field.quats, dim=-1))
    s = torch.sqrt(field.scales ** 2 + field.volume_dilation ** 2)
    cov = R @ torch.diag_embed(s ** 2) @ R.transpose(1, 2)
    d = points[:, None, :] - field.means[None]
    m2 = torch.einsum("mni,nij,mnj->mn", d, torch.linalg.inv(cov), d)
    peak = -torch.log(1 - field.opacities) / (math.sqrt(2 * math.pi) * s.min(-1).values)
    w = torch.where(m2 <= 9.0, peak * torch.exp(-0.5 * m2), torch.zeros_like(m2))
    with torch.no_grad():
        out = field(points)
        torch.testing.assert_close(field.density(points), w.sum(1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["density"], w.sum(1).detach(), rtol=1e-4, atol=1e-6)
    want = (w @ field.base_colors) / w.sum(1, keepdim=True)
    hit = w.sum(1) > 1e-2
    torch.testing.assert_close(out["albedo"][hit], want[hit].detach(), rtol=1e-4, atol=1e-5)


# -- .ply / .splat -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sh_degree", [0, 1])
def test_ply_round_trip_header_and_order(tmp_path, sh_degree):
    from dreamfusion.export.ply import read_ply, write_ply

    field = _field(count=7, gaussian_sh_degree=sh_degree)
    with torch.no_grad():
        for p in field.parameters():
            p.copy_(torch.randn_like(p))
    path = write_ply(tmp_path / "splats.ply", field)
    raw = path.read_bytes()
    header = raw[:raw.index(b"end_header\n") + len(b"end_header\n")].decode("ascii")
    rest = [f"f_rest_{i}" for i in range(3 * ((sh_degree + 1) ** 2 - 1))]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert header == ("ply\nformat binary_little_endian 1.0\nelement vertex 7\n"
                      + "".join(f"property float {n}\n" for n in names) + "end_header\n")
    assert len(raw) == len(header) + 7 * 4 * len(names)
    row0 = struct.unpack(f"<{len(names)}f", raw[len(header):len(header) + 4 * len(names)])
    assert row0[:3] == pytest.approx(field.means[0].tolist()) and row0[3:6] == (0.0, 0.0, 0.0)
    assert row0[-4:] == pytest.approx(field.quats[0].tolist())
    back = read_ply(path)
    torch.testing.assert_close(back["means"], field.means.detach())
    torch.testing.assert_close(back["log_scales"], field.log_scales.detach())
    torch.testing.assert_close(back["quats"], field.quats.detach())
    torch.testing.assert_close(back["opacity_logits"], field.opacity_logits.detach())
    torch.testing.assert_close(back["sh_dc"], field.sh_dc.detach())
    if sh_degree:
        torch.testing.assert_close(back["sh_rest"], field.sh_rest.detach())
    # a field loaded from the .ply renders like the original
    fresh = _field(count=2, gaussian_sh_degree=sh_degree)
    fresh.load_state_dict({**back, "grad_accum": torch.zeros(7), "grad_count": torch.zeros(7)})
    cams = orbit_cameras(1, 10.0, 2.0, 50.0)
    with torch.no_grad():
        torch.testing.assert_close(fresh.render(cams, 8, 8)["rgb"], field.render(cams, 8, 8)["rgb"])


def test_splat_file_layout(tmp_path):
    from dreamfusion.export.ply import write_splat

    field = _field(count=3)
    with torch.no_grad():
        field.log_scales.uniform_(-4, -2)
        field.opacity_logits.uniform_(-2, 2)
        field.sh_dc.uniform_(-1, 1)
        field.quats.copy_(torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, -0.5, 0.5], [0.0, 0.6, 0.0, -0.8]]))
    path = write_splat(tmp_path / "a.splat", field)
    raw = path.read_bytes()
    assert len(raw) == 3 * 32
    opacity = torch.sigmoid(field.opacity_logits).detach().double()
    order = torch.argsort(-(field.scales.detach().double().prod(-1) * opacity))  # largest first
    expected_q = {0: (255, 128, 128, 128), 1: (192, 192, 64, 192), 2: (128, 205, 128, 26)}
    for row, i in enumerate(order.tolist()):
        rec = raw[32 * row:32 * (row + 1)]
        x, y, z, s0, s1, s2 = struct.unpack("<6f", rec[:24])
        assert (x, y, z) == pytest.approx(field.means[i].tolist())
        assert (s0, s1, s2) == pytest.approx(field.scales[i].tolist(), rel=1e-6)
        colour = (0.5 + 0.28209479177387814 * field.sh_dc[i].detach().double()).clamp(0, 1) * 255
        assert tuple(rec[24:27]) == tuple(round(float(c)) for c in colour)
        assert rec[27] == round(float(opacity[i]) * 255)
        assert tuple(rec[28:32]) == expected_q[i]


@pytest.mark.gpu
def test_gsplat_cuda_matches_torch_rasterizer():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    import_oracle("gsplat", "pip install gsplat (the CUDA rasterizer)")
    means, quats, scales, opacities, colors, c2w, fovy = (t.float().cuda() for t in _scene(torch.float32, n=200))
    H, W = 64, 80
    leaves = [t.clone().requires_grad_() for t in (means, quats, scales, opacities, colors)]
    outs, grads = [], []
    for backend in ("gsplat", "torch"):
        out = rasterize_gaussians(*leaves, c2w, fovy, H, W, backend=backend)
        loss = out["rgb"].sum() + out["alpha"].sum() + 0.1 * out["depth"].sum()
        grads.append(torch.autograd.grad(loss, leaves))
        outs.append(out)
    for key in ("rgb", "alpha", "depth", "means2d"):
        torch.testing.assert_close(outs[0][key], outs[1][key], atol=2e-3, rtol=1e-3, msg=lambda m: f"{key}: {m}")
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-2)


# -- convergence under the embedded prior (the demo at Gaussian settings) ---------------------------------
DEMO_GAUSSIAN = ["field.type=gaussian", "field.gaussian_count=3000", "field.gaussian_init_radius=0.8",
                 "field.gaussian_max_count=8000", "field.gaussian_prune_opacity=0.05",
                 "optim.gaussian_position_lr=0.005", "optim.gaussian_position_lr_final=0.0002",
                 "optim.gaussian_position_lr_steps=600"]


@pytest.mark.slow  # ~80 s of training + export on the shared 2-core machine
def test_demo_gaussians_converge_to_the_cube(tmp_path):
    import subprocess
    import sys

    import numpy as np
    import trimesh

    from dreamfusion.export.ply import read_ply
    from dreamfusion.guidance.primitives import inside
    from dreamfusion.metrics import volumetric_iou

    proc = subprocess.run([sys.executable, "-m", "dreamfusion", "--config", "demo", 'prompt=an orange cube',
                           f"output_dir={tmp_path}", *DEMO_GAUSSIAN], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from pathlib import Path

    run = Path(proc.stdout.strip().splitlines()[-1])
    splats = read_ply(run / "splats.ply")
    assert 1000 < splats["means"].shape[0] <= 8000
    assert (run / "orbit.mp4").stat().st_size > 0
    mesh = trimesh.load(run / "mesh" / "model.glb", force="mesh")
    iou = volumetric_iou(np.asarray(mesh.vertices), np.asarray(mesh.faces), lambda p: inside("cube", p), 96)
    assert iou >= 0.8, f"mesh-from-splats IoU {iou:.3f}"


def test_progressive_resolution_follows_the_milestones(tmp_path):
    """render.progressive_sizes / progressive_milestones (DreamGaussian's 128 -> 512): `fit` hands the guidance
    renders of side sizes[i] from milestone i - 1 on; render_size is the same rule without a Trainer."""
    from dreamfusion.config import load_config
    from dreamfusion.train import Trainer, render_size

    cfg = load_config("demo", ["field.type=gaussian", "field.gaussian_count=200", "steps=6", "preview_every=0",
                               "render.progressive_sizes=[8,12,16]", "render.progressive_milestones=[2,5]"])
    assert [render_size(s, cfg.render) for s in (0, 1, 2, 4, 5, 100)] == [(8, 8), (8, 8), (12, 12), (12, 12),
                                                                           (16, 16), (16, 16)]
    plain = load_config("demo", ["render.width=24", "render.height=20"]).render
    assert render_size(1000, plain) == (20, 24)
    seen = []

    def guidance(rgb, cams, step, steps, generator=None):
        seen.append(tuple(rgb.shape[1:3]))
        return {"loss_sds": rgb.mean()}

    Trainer(cfg, tmp_path, torch.device("cpu")).fit(guidance)
    assert seen == [(8, 8), (8, 8), (12, 12), (12, 12), (12, 12), (16, 16)]


@pytest.mark.parametrize("override, fragment", [
    ("render.progressive_milestones=[100,200]", "one entry fewer"),
    ("render.progressive_sizes=[64,0]", "must be positive"),
])
def test_progressive_resolution_config_errors(override, fragment):
    from dreamfusion.config import load_config
    from dreamfusion.errors import ConfigError

    extra = ["render.progressive_milestones=[100]"] if "sizes" in override else ["render.progressive_sizes=[64,128]"]
    with pytest.raises(ConfigError, match=fragment):
        load_config("demo", extra + [override])
    with pytest.raises(ConfigError, match="positive and increasing"):
        load_config("demo", ["render.progressive_sizes=[64,128,256]", "render.progressive_milestones=[300,200]"])


def test_white_or_black_background_is_one_of_the_two_per_view():
    from dreamfusion.fields.background import solid_background

    g = torch.Generator().manual_seed(3)
    bg = solid_background("white_or_black", (64, 5, 4), g)
    per_view = bg.reshape(64, -1)
    assert torch.equal(per_view.min(1).values, per_view.max(1).values)  # solid per view
    levels = per_view[:, 0]
    assert set(levels.tolist()) == {0.0, 1.0}
    assert 16 <= int(levels.sum()) <= 48  # equal odds: 32 expected, binomial sd 4
    again = solid_background("white_or_black", (64, 5, 4), torch.Generator().manual_seed(3))
    assert torch.equal(again, bg)


def test_mesh_level_is_the_fields_own_unless_configured():
    """export.auto_optical_depth: null -> 0.15 for splats, 0.3 for volumetric fields; a value overrides both."""
    from dreamfusion.config import FieldConfig, load_config
    from dreamfusion.errors import ConfigError
    from dreamfusion.exporting import surface_optical_depth
    from dreamfusion.fields import build_field

    splats = _field(count=10)
    nerf = build_field(FieldConfig(n_levels=2, log2_hashmap_size=8, base_resolution=4, hidden_dim=8))
    assert (surface_optical_depth(splats, None), surface_optical_depth(nerf, None)) == (0.15, 0.3)
    assert (surface_optical_depth(splats, 0.2), surface_optical_depth(nerf, 0.2)) == (0.2, 0.2)
    assert load_config("demo").export.auto_optical_depth is None
    with pytest.raises(ConfigError, match="export.auto_optical_depth must be positive"):
        load_config("demo", ["export.auto_optical_depth=0"])


def test_cli_gaussian_config_with_tiny_sd_writes_ply_glb_and_video(tiny_sd_dir, tmp_path):
    """Issue 6's first "done when": --config gaussian on the tiny SD folder, 10 steps through the progressive
    schedule (sizes shrunk for the CPU) and the white_or_black background, then every artifact."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from dreamfusion.export.ply import read_ply

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "dreamfusion", "--config", "gaussian", "prompt=a red cube",
           f"guidance.model={tiny_sd_dir}", "guidance.vae_resolution=32", "steps=10", "device=cpu",
           "field.gaussian_count=500", "render.progressive_sizes=[16,24,32]", "render.progressive_milestones=[4,8]",
           "field.gaussian_densify_every=5", f"output_dir={tmp_path}", "export.resolution=32",
           "export.texture=vertex", "export.video_frames=4", "export.video_resolution=32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = Path(proc.stdout.strip().splitlines()[-1])
    splats = read_ply(run / "splats.ply")
    assert splats["means"].shape[1] == 3 and splats["means"].shape[0] > 0
    assert (run / "mesh" / "model.glb").stat().st_size > 0 and (run / "orbit.mp4").stat().st_size > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 10 and all(math.isfinite(r["loss"]) for r in rows)
