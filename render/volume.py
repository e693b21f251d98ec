"""Volume rendering in plain PyTorch: ray-box clipping, stratified samples, alpha compositing.

The quadrature is the one of NeRF (Mildenhall et al. 2020, eq. 3) as used by DreamFusion:
    alpha_i = 1 - exp(-sigma_i delta_i),  T_i = exp(-sum_{j<i} sigma_j delta_j),  w_i = alpha_i T_i.
This module is the slow twin of ``render.volume_nerfacc`` and what CPU users run.

Conventions of ``render_rays`` outputs (per ray, N rays, S samples):
- ``opacity`` = sum_i w_i (the accumulated alpha).
- ``albedo`` = sum_i w_i a_i and ``normal`` = sum_i w_i n_i are *premultiplied* by opacity: not divided
  by it and (for the normal) not renormalised; composite over a background as
  ``rgb = albedo + (1 - opacity) * background``. ``render.shading.shade`` normalises the normal it gets.
- ``depth`` = sum_i w_i t_i, the expected termination distance along the unit ray, also *not*
  divided by opacity (a half-transparent ray reads nearer); divide by opacity for a surface depth.
- Rays that miss the cube [-bound, bound]^3 have near = far = 0, so t = 0, weights 0, opacity 0,
  albedo 0, normal 0 and depth 0; the field is not evaluated on them.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["ray_aabb", "stratified_t", "composite", "render_rays"]

FieldFn = Callable[[Tensor], dict]


def _check_rays(name: str, origins: Tensor, dirs: Tensor) -> None:
    if origins.dim() != 2 or origins.shape[-1] != 3 or dirs.shape != origins.shape:
        raise ValueError(f"{name}: origins and dirs must both be [N, 3], got {tuple(origins.shape)} "
                         f"and {tuple(dirs.shape)}")


def ray_aabb(origins: Tensor, dirs: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Where rays cross the cube [-bound, bound]^3 (slab method).

    Args:
        origins, dirs: [N, 3]; dirs need not be unit (t is in units of |dir|).
    Returns:
        near [N] (clamped to >= 0, so an origin inside the box gives near = 0), far [N], hit [N] bool
        (far > near: the ray crosses the box in front of its origin; grazing an edge or corner is a miss).
        Misses get near = far = 0.
    """
    _check_rays("ray_aabb", origins, dirs)
    tiny = 1e-12
    # a zero direction component becomes +-tiny: its slab is then (-huge, huge) if the origin is inside it
    safe = torch.where(dirs.abs() < tiny, torch.where(dirs < 0, -tiny, tiny), dirs)
    t0 = (-bound - origins) / safe
    t1 = (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    hit = far > near
    zero = torch.zeros_like(near)
    return torch.where(hit, near, zero), torch.where(hit, far, zero), hit


def stratified_t(near: Tensor, far: Tensor, n_samples: int, perturb: bool,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """Sample distances [N, S] in S equal bins between near [N] and far [N].

    Bin mid-points, or with ``perturb`` one uniform draw inside each bin (drawn on ``generator``'s device).
    """
    if near.dim() != 1 or far.shape != near.shape:
        raise ValueError(f"stratified_t: near and far must both be [N], got {tuple(near.shape)} and {tuple(far.shape)}")
    if n_samples <= 0:
        raise ValueError(f"stratified_t: n_samples must be positive, got {n_samples}")
    if perturb:
        gen_device = generator.device if generator is not None else near.device
        u = torch.rand(near.shape[0], n_samples, generator=generator, device=gen_device).to(near)
    else:
        u = torch.full((near.shape[0], n_samples), 0.5, dtype=near.dtype, device=near.device)
    u = (torch.arange(n_samples, dtype=near.dtype, device=near.device) + u) / n_samples
    return near[:, None] + (far - near)[:, None] * u


def composite(sigma: Tensor, deltas: Tensor) -> Tensor:
    """Compositing weights w_i = alpha_i T_i of densities sigma [N, S] over intervals deltas [N, S].

    ``deltas`` may be anything broadcastable to sigma's shape (e.g. [N, 1] for equal bins).
    T_i = exp(-exclusive_cumsum(sigma * delta)_i) equals prod_{j<i} (1 - alpha_j) without the product's
    underflow; alpha = -expm1(-sigma delta) is exact for small sigma delta.
    """
    if sigma.dim() != 2:
        raise ValueError(f"composite: sigma must be [N, S], got {tuple(sigma.shape)}")
    tau = sigma * deltas  # optical depth of each interval
    if tau.shape != sigma.shape:
        raise ValueError(f"composite: deltas {tuple(deltas.shape)} do not broadcast to sigma {tuple(sigma.shape)}")
    alpha = -torch.expm1(-tau)
    tau_before = torch.cumsum(tau, dim=-1) - tau  # exclusive cumulative sum
    return alpha * torch.exp(-tau_before)


def _field_outputs(field_fn: FieldFn, points: Tensor) -> dict:
    out = field_fn(points)
    m = points.shape[0]
    density, albedo = out.get("density"), out.get("albedo")
    if density is None or albedo is None:
        raise ValueError(f"field_fn must return a dict with 'density' [M] and 'albedo' [M, C], got keys {sorted(out)}")
    if density.shape != (m,):
        raise ValueError(f"field_fn 'density' must be [M] = [{m}], got {tuple(density.shape)}")
    if albedo.ndim != 2 or albedo.shape[0] != m:
        raise ValueError(f"field_fn 'albedo' must be [M, C] with M = {m}, got {tuple(albedo.shape)}")
    normal = out.get("normal")
    if normal is not None and normal.shape != (m, 3):
        raise ValueError(f"field_fn 'normal' must be [M, 3] = [{m}, 3], got {tuple(normal.shape)}")
    return out


def _density_normals(density: Tensor, points: Tensor, create_graph: bool) -> Tensor:
    """Unit normals -grad(density) / |grad(density)| [M, 3] at ``points`` [M, 3] (which density depends on).

    With ``create_graph`` the normals stay differentiable (losses on normals reach the field's
    parameters). The norm is sqrt(|g|^2 + 1e-20), finite and differentiable where the gradient vanishes.
    """
    if not density.requires_grad:  # a field that ignores its input: no direction
        return torch.zeros_like(points)
    (grad,) = torch.autograd.grad(density.sum(), points, create_graph=create_graph, allow_unused=True)
    if grad is None:
        return torch.zeros_like(points)
    grad = -grad
    return grad / torch.sqrt((grad * grad).sum(-1, keepdim=True) + 1e-20)


def _query_field(field_fn: FieldFn, points: Tensor, need_normals: bool, grad_enabled: bool):
    """density [M], albedo [M, 3], normal [M, 3] or None at points [M, 3]; normals via autograd (under
    no_grad too: grad is switched on for the field call, then the outputs are detached)."""
    with torch.set_grad_enabled(grad_enabled or need_normals):
        if need_normals and not points.requires_grad:
            points.requires_grad_(True)
        out = _field_outputs(field_fn, points)
        density, albedo, normal = out["density"], out["albedo"], None
        if need_normals:
            normal = out.get("normal")
            if normal is None:
                normal = _density_normals(density, points, create_graph=grad_enabled)
            if not grad_enabled:
                density, albedo, normal = density.detach(), albedo.detach(), normal.detach()
    return density, albedo, normal


def occupied(points: Tensor, occupancy: Tensor, bound: float) -> Tensor:
    """Lookup [...] bool of points [..., 3] in a boolean grid [R, R, R] (x, y, z) over [-bound, bound]^3."""
    res = occupancy.shape[0]
    idx = ((points + bound) / (2 * bound) * res).long().clamp(0, res - 1)
    return occupancy[idx[..., 0], idx[..., 1], idx[..., 2]]


def render_rays(field_fn: FieldFn, origins: Tensor, dirs: Tensor, bound: float, n_samples: int,
                perturb: bool = False, generator: Optional[torch.Generator] = None,
                need_normals: bool = False, occupancy: Optional[Tensor] = None) -> dict:
    """Render N rays through the cube [-bound, bound]^3 with S = n_samples stratified samples each.

    Args:
        field_fn: points [M, 3] -> dict(density [M] >= 0, albedo [M, 3], optional normal [M, 3]).
        origins, dirs: [N, 3]; dirs must be unit so t and depth are distances.
        perturb: jitter each sample inside its bin (training); mid-points otherwise.
        need_normals: also return normals: the field's 'normal' if it gives one, else the autograd
            normal -grad(density) normalised per sample (differentiable when grad is enabled; computed
            even under torch.no_grad, then detached).
        occupancy: optional bool grid [R, R, R] (x, y, z cells over the cube): samples in empty cells
            are not sent to the field and count as density 0 (empty-space skipping; the plain-PyTorch
            counterpart of an occupancy grid, exact where the grid marks every cell the field fills).
    Returns:
        dict(weights [N, S], opacity [N], depth [N], albedo [N, 3], normal [N, 3] or None, t [N, S],
        sample_normal [N, S, 3] or None (unit per-sample normals, e.g. for the orientation loss)).
        See the module docstring for the premultiplied / miss conventions. Every sample's interval
        delta is the bin width (far - near) / S.
    """
    _check_rays("render_rays", origins, dirs)
    n_rays = origins.shape[0]
    near, far, hit = ray_aabb(origins, dirs, bound)
    t = stratified_t(near, far, n_samples, perturb, generator)  # [N, S]; zeros for misses
    deltas = ((far - near) / n_samples)[:, None]  # [N, 1]

    keep = hit[:, None].expand(n_rays, n_samples)  # [N, S] samples sent to the field
    points = origins[:, None, :] + dirs[:, None, :] * t[..., None]  # [N, S, 3]
    if occupancy is not None:
        keep = keep & occupied(points, occupancy, bound)
    everything = bool(keep.all())
    points = points.reshape(-1, 3) if everything else points[keep]  # [M, 3]

    grad_enabled = torch.is_grad_enabled()
    if points.shape[0] == 0:  # every ray misses: the field is not called with an empty batch
        density, albedo = points.new_zeros(0), points.new_zeros(0, getattr(field_fn, "albedo_channels", 3))
        normal = points.new_zeros(0, 3) if need_normals else None
    else:
        density, albedo, normal = _query_field(field_fn, points, need_normals, grad_enabled)

    def full(values: Tensor, width: int) -> Tensor:  # [M(, C)] of kept samples -> [N, S(, C)]
        shape = (n_rays, n_samples, *([width] if width else []))
        if everything:
            return values.reshape(shape)
        dense = values.new_zeros(shape)
        dense[keep] = values
        return dense

    sigma = full(density, 0)
    weights = composite(sigma, deltas)
    result = {
        "weights": weights,
        "opacity": weights.sum(-1),
        "depth": (weights * t).sum(-1),
        "albedo": (weights[..., None] * full(albedo, albedo.shape[-1])).sum(-2),
        "normal": None,
        "t": t,
        "sample_normal": None,
    }
    if normal is not None:
        sample_normal = full(normal, 3)
        result["sample_normal"] = sample_normal
        result["normal"] = (weights[..., None] * sample_normal).sum(-2)
    return result
