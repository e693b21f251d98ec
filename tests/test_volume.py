"""Volume rendering against closed forms (slab, half-space, sphere normals) and nerfacc as a twin."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import NERFACC_INSTALL, import_oracle
from render.volume import composite, ray_aabb, render_rays, stratified_t


def _t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def constant_field(sigma: float, albedo=(0.2, 0.5, 0.9)):
    def field_fn(points):
        return {"density": torch.full(points.shape[:1], sigma, dtype=points.dtype),
                "albedo": torch.tensor(albedo, dtype=points.dtype).expand(points.shape[0], 3)}
    return field_fn


def sphere_field(r0=0.5, sharpness=50.0, scale=50.0):
    """density = scale * softplus(sharpness (r0 - |x|)): -grad density is exactly x / |x| in direction."""
    def field_fn(points):
        r = points.norm(dim=-1)
        return {"density": scale * F.softplus(sharpness * (r0 - r)), "albedo": torch.ones_like(points) * 0.5}
    return field_fn


# ---------------------------------------------------------------- ray_aabb


def test_ray_aabb_hand_cases():
    s = math.sqrt(0.5)
    origins = _t([0, 0, 3], [0, 0, 0], [0, 2, 3], [0, 0, 3], [-3, -3, 0], [0, 0, 3], [0.5, -0.2, 0.1])
    dirs = _t([0, 0, -1], [1, 0, 0], [0, 0, -1], [0, 0, 1], [s, s, 0], [0, 0, -2], [0, 1, 0])
    near, far, hit = ray_aabb(origins, dirs, 1.0)
    torch.testing.assert_close(hit, torch.tensor([True, True, False, False, True, True, True]))
    # front face at t = 2, back at 4 | inside: exit at x = 1 | misses (outside in y; box behind) -> 0, 0
    # diagonal in xy: enters at (-1, -1) after 2 sqrt 2, leaves at (1, 1) | non-unit dir: t in units of |d|
    # inside, along +y from y = -0.2: exits at y = 1
    torch.testing.assert_close(near, _t(2, 0, 0, 0, 2 * math.sqrt(2), 1, 0), atol=1e-6, rtol=0)
    torch.testing.assert_close(far, _t(4, 1, 0, 0, 4 * math.sqrt(2), 2, 1.2), atol=1e-6, rtol=0)


def test_ray_aabb_other_bound_and_shapes():
    near, far, hit = ray_aabb(_t([0.3, 0.1, -5]), _t([0, 0, 1]), 0.5)
    assert hit.item() and math.isclose(near.item(), 4.5, abs_tol=1e-6) and math.isclose(far.item(), 5.5, abs_tol=1e-6)
    with pytest.raises(ValueError, match=r"origins and dirs must both be \[N, 3\]"):
        ray_aabb(torch.zeros(4, 3), torch.zeros(4, 2), 1.0)


# ---------------------------------------------------------------- stratified_t / composite


def test_stratified_t_midpoints_and_jitter():
    near, far = _t(0.0, 1.0), _t(2.0, 5.0)
    t = stratified_t(near, far, 4, perturb=False)
    torch.testing.assert_close(t, _t([0.25, 0.75, 1.25, 1.75], [1.5, 2.5, 3.5, 4.5]))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = stratified_t(near, far, 4, perturb=True, generator=g1)
    b = stratified_t(near, far, 4, perturb=True, generator=g2)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    width = ((far - near) / 4)[:, None]
    lo = near[:, None] + width * torch.arange(4)
    assert ((a >= lo) & (a <= lo + width)).all()  # one sample inside each bin
    assert not torch.allclose(a, t)


def test_composite_matches_product_form():
    g = torch.Generator().manual_seed(0)
    sigma = torch.rand(5, 32, generator=g, dtype=torch.float64) * 10
    deltas = torch.rand(5, 32, generator=g, dtype=torch.float64) * 0.1
    alpha = 1 - torch.exp(-sigma * deltas)
    trans = torch.cumprod(torch.cat([torch.ones(5, 1, dtype=torch.float64), 1 - alpha[:, :-1]], 1), 1)
    torch.testing.assert_close(composite(sigma, deltas), alpha * trans, atol=1e-12, rtol=1e-10)
    # huge densities: the first sample takes everything, no NaN
    w = composite(torch.full((1, 4), 1e30), torch.full((1, 4), 0.1))
    torch.testing.assert_close(w, _t([1.0, 0, 0, 0]))


def test_composite_matches_nerfacc():
    volrend = import_oracle("nerfacc.volrend", NERFACC_INSTALL)
    g = torch.Generator().manual_seed(1)
    t_starts = torch.sort(torch.rand(6, 20, generator=g) * 3, dim=1).values
    t_ends = t_starts + torch.rand(6, 20, generator=g) * 0.2
    sigmas = torch.rand(6, 20, generator=g) * 5
    expected, _, _ = volrend.render_weight_from_density(t_starts, t_ends, sigmas)
    torch.testing.assert_close(composite(sigmas, t_ends - t_starts), expected, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- render_rays: closed forms


@pytest.mark.parametrize("perturb", [False, True])
def test_constant_slab_opacity_weights_albedo_depth(perturb):
    sigma, bound, n = 0.7, 1.0, 16
    s3 = 1 / math.sqrt(3)
    origins = _t([0.2, -0.3, 3.0], [-3, -3, -3])
    dirs = _t([0, 0, -1], [s3, s3, s3])  # along z: length 2; corner to corner: length 2 sqrt 3
    out = render_rays(constant_field(sigma), origins, dirs, bound, n, perturb=perturb,
                      generator=torch.Generator().manual_seed(0))
    lengths = _t(2.0, 2 * math.sqrt(3))
    torch.testing.assert_close(out["opacity"], 1 - torch.exp(-sigma * lengths), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["weights"].sum(-1), out["opacity"], atol=1e-6, rtol=0)
    torch.testing.assert_close(out["albedo"], out["opacity"][:, None] * _t(0.2, 0.5, 0.9), atol=1e-6, rtol=0)
    # w_i = exp(-sigma delta i) (1 - exp(-sigma delta)), depth = sum w_i t_i (double-precision oracle)
    near = _t(2.0, 2 * math.sqrt(3))
    for r in range(2):
        delta = lengths[r].item() / n
        w = [math.exp(-sigma * delta * i) * (1 - math.exp(-sigma * delta)) for i in range(n)]
        torch.testing.assert_close(out["weights"][r], torch.tensor(w, dtype=torch.float32), atol=1e-6, rtol=0)
        depth = sum(wi * ti for wi, ti in zip(w, out["t"][r].tolist()))
        assert math.isclose(out["depth"][r].item(), depth, abs_tol=1e-5)
        if not perturb:
            mids = [near[r].item() + delta * (i + 0.5) for i in range(n)]
            torch.testing.assert_close(out["t"][r], torch.tensor(mids), atol=1e-5, rtol=0)
    assert out["normal"] is None and out["sample_normal"] is None


@pytest.mark.parametrize("direction", [(1.0, 0.0, 0.0), (1.0, 0.3, -0.2)])
def test_half_space_depth_is_distance_to_plane(direction):
    def field_fn(points):
        return {"density": torch.where(points[:, 0] > 0, 1e3, 0.0), "albedo": torch.ones_like(points)}
    d = _t(*direction)
    d = d / d.norm()
    origin = _t(-3.0, 0.0, 0.0)
    n = 64
    out = render_rays(field_fn, origin[None], d[None], 1.0, n)
    near, far, _ = ray_aabb(origin[None], d[None], 1.0)
    bin_width = ((far - near) / n).item()
    plane_t = 3.0 / d[0].item()  # where x = 0
    assert abs(out["depth"].item() - plane_t) < bin_width
    assert math.isclose(out["opacity"].item(), 1.0, abs_tol=1e-6)


def test_missed_rays_are_empty_and_not_evaluated():
    seen = []

    def field_fn(points):
        seen.append(points.shape[0])
        return constant_field(2.0)(points)

    origins = _t([0, 0, 3], [0, 5, 3], [0, 0, 3])
    dirs = _t([0, 0, -1], [0, 0, -1], [0, 0, 1])  # hit, miss (above the box), miss (box behind)
    out = render_rays(field_fn, origins, dirs, 1.0, 8, need_normals=True)
    assert seen == [8]  # only the hit ray's samples reach the field
    for key in ("opacity", "depth"):
        assert out[key][1:].abs().max().item() == 0.0
    for key in ("albedo", "normal"):
        assert out[key][1:].abs().max().item() == 0.0
    assert out["weights"][1:].abs().max().item() == 0.0 and out["t"][1:].abs().max().item() == 0.0
    assert math.isclose(out["opacity"][0].item(), 1 - math.exp(-4.0), abs_tol=1e-5)


def test_all_rays_missing_never_calls_the_field():
    def field_fn(points):
        raise AssertionError("field called")

    out = render_rays(field_fn, _t([0, 5, 3], [0, 0, 3]), _t([0, 0, -1], [0, 0, 1]), 1.0, 8, need_normals=True)
    for key in ("weights", "opacity", "depth", "albedo", "normal", "t"):
        assert out[key].abs().max().item() == 0.0
    assert out["weights"].shape == (2, 8) and out["normal"].shape == (2, 3)


# ---------------------------------------------------------------- normals


def _sphere_rays(n_side=5, r0=0.5):
    """Rays from z = 3 toward -z, impact parameters up to 0.8 r0."""
    xs = torch.linspace(-0.8 * r0 / math.sqrt(2), 0.8 * r0 / math.sqrt(2), n_side)
    xx, yy = torch.meshgrid(xs, xs, indexing="ij")
    origins = torch.stack([xx.flatten(), yy.flatten(), torch.full((n_side * n_side,), 3.0)], -1)
    return origins, _t(0, 0, -1).expand_as(origins).contiguous()


def test_sphere_normals_point_outward():
    r0 = 0.5
    origins, dirs = _sphere_rays(r0=r0)
    out = render_rays(sphere_field(r0), origins, dirs, 1.0, 256, need_normals=True)
    # per sample: -grad(density) of a radial profile is exactly x / |x| (checked for r < 0.8, where
    # |grad| > 1e-4; far out the softplus gradient underflows below the normalisation's eps)
    points = origins[:, None] + dirs[:, None] * out["t"][..., None]
    radial = points / points.norm(dim=-1, keepdim=True)
    shell = points.norm(dim=-1) < 0.8
    assert shell.sum() > 1000
    torch.testing.assert_close(out["sample_normal"][shell], radial[shell], atol=1e-5, rtol=0)
    # per ray: the composited normal points along the sphere's normal where the ray meets r = r0
    b2 = (origins[:, :2] ** 2).sum(-1)
    t_hit = 3.0 - torch.sqrt(r0 ** 2 - b2)
    surface_normal = (origins + dirs * t_hit[:, None]) / r0
    cos = F.cosine_similarity(out["normal"], surface_normal, dim=-1)
    assert torch.rad2deg(torch.acos(cos.clamp(max=1))).max() < 3.0
    assert (out["opacity"] > 0.999).all()  # opaque, so the premultiplied normal is ~unit
    torch.testing.assert_close(out["normal"].norm(dim=-1), out["opacity"], atol=2e-3, rtol=0)
    # and along the sphere's normal at the expected termination point (the soft shell sits ~0.01 outside r0)
    p = origins + dirs * out["depth"][:, None]
    cos = F.cosine_similarity(out["normal"], p, dim=-1)
    assert torch.rad2deg(torch.acos(cos.clamp(max=1))).max() < 1.0
    # depth against an independent dense quadrature in double precision: trapezoid optical depth
    # tau(t), T = exp(-tau), depth = integral t sigma T dt over 200k steps
    t = torch.linspace(2.0, 4.0, 200_001, dtype=torch.float64)
    pts = origins.double()[:, None] + dirs.double()[:, None] * t[None, :, None]
    sig = sphere_field(r0)(pts.reshape(-1, 3))["density"].reshape(len(origins), -1)
    dt = t[1] - t[0]
    tau = torch.cat([torch.zeros(len(origins), 1, dtype=torch.float64),
                     torch.cumsum((sig[:, 1:] + sig[:, :-1]) / 2 * dt, 1)], 1)
    depth = (t * sig * torch.exp(-tau)).sum(1) * dt
    torch.testing.assert_close(out["depth"].double(), depth, atol=1e-3, rtol=0)


def test_normals_are_differentiable_gradcheck():
    r0 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    origins = _t([0.1, 0.2, 3.0], [0.25, -0.1, 3.0], dtype=torch.float64)
    dirs = _t([0, 0, -1], [0, 0, -1], dtype=torch.float64)

    def normal_of(radius):
        def field_fn(points):
            r = points.norm(dim=-1)
            return {"density": 5 * F.softplus(10 * (radius - r)) * (1 + points[:, 0]),
                    "albedo": torch.ones_like(points)}
        return render_rays(field_fn, origins, dirs, 1.0, 12, need_normals=True)["normal"]

    assert torch.autograd.gradcheck(normal_of, (r0,), eps=1e-6, atol=1e-6)


def test_field_normal_is_used_and_no_grad_still_gives_normals():
    def field_fn(points):
        out = constant_field(1.0)(points)
        out["normal"] = torch.tensor([0.0, 1.0, 0.0]).expand(points.shape[0], 3)
        return out

    out = render_rays(field_fn, _t([0, 0, 3]), _t([0, 0, -1]), 1.0, 8, need_normals=True)
    torch.testing.assert_close(out["normal"], out["opacity"][:, None] * _t(0, 1, 0))
    # autograd normals under no_grad (previews, export): computed, detached
    with torch.no_grad():
        out = render_rays(sphere_field(), _t([0, 0, 3]), _t([0, 0, -1]), 1.0, 64, need_normals=True)
    assert not out["normal"].requires_grad
    torch.testing.assert_close(out["normal"][0] / out["normal"][0].norm(), _t(0, 0, 1), atol=1e-5, rtol=0)


def test_gradients_reach_field_outputs():
    density = torch.full((1 * 8,), 0.5, requires_grad=True)

    def field_fn(points):
        return {"density": density, "albedo": torch.ones_like(points)}

    out = render_rays(field_fn, _t([0, 0, 3]), _t([0, 0, -1]), 1.0, 8)
    out["opacity"].sum().backward()
    # opacity = 1 - exp(-sum sigma_i delta): d/d sigma_i = delta exp(-sum sigma delta)
    delta = 2.0 / 8
    expected = delta * math.exp(-0.5 * 2.0)
    torch.testing.assert_close(density.grad, torch.full((8,), expected), atol=1e-6, rtol=0)


def test_render_rays_checks_field_shapes():
    def bad(points):
        return {"density": torch.zeros(points.shape[0], 1), "albedo": torch.zeros(points.shape[0], 3)}
    with pytest.raises(ValueError, match=r"'density' must be \[M\] = \[4\], got \(4, 1\)"):
        render_rays(bad, _t([0, 0, 3]), _t([0, 0, -1]), 1.0, 4)


# ---------------------------------------------------------------- nerfacc fast path


def test_nerfacc_missing_says_what_to_install(monkeypatch):
    from render import volume_nerfacc
    monkeypatch.setitem(sys.modules, "nerfacc", None)  # makes `import nerfacc` raise ImportError
    with pytest.raises(ImportError, match=r"pip install nerfacc==0\.5\.3"):
        volume_nerfacc.make_estimator(1.0, 8)


def test_update_estimator_marks_occupied_cells_on_cpu():
    import_oracle("nerfacc", NERFACC_INSTALL)
    from render.volume_nerfacc import make_estimator, update_estimator
    res, r0 = 8, 0.5
    est = make_estimator(1.0, resolution=res)
    assert est.binaries.all()  # starts fully occupied
    update_estimator(est, lambda x: 10.0 * (x.norm(dim=-1) < r0).float(), step=0, occ_thre=0.01)
    # cell centres and the near/far corner distances of each cell
    centres = (torch.arange(res) + 0.5) / res * 2 - 1
    cx, cy, cz = torch.meshgrid(centres, centres, centres, indexing="ij")
    c = torch.stack([cx, cy, cz], -1).abs()
    half = 1.0 / res
    far_corner = (c + half).norm(dim=-1)
    near_corner = (c - half).clamp_min(0).norm(dim=-1)
    occupied = est.binaries[0]
    assert occupied[far_corner < r0].all()  # cells entirely inside the sphere
    assert not occupied[near_corner > r0].any()  # cells entirely outside


def test_render_rays_nerfacc_rejects_cpu_tensors():
    import_oracle("nerfacc", NERFACC_INSTALL)
    from render.volume_nerfacc import make_estimator, render_rays_nerfacc
    with pytest.raises(ValueError, match="CUDA"):
        render_rays_nerfacc(constant_field(1.0), _t([0, 0, 3]), _t([0, 0, -1]), 1.0, make_estimator(1.0, 8), 0.01)


@pytest.mark.gpu
def test_nerfacc_matches_torch_forward_and_gradient():
    import_oracle("nerfacc", NERFACC_INSTALL)
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from render.volume_nerfacc import make_estimator, render_rays_nerfacc, update_estimator
    device = torch.device("cuda")
    scale = torch.tensor(3.0, device=device, requires_grad=True)

    def field_fn(points):  # smooth blob with a colour gradient
        r2 = (points ** 2).sum(-1)
        return {"density": scale * torch.exp(-r2 / (2 * 0.3 ** 2)),
                "albedo": torch.sigmoid(points * 2)}

    cams_o = torch.tensor([[0.0, 0.0, 3.0]], device=device).expand(64, 3)
    g = torch.Generator(device="cpu").manual_seed(0)
    targets = (torch.rand(64, 3, generator=g) - 0.5).to(device)
    dirs = F.normalize(targets - cams_o, dim=-1)
    origins = cams_o.contiguous()

    n = 2048
    ref = render_rays(field_fn, origins, dirs, 1.0, n, need_normals=True)
    est = make_estimator(1.0, resolution=64, device=device)
    assert est.binaries.all()  # fresh grid: every cell marched, so only the quadrature differs
    fast = render_rays_nerfacc(field_fn, origins, dirs, 1.0, est, render_step_size=2.0 / n,
                               need_normals=True, early_stop_eps=0.0)
    assert fast["weights"].dim() == 1 and fast["ray_indices"].shape == fast["weights"].shape  # packed
    for key in ("opacity", "depth", "albedo", "normal"):
        torch.testing.assert_close(fast[key], ref[key], atol=2e-3, rtol=0)
    g_ref, = torch.autograd.grad(ref["opacity"].sum() + ref["normal"].sum(), scale)
    g_fast, = torch.autograd.grad(fast["opacity"].sum() + fast["normal"].sum(), scale)
    torch.testing.assert_close(g_fast, g_ref, atol=2e-3, rtol=1e-2)
    # after the grid learns the blob (skipping the cells where the density is < 1e-3), still the same
    update_estimator(est, lambda x: field_fn(x)["density"], step=0, occ_thre=1e-3, render_step_size=1.0)
    assert not est.binaries.all()
    fast = render_rays_nerfacc(field_fn, origins, dirs, 1.0, est, render_step_size=2.0 / n, early_stop_eps=0.0)
    for key in ("opacity", "depth", "albedo"):
        torch.testing.assert_close(fast[key], ref[key].detach(), atol=5e-3, rtol=0)


def test_occupancy_skipping_matches_the_plain_render():
    """Empty-space skipping with a grid derived from the field changes a render by less than min_alpha."""
    from dreamfusion.renderer import occupancy_grid
    from render.volume import render_rays

    class Sphere(torch.nn.Module):
        bound = 1.0

        def density(self, p):
            return 40.0 * torch.sigmoid((0.4 - p.norm(dim=-1)) / 0.02)

        def forward(self, p):
            return {"density": self.density(p), "albedo": (p * 0.5 + 0.5).clamp(0, 1)}

    field = Sphere()
    field.register_parameter("dummy", torch.nn.Parameter(torch.zeros(1)))
    g = torch.Generator().manual_seed(0)
    origins = torch.tensor([0.0, 0.0, 2.5]).expand(500, 3) + 0.3 * torch.randn(500, 3, generator=g)
    dirs = torch.nn.functional.normalize(-origins + 0.3 * torch.randn(500, 3, generator=g), dim=-1)
    occ = occupancy_grid(field, 64, resolution=32)
    assert 0 < occ.float().mean() < 0.2  # it does skip most of the box
    plain = render_rays(field, origins, dirs, 1.0, 64)
    skipped = render_rays(field, origins, dirs, 1.0, 64, occupancy=occ)
    full = render_rays(field, origins, dirs, 1.0, 64, occupancy=torch.ones(32, 32, 32, dtype=torch.bool))
    for key in ("opacity", "depth", "albedo"):
        torch.testing.assert_close(full[key], plain[key])
        torch.testing.assert_close(skipped[key], plain[key], rtol=0, atol=1e-3)
