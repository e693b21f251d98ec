"""Rasterization of 3D Gaussians (Kerbl et al. 2023, "3D Gaussian Splatting"), a pure function of tensors.

    rasterize_gaussians(means, quats, scales, opacities, colors, c2w, fovy, height, width, background)
        -> dict(rgb [B,H,W,3], alpha [B,H,W,1], depth [B,H,W,1], means2d [B,N,2], radii [B,N])

Two twins with one signature: on CUDA with ``gsplat`` importable, ``gsplat.rasterization``; otherwise
(and with ``backend="torch"``) the plain-PyTorch rasterizer below, differentiable by autograd:

1. Projection (EWA splatting, Zwicker et al. 2001; 3DGS eq. 5): Sigma = R S S^T R^T in the world,
   Sigma' = J W Sigma W^T J^T in pixels, J the Jacobian of the perspective map at the mean, plus a
   0.3 px^2 dilation on the diagonal (gsplat's eps2d) so every splat covers about a pixel.
2. Culling: behind the near plane, a singular 2D covariance, a peak alpha below 1/255, or a screen box
   entirely off the image. The screen box of a splat is where alpha can reach 1/255:
   d^T Sigma'^-1 d <= k^2 with k = sqrt(2 ln(255 opacity)) (at most 3.33 sigma, gsplat's 3-sigma rule
   made exact), so culling and tiling never change a pixel.
3. Tiles of 8 x 8 px (16 x 16 for gsplat), each with the depth-sorted list of splats whose box overlaps it; tiles are
   processed in padded batches of similar list length.
4. Front-to-back compositing per pixel (3DGS eq. 3): alpha_i = min(0.99, o_i exp(-d^T Sigma'^-1 d / 2)),
   skipped below 1/255; T_i = prod_{j<i} (1 - alpha_j) by cumprod; C = sum_i alpha_i T_i c_i.
   No early stop at T < 1e-4 (the CUDA kernels stop there; the difference is below 1e-4 of a colour).

Conventions (docs/DESIGN.md): c2w is OpenGL style (camera looks along local -z, +y up); pixel (i, j)
has its centre at (j + 0.5, i + 0.5), row 0 at the top. Internally the camera frame is OpenCV style
(x right, y down, z forward), gsplat's, so screen coordinates are pixel units with the origin at the
top-left corner. Depth is premultiplied like the volume renderer's: sum_i w_i t_i, with t_i the
distance along the pixel's ray to the plane (parallel to the image) through the splat's mean.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .splat_math import ALPHA_MAX, SH_C0, quat_to_rotmat

__all__ = ["rasterize_gaussians", "eval_sh"]

_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
          -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
ALPHA_MIN = 1.0 / 255.0  # splats fainter than this at a pixel are skipped (3DGS)
_CHUNK_ELEMENTS = 1 << 21  # pixel x splat pairs per batch of tiles (~8 MB per float tensor)


def eval_sh(sh: Tensor, dirs: Tensor) -> Tensor:
    """Colour [..., 3] of SH coefficients ``sh`` [..., K, 3] (K = (degree + 1)^2, degree <= 3) seen along
    unit ``dirs`` [..., 3] (from the camera to the splat): ``max(0, sum_k c_k Y_k(dirs) + 0.5)`` (3DGS)."""
    k = sh.shape[-2]
    degree = {1: 0, 4: 1, 9: 2, 16: 3}.get(k)
    if degree is None or sh.shape[-1] != 3:
        raise ValueError(f"eval_sh: sh must be [..., K, 3] with K in 1, 4, 9, 16, got {tuple(sh.shape)}")
    out = SH_C0 * sh[..., 0, :]
    if degree > 0:
        x, y, z = (dirs[..., i:i + 1] for i in range(3))
        out = out - _SH_C1 * y * sh[..., 1, :] + _SH_C1 * z * sh[..., 2, :] - _SH_C1 * x * sh[..., 3, :]
        if degree > 1:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            out = (out + _SH_C2[0] * xy * sh[..., 4, :] + _SH_C2[1] * yz * sh[..., 5, :]
                   + _SH_C2[2] * (2 * zz - xx - yy) * sh[..., 6, :] + _SH_C2[3] * xz * sh[..., 7, :]
                   + _SH_C2[4] * (xx - yy) * sh[..., 8, :])
            if degree > 2:
                out = (out + _SH_C3[0] * y * (3 * xx - yy) * sh[..., 9, :] + _SH_C3[1] * xy * z * sh[..., 10, :]
                       + _SH_C3[2] * y * (4 * zz - xx - yy) * sh[..., 11, :]
                       + _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[..., 12, :]
                       + _SH_C3[4] * x * (4 * zz - xx - yy) * sh[..., 13, :]
                       + _SH_C3[5] * z * (xx - yy) * sh[..., 14, :] + _SH_C3[6] * x * (xx - 3 * yy) * sh[..., 15, :])
    return (out + 0.5).clamp_min(0.0)


def _covariance(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance R S S^T R^T [N, 3, 3] of normalised ``quats`` [N, 4] and scales [N, 3]."""
    m = quat_to_rotmat(quats) * scales[..., None, :]  # R S
    return m @ m.transpose(-1, -2)


def _viewmats(c2w: Tensor) -> Tensor:
    """OpenGL camera-to-world [B, 4, 4] -> OpenCV world-to-camera [B, 4, 4] (flip the y and z axes)."""
    rot, t = c2w[:, :3, :3], c2w[:, :3, 3:]
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=c2w.dtype, device=c2w.device)[:, None]
    w2c = torch.zeros_like(c2w)
    w2c[:, :3, :3] = flip * rot.transpose(1, 2)  # rigid inverse, then flip rows y, z
    w2c[:, :3, 3:] = -(flip * rot.transpose(1, 2)) @ t
    w2c[:, 3, 3] = 1.0
    return w2c


def _intrinsics(fovy: Tensor, height: int, width: int) -> Tensor:
    """Pinhole K [B, 3, 3] in pixels: square pixels, principal point at the image centre."""
    focal = 0.5 * height / torch.tan(0.5 * fovy)
    K = torch.zeros(fovy.shape[0], 3, 3, dtype=fovy.dtype, device=fovy.device)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = focal, focal, 0.5 * width, 0.5 * height, 1.0
    return K


def _project(means: Tensor, covars: Tensor, viewmats: Tensor, Ks: Tensor, height: int, width: int,
             eps2d: float = 0.3) -> tuple[Tensor, Tensor, Tensor]:
    """EWA projection: world means [N,3] and covariances [N,3,3] -> means2d [B,N,2] (pixels),
    cov2d [B,N,2,2] (with the eps2d dilation) and camera depth z [B,N] (gsplat's _persp_proj math)."""
    R, t = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]  # [B,1,3,3], [B,1,3]
    p = (R @ means[None, :, :, None])[..., 0] + t  # [B,N,3]
    cov_c = R @ covars[None] @ R.transpose(-1, -2)  # W Sigma W^T
    x, y, z = p.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # The Jacobian is evaluated with x/z, y/z clamped to 1.3x the field of view (3DGS): far off-screen
    # splats would otherwise get huge footprints from the linearisation.
    zs = torch.where(z.abs() < 1e-6, torch.full_like(z, 1e-6), z)
    lim_x, lim_y = 1.3 * (0.5 * width / fx), 1.3 * (0.5 * height / fy)
    tx = zs * torch.maximum(torch.minimum(x / zs, lim_x), -lim_x)
    ty = zs * torch.maximum(torch.minimum(y / zs, lim_y), -lim_y)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs ** 2, zero, fy / zs, -fy * ty / zs ** 2], -1).reshape(*z.shape, 2, 3)
    cov2d = J @ cov_c @ J.transpose(-1, -2) + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    return means2d, cov2d, z


def _screen_extent(cov2d: Tensor, depth: Tensor, opacities: Tensor, means2d: Tensor, height: int, width: int,
                   near_plane: float) -> tuple[Tensor, Tensor, Tensor]:
    """Conic (a, b, c) of Sigma'^-1 [B,N,3], half extents (rx, ry) [B,N,2] of the box where alpha can reach
    1/255 (zero for culled splats), and the visibility mask [B,N]."""
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = a * c - b * b
    valid = (depth > near_plane) & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conic = torch.stack([c / det, -b / det, a / det], -1)
    with torch.no_grad():
        o = opacities.expand_as(depth)
        valid = valid & (o >= ALPHA_MIN)
        k = torch.sqrt(2.0 * torch.log((o * 255.0).clamp_min(1.0)))
        ext = k[..., None] * torch.stack([a, c], -1).clamp_min(0).sqrt()
        valid = valid & (means2d[..., 0] + ext[..., 0] > 0) & (means2d[..., 0] - ext[..., 0] < width) \
            & (means2d[..., 1] + ext[..., 1] > 0) & (means2d[..., 1] - ext[..., 1] < height)
        ext = torch.where(valid[..., None], ext, torch.zeros_like(ext))
    return conic, ext, valid


def _tile_lists(means2d: Tensor, ext: Tensor, valid: Tensor, depth: Tensor, tile: int, tiles_x: int,
                tiles_y: int) -> tuple[Tensor, Tensor]:
    """(splat index into the flattened [B*N] arrays, tile index into [B * tiles]) of every overlap, sorted by
    tile, then by depth (front first)."""
    B, N = depth.shape
    n_tiles = tiles_x * tiles_y
    lo = torch.floor((means2d - ext) / tile).long()
    hi = torch.floor((means2d + ext) / tile).long()
    x0, x1 = lo[..., 0].clamp(0, tiles_x - 1), hi[..., 0].clamp(0, tiles_x - 1)
    y0, y1 = lo[..., 1].clamp(0, tiles_y - 1), hi[..., 1].clamp(0, tiles_y - 1)
    nx = x1 - x0 + 1
    counts = torch.where(valid, nx * (y1 - y0 + 1), torch.zeros_like(nx)).reshape(-1)
    ids = torch.repeat_interleave(torch.arange(B * N, device=depth.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    offset = torch.arange(ids.shape[0], device=depth.device) - starts[ids]
    nx_i = nx.reshape(-1)[ids]
    tx = x0.reshape(-1)[ids] + offset % nx_i
    ty = y0.reshape(-1)[ids] + offset // nx_i
    tiles = (ids // N) * n_tiles + ty * tiles_x + tx
    rank = torch.empty(B, N, dtype=torch.long, device=depth.device)
    order = torch.argsort(torch.where(valid, depth, torch.full_like(depth, float("inf"))), dim=1)
    rank.scatter_(1, order, torch.arange(N, device=depth.device).expand(B, N).contiguous())
    key = tiles * N + rank.reshape(-1)[ids]
    perm = torch.argsort(key)
    return ids[perm], tiles[perm]


class _Composite(torch.autograd.Function):
    """Front-to-back alpha compositing of depth-sorted splats, with a hand-written backward.

    Forward: alpha_i = min(0.99, exp(logit_i)), zeroed below 1/255; T_i = prod_{j<i} (1 - alpha_j);
    out = [sum_i alpha_i T_i f_i, 1 - T_L].   Backward, with s_i = f_i . dL/d(colour):
    dL/d alpha_k = T_k s_k - (sum_{i>k} alpha_i T_i s_i) / (1 - alpha_k) + dL/d(acc) T_L / (1 - alpha_k),
    and d alpha / d logit = alpha where 1/255 <= alpha < 0.99, else 0. (Autograd through cumprod costs
    about twice as many passes over the [tiles, pixels, splats] tensors.)
    """

    @staticmethod
    def forward(ctx, logits: Tensor, feats: Tensor) -> Tensor:  # [T, P, L], [T, L, F] -> [T, P, F + 1]
        alpha = torch.exp(logits).clamp_(max=ALPHA_MAX)
        alpha = alpha.masked_fill_(alpha < ALPHA_MIN, 0.0)
        trans = torch.cumprod(1.0 - alpha, -1)  # T_{i+1}
        final = trans[..., -1:].clone()
        trans = torch.cat([torch.ones_like(final), trans[..., :-1]], -1)  # T_i
        weights = alpha * trans
        ctx.save_for_backward(alpha, trans, weights, feats, final)
        return torch.cat([weights @ feats, 1.0 - final], -1)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        alpha, trans, weights, feats, final = ctx.saved_tensors
        g_feat, g_acc = grad_out[..., :-1], grad_out[..., -1:]
        s = g_feat @ feats.transpose(1, 2)  # [T, P, L]
        ws = weights * s
        after = ws.sum(-1, keepdim=True) - torch.cumsum(ws, -1)  # sum_{i>k} w_i s_i
        grad_alpha = trans * s - (after - g_acc * final) / (1.0 - alpha)
        live = (alpha > 0) & (alpha < ALPHA_MAX)
        grad_logits = torch.where(live, grad_alpha * alpha, torch.zeros_like(alpha))
        return grad_logits, weights.transpose(1, 2) @ g_feat


def _rasterize_torch(means2d: Tensor, conic: Tensor, opacities: Tensor, colors: Tensor, depth: Tensor,
                     ext: Tensor, valid: Tensor, height: int, width: int, tile: int) -> Tensor:
    """Tile-based front-to-back compositing -> [B, H, W, C + 2] (colour, alpha, depth), premultiplied.

    The exponent of each splat at the pixels of a tile is a quadratic polynomial of the pixel's offset
    (x, y) from the tile centre, so ``log alpha = log o - d^T Sigma'^-1 d / 2`` for all pixels x splats of a
    tile is one matmul of the monomials [x^2, xy, y^2, x, y, 1] [P, 6] with per-splat coefficients [6, L].
    """
    B, N = depth.shape
    tiles_x, tiles_y = -(-width // tile), -(-height // tile)
    n_tiles, P = tiles_x * tiles_y, tile * tile
    with torch.no_grad():
        ids, tiles = _tile_lists(means2d.detach(), ext, valid, depth.detach(), tile, tiles_x, tiles_y)
        per_tile = torch.bincount(tiles, minlength=B * n_tiles)
        first = torch.cumsum(per_tile, 0) - per_tile
        busy = torch.nonzero(per_tile).squeeze(1)
        busy = busy[torch.argsort(per_tile[busy], descending=True)]
        counts = per_tile[busy].tolist()
    C = colors.shape[-1]
    feats = torch.cat([colors.expand(B, N, C), depth[..., None]], -1).reshape(B * N, C + 1)
    flat2d, flat_conic = means2d.reshape(B * N, 2), conic.reshape(B * N, 3)
    log_o = torch.log(opacities.clamp_min(1e-30)).expand(B, N).reshape(B * N)
    local = torch.arange(P, device=depth.device)
    x = (local % tile).to(means2d.dtype) + 0.5 - 0.5 * tile  # pixel centre relative to the tile centre
    y = (local // tile).to(means2d.dtype) + 0.5 - 0.5 * tile
    monomials = torch.stack([x * x, x * y, y * y, x, y, torch.ones_like(x)], -1)  # [P, 6]
    outs, done, i = [], [], 0
    while i < len(counts):  # batches of tiles with similar list lengths L (padding wastes < ~1/3)
        L = counts[i]
        n = 1
        while i + n < len(counts) and (n + 1) * P * L <= _CHUNK_ELEMENTS and counts[i + n] * 3 >= 2 * L:
            n += 1
        t = busy[i:i + n]
        i += n
        slot = torch.arange(L, device=depth.device)
        mask = slot[None] < per_tile[t][:, None]  # [T, L]
        g = ids[(first[t][:, None] + slot[None]).clamp(max=ids.shape[0] - 1)]  # [T, L]
        centre = torch.stack([(t % n_tiles) % tiles_x, (t % n_tiles) // tiles_x], -1).to(means2d.dtype) * tile + 0.5 * tile
        m = flat2d[g] - centre[:, None, :]  # [T, L, 2] splat centre relative to the tile centre
        m = torch.where(mask[..., None], m, torch.zeros_like(m))  # padding: centred, alpha <= exp(-1000) = 0
        a, b, c = flat_conic[g].unbind(-1)
        mx, my = m.unbind(-1)
        const = torch.where(mask, log_o[g], torch.full_like(mx, -1e3)) \
            - 0.5 * (a * mx * mx + 2.0 * b * mx * my + c * my * my)
        coef = torch.stack([-0.5 * a, -b, -0.5 * c, a * mx + b * my, c * my + b * mx, const], 1)  # [T, 6, L]
        out = _Composite.apply(monomials @ coef, feats[g])  # [T, P, C + 2]: colour, depth, alpha
        outs.append(torch.cat([out[..., :C], out[..., C + 1:], out[..., C:C + 1]], -1))
        done.append(t)
    image = torch.zeros(B * n_tiles, P, C + 2, dtype=means2d.dtype, device=means2d.device)
    if outs:
        image = image.index_copy(0, torch.cat(done), torch.cat(outs))
    image = image.reshape(B, tiles_y, tiles_x, tile, tile, C + 2).permute(0, 1, 3, 2, 4, 5)
    return image.reshape(B, tiles_y * tile, tiles_x * tile, C + 2)[:, :height, :width]


def _gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA build
        return False
    return True


def _check_inputs(means, quats, scales, opacities, colors, c2w, fovy, height, width, background) -> None:
    N = means.shape[0]
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"rasterize_gaussians: means must be [N, 3], got {tuple(means.shape)}")
    for name, t, shape in (("quats", quats, (N, 4)), ("scales", scales, (N, 3)), ("opacities", opacities, (N,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"rasterize_gaussians: {name} must be {list(shape)}, got {tuple(t.shape)}")
    if not (tuple(colors.shape) == (N, 3) or (colors.dim() == 3 and colors.shape[0] == N
                                             and colors.shape[1] in (1, 4, 9, 16) and colors.shape[2] == 3)):
        raise ValueError(f"rasterize_gaussians: colors must be [N, 3] or SH [N, K, 3] with K in 1, 4, 9, 16 "
                         f"(N = {N}), got {tuple(colors.shape)}")
    if c2w.dim() != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"rasterize_gaussians: c2w must be [B, 4, 4], got {tuple(c2w.shape)}")
    B = c2w.shape[0]
    if tuple(fovy.shape) != (B,):
        raise ValueError(f"rasterize_gaussians: fovy must be [B] = [{B}], got {tuple(fovy.shape)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"rasterize_gaussians: height and width must be positive, got {height} x {width}")
    if background is not None and tuple(background.shape) != (B, height, width, 3):
        raise ValueError(f"rasterize_gaussians: background must be [B, H, W, 3] = {[B, height, width, 3]}, "
                         f"got {tuple(background.shape)}")


def _ray_length(Ks: Tensor, height: int, width: int) -> Tensor:
    """|(u - cx) / fx, (v - cy) / fy, 1| at each pixel centre [B, H, W, 1]: z-depth -> distance along the ray."""
    u = torch.arange(width, dtype=Ks.dtype, device=Ks.device) + 0.5
    v = torch.arange(height, dtype=Ks.dtype, device=Ks.device) + 0.5
    x = (u[None, None, :] - Ks[:, 0, 2, None, None]) / Ks[:, 0, 0, None, None]
    y = (v[None, :, None] - Ks[:, 1, 2, None, None]) / Ks[:, 1, 1, None, None]
    return torch.sqrt(1.0 + x * x + y * y)[..., None]


def rasterize_gaussians(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                        c2w: Tensor, fovy: Tensor, height: int, width: int, background: Optional[Tensor] = None,
                        *, near_plane: float = 0.01, eps2d: float = 0.3, tile_size: int | None = None,
                        backend: str = "auto") -> dict[str, Tensor]:
    """Render N Gaussians into B views.

    Args:
        means: [N, 3] world centres. quats: [N, 4] rotations (w, x, y, z), normalised here.
        scales: [N, 3] standard deviations along the rotated axes (activated, > 0).
        opacities: [N] in [0, 1] (activated). colors: [N, 3] rgb, or SH coefficients [N, K, 3] (K = 1, 4, 9, 16)
            evaluated along the direction from each camera to the splat.
        c2w: [B, 4, 4] OpenGL camera-to-world. fovy: [B] vertical field of view, radians.
        background: [B, H, W, 3] composited behind the splats, or None (black, i.e. premultiplied output).
        backend: "auto" (gsplat on CUDA when it imports, else torch), "torch" or "gsplat".
        tile_size: tile side in pixels; None = 16 for gsplat, 8 for the torch rasterizer (faster on CPU).

    Returns:
        rgb [B,H,W,3], alpha [B,H,W,1], depth [B,H,W,1] (premultiplied distance along the ray),
        means2d [B,N,2] (pixel coordinates; call ``.retain_grad()`` before backward to read the view-space
        gradient used by densification), radii [B,N] (screen radius in pixels, 0 = culled).
    """
    _check_inputs(means, quats, scales, opacities, colors, c2w, fovy, height, width, background)
    if backend not in ("auto", "torch", "gsplat"):
        raise ValueError(f"rasterize_gaussians: backend must be auto, torch or gsplat, got '{backend}'")
    use_gsplat = backend == "gsplat" or (backend == "auto" and means.is_cuda and _gsplat_available())
    if backend == "gsplat" and not (means.is_cuda and _gsplat_available()):
        raise RuntimeError("rasterize_gaussians: backend='gsplat' needs CUDA tensors and `pip install gsplat`")
    c2w, fovy = c2w.to(means), fovy.to(means)
    quats = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    viewmats, Ks = _viewmats(c2w), _intrinsics(fovy, height, width)
    if use_gsplat:
        tile_size = tile_size or 16
        out = _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, height, width,
                                near_plane, eps2d, tile_size)
    else:
        means2d, cov2d, depth = _project(means, _covariance(quats, scales), viewmats, Ks, height, width, eps2d)
        conic, ext, valid = _screen_extent(cov2d, depth, opacities, means2d, height, width, near_plane)
        if colors.dim() == 3:  # SH: view direction from each camera centre to each splat
            dirs = means[None] - c2w[:, None, :3, 3]
            colors = eval_sh(colors[None], dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        image = _rasterize_torch(means2d, conic, opacities, colors, depth, ext, valid, height, width, tile_size or 8)
        out = {"rgb": image[..., :3], "alpha": image[..., 3:4], "depth": image[..., 4:5], "means2d": means2d,
               "radii": torch.ceil(ext.max(-1).values)}
    out["depth"] = out["depth"] * _ray_length(Ks, height, width)
    if background is not None:
        out["rgb"] = out["rgb"] + (1.0 - out["alpha"]) * background.to(out["rgb"])
    return out


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, height, width, near_plane, eps2d,
                      tile_size) -> dict[str, Tensor]:
    """The CUDA twin: gsplat.rasterization with accumulated depth ("RGB+D") and unpacked per-view outputs."""
    from gsplat import rasterization

    sh_degree = None
    if colors.dim() == 3:
        sh_degree = int(math.isqrt(colors.shape[1])) - 1
    render, alpha, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=near_plane,
        eps2d=eps2d, sh_degree=sh_degree, packed=False, tile_size=tile_size, render_mode="RGB+D")
    radii = meta["radii"]
    if radii.dim() == 3:  # gsplat >= 1.5: per-axis radii [B, N, 2]
        radii = radii.max(-1).values
    return {"rgb": render[..., :3], "alpha": alpha, "depth": render[..., 3:4], "means2d": meta["means2d"],
            "radii": radii.to(means.dtype)}
