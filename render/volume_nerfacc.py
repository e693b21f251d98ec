"""Fast volume rendering with nerfacc 0.5.3 (CUDA): occupancy-grid marching + packed compositing.

The fast twin of ``render.volume.render_rays``; same quadrature (w_i = alpha_i T_i, alpha_i =
1 - exp(-sigma_i delta_i)) but samples come from marching an occupancy grid with a fixed step
(``render_step_size``), skipping empty cells, instead of S equal bins per ray.

Differences from ``render_rays`` outputs (all other keys have the same shape and meaning):
- ``weights``, ``t`` (interval mid-points) and ``sample_normal`` are *packed*: [M] / [M, 3] over all
  kept samples, with ``ray_indices`` [M] (int) giving each sample's ray.
- opacity / depth / albedo / normal are [N] / [N, 3] per ray, premultiplied by opacity exactly like the
  torch path (depth = sum w t, normal = sum w n not renormalised).

nerfacc is imported lazily; its grid traversal is CUDA-only (compiled on first use). The grid update
(``update_estimator``) is plain torch and also runs on CPU.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .volume import FieldFn, _check_rays, _query_field

__all__ = ["nerfacc_available", "make_estimator", "update_estimator", "render_rays_nerfacc"]


def _import_nerfacc():
    try:
        import nerfacc
    except ImportError as exc:
        raise ImportError(f"the nerfacc sampler needs nerfacc ({exc}): pip install nerfacc==0.5.3") from None
    return nerfacc


def nerfacc_available() -> bool:
    """True when CUDA is available and nerfacc imports (the condition for using this fast path)."""
    if not torch.cuda.is_available():
        return False
    try:
        _import_nerfacc()
    except ImportError:
        return False
    return True


def make_estimator(bound: float, resolution: int = 128, device=None):
    """A one-level ``nerfacc.OccGridEstimator`` over the cube [-bound, bound]^3 with resolution^3 cells.

    It starts fully occupied (every cell is marched) until the first ``update_estimator`` call, so a
    fresh field renders correctly before the grid has seen it.
    """
    nerfacc = _import_nerfacc()
    roi_aabb = [-float(bound)] * 3 + [float(bound)] * 3
    estimator = nerfacc.OccGridEstimator(roi_aabb=roi_aabb, resolution=resolution, levels=1).to(device)
    estimator.binaries.fill_(True)
    return estimator


def update_estimator(estimator, density_fn: Callable[[Tensor], Tensor], step: int, occ_thre: float = 0.01,
                     render_step_size: Optional[float] = None, ema_decay: float = 0.95,
                     warmup_steps: int = 256, n: int = 16) -> None:
    """Refresh the occupancy grid every ``n`` steps (``estimator.update_every_n_steps``).

    Occupancy of a cell = ``density_fn(x)`` [M] at a random point x in it, times ``render_step_size``
    when given (nerfacc's convention: then it is ~ the alpha of one marching step). Cell occupancies are an
    EMA max with decay ``ema_decay``; a cell stays marched when its occupancy exceeds
    min(occ_thre, mean occupancy). Before ``warmup_steps`` every cell is evaluated, afterwards a quarter
    of them at random plus a quarter of the occupied ones. The estimator must be in training mode.
    """
    scale = 1.0 if render_step_size is None else float(render_step_size)

    def occ_eval_fn(x: Tensor) -> Tensor:
        density = density_fn(x)
        if density.shape != x.shape[:1]:
            raise ValueError(f"update_estimator: density_fn must return [M] = [{x.shape[0]}], got {tuple(density.shape)}")
        return density * scale

    estimator.update_every_n_steps(step=step, occ_eval_fn=occ_eval_fn, occ_thre=occ_thre,
                                   ema_decay=ema_decay, warmup_steps=warmup_steps, n=n)


def render_rays_nerfacc(field_fn: FieldFn, origins: Tensor, dirs: Tensor, bound: float, estimator,
                        render_step_size: float, need_normals: bool = False, perturb: bool = False,
                        alpha_thre: float = 0.0, early_stop_eps: float = 1e-4, cone_angle: float = 0.0) -> dict:
    """Render N rays [N, 3] (unit dirs, CUDA) by marching ``estimator``'s grid with ``render_step_size``.

    ``bound`` must be the estimator's cube (checked). ``perturb`` shifts each ray's first sample by
    U[0, step) (nerfacc's stratified marching; it uses the global torch RNG). Samples after the
    transmittance falls below ``early_stop_eps``, or with alpha below ``alpha_thre``, are dropped
    (set both to 0 for an exact match of the torch quadrature). Returns the keys of ``render_rays``
    plus ``ray_indices``; see the module docstring for the packed ones.
    """
    nerfacc = _import_nerfacc()
    _check_rays("render_rays_nerfacc", origins, dirs)
    if not origins.is_cuda:
        raise ValueError("render_rays_nerfacc needs CUDA tensors (nerfacc's grid marching is CUDA-only); "
                         "use render.volume.render_rays on CPU")
    expected = torch.tensor([-bound] * 3 + [bound] * 3, dtype=estimator.aabbs.dtype, device=estimator.aabbs.device)
    if not torch.allclose(estimator.aabbs[0], expected):
        raise ValueError(f"render_rays_nerfacc: bound {bound} differs from the estimator's box "
                         f"{estimator.aabbs[0].tolist()}; build it with make_estimator(bound)")
    n_rays = origins.shape[0]

    def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        t_mid = 0.5 * (t_starts + t_ends)
        points = origins[ray_indices] + dirs[ray_indices] * t_mid[:, None]
        return field_fn(points)["density"]

    with torch.no_grad():
        ray_indices, t_starts, t_ends = estimator.sampling(
            origins, dirs, sigma_fn=sigma_fn, near_plane=0.0, render_step_size=render_step_size,
            early_stop_eps=early_stop_eps, alpha_thre=alpha_thre, stratified=perturb, cone_angle=cone_angle)
    t_mid = 0.5 * (t_starts + t_ends)  # [M]
    points = origins[ray_indices] + dirs[ray_indices] * t_mid[:, None]  # [M, 3]

    if points.shape[0] == 0:  # nothing occupied along any ray
        zeros = origins.new_zeros(n_rays)
        return {"weights": t_mid, "opacity": zeros, "depth": zeros.clone(), "albedo": origins.new_zeros(n_rays, getattr(field_fn, "albedo_channels", 3)),
                "normal": origins.new_zeros(n_rays, 3) if need_normals else None, "t": t_mid,
                "sample_normal": points if need_normals else None, "ray_indices": ray_indices}

    density, albedo, normal = _query_field(field_fn, points, need_normals, torch.is_grad_enabled())

    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, density, ray_indices=ray_indices,
                                                       n_rays=n_rays)

    def accumulate(values: Optional[Tensor]) -> Tensor:
        return nerfacc.accumulate_along_rays(weights, values, ray_indices=ray_indices, n_rays=n_rays)

    return {
        "weights": weights,
        "opacity": accumulate(None)[:, 0],
        "depth": accumulate(t_mid[:, None])[:, 0],
        "albedo": accumulate(albedo),
        "normal": accumulate(normal) if normal is not None else None,
        "t": t_mid,
        "sample_normal": normal,
        "ray_indices": ray_indices,
    }
