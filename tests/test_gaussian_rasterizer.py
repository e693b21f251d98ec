"""Gaussian rasterizer: the tiled plain-PyTorch rasterizer against a brute-force oracle (values and
gradients), the projection against gsplat's pure-torch reference, and the gsplat CUDA twin (gpu marker)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import import_oracle
from render.cameras import look_at
from render.gaussians import eval_sh, rasterize_gaussians
from render.splat_math import SH_C0, quat_to_rotmat



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



def test_splat_conventions_closed_forms():
    """render/splat_math.py, the one definition the field and the rasterizer share: SH_C0 = Y_0^0 = 1 / (2 sqrt(pi)),
    and the quaternion (cos(a/2), sin(a/2) n) turns by a about n (Rodrigues: R = I + sin a K + (1 - cos a) K^2)."""
    assert SH_C0 == 0.5 / math.sqrt(math.pi)  # exact in float64
    g = torch.Generator().manual_seed(0)
    axes = torch.nn.functional.normalize(torch.randn(8, 3, generator=g, dtype=torch.float64), dim=-1)
    angles = torch.rand(8, generator=g, dtype=torch.float64) * 2 * math.pi
    quats = torch.cat([torch.cos(angles / 2)[:, None], torch.sin(angles / 2)[:, None] * axes], -1)
    K = torch.zeros(8, 3, 3, dtype=torch.float64)  # K = [n]_x, the cross product with n
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -axes[:, 2], axes[:, 1], -axes[:, 0]
    K = K - K.transpose(1, 2)
    sin, cos = torch.sin(angles)[:, None, None], torch.cos(angles)[:, None, None]
    torch.testing.assert_close(quat_to_rotmat(quats), torch.eye(3, dtype=torch.float64) + sin * K + (1 - cos) * K @ K)

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

