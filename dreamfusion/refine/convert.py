"""A coarse run's field as the refine stage's starting point: the DMTet field's SDF and texture from it.

The SDF is read off the same surface the exporter extracts (export/mesh.py): with ``threshold`` None the level
where the optical depth seen from outside reaches ``auto_optical_depth``, else the density ``threshold`` on log
density. At the tet grid's vertices the SDF is the exact Euclidean distance to that level set, found on a sample
of the density at least ``SAMPLES`` per axis (``coarse_sdf``), clamped to two cells (stable-dreamfusion's
``--dmtet`` takes ``clamp(sigma - threshold, -1, 1)``: on a 32-grid that put the demo cube's step-0 surface at
IoU 0.934 against its own export; a first-order distance (level - v) / |grad v| at 0.953, dilated by +0.009;
the distance transform lies on the export, docs/BENCHMARKS.md), so marching tetrahedra at step 0 give the coarse
run's mesh, and the SDF is in world units. The texture field is then fitted to the coarse field's albedo
at points on and near that surface (MSE, Adam), any field type alike (NeRF, tri-plane, Gaussians).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..export.mesh import density_grid, extract_mesh, surface_level
from ..fields.dmtet import DMTetField

__all__ = ["coarse_sdf", "fit_surface", "fit_texture", "convert_into", "convert_field", "sample_surface", "SAMPLES"]

SAMPLES = 128
"""The density is sampled on at least this many cells per axis for the conversion (coarse_sdf)."""
FIT_POINTS = 20000
"""Points drawn on the exporter's surface (the fine sample's level set) that fit_surface pulls the surface onto."""

def _level_sample(coarse, resolution: int, bound: float, threshold: float | None, auto_optical_depth: float,
                  samples: int, device) -> tuple[np.ndarray, float, float, int]:
    """(values [n, n, n] of the exported quantity, its level, the sample spacing, f): the coarse density sampled f =
    ceil(samples / R) times finer than a tet grid of R cells (n = R f + 1 points per axis over [-bound, bound])."""
    f = max(1, -(-samples // resolution))
    fine = 2.0 * bound / (resolution * f)
    grid = density_grid(coarse.density, bound, resolution * f + 1, device=device)  # [x, y, z]
    values, level = surface_level(grid, fine, bound, threshold, auto_optical_depth)
    return values, level, fine, f


def coarse_sdf(coarse, resolution: int, bound: float, *, threshold: float | None = None,
               auto_optical_depth: float = 0.3, samples: int = SAMPLES, device) -> Tensor:
    """SDF [(R + 1)^3] at the vertices of ``tet_grid(R)`` scaled to ``bound`` (x fastest), from the coarse field's
    density: negative where the exporter's surface encloses the point, in world units, two cells at most.

    The exported quantity v (optical depth or log density, export/mesh.py surface_level) is sampled
    ``f = ceil(samples / R)`` times finer than the tet grid; a sample is inside where v > level, and its SDF is the
    Euclidean distance to the nearest sample of the other side less half a sample spacing (scipy's exact distance
    transform), so the zero level lies halfway between neighbours of either side: within half a fine spacing of
    the exporter's surface, without bias. A first-order distance (level - v) / |grad v| does not do: outside the
    object v is flat (optical depth 0), so every outside vertex reads the same small distance and the surface
    moves outward by a fraction of a cell (+0.009 on the demo cube at R = 32)."""
    values, level, fine, f = _level_sample(coarse, resolution, bound, threshold, auto_optical_depth, samples, device)
    return _distance_sdf(values, level, fine, f, device)


def _distance_sdf(values: np.ndarray, level: float, fine: float, f: int, device) -> Tensor:
    from scipy.ndimage import distance_transform_edt

    inside = values > level
    to_inside = distance_transform_edt(~inside, sampling=fine)[::f, ::f, ::f]  # 0 at inside samples
    to_outside = distance_transform_edt(inside, sampling=fine)[::f, ::f, ::f] if (~inside).any() else \
        np.full(to_inside.shape, np.inf)
    sdf = np.where(inside[::f, ::f, ::f], 0.5 * fine - to_outside, to_inside - 0.5 * fine)
    cell = fine * f
    sdf = np.clip(sdf, -2 * cell, 2 * cell).transpose(2, 1, 0).reshape(-1)  # tet order: x fastest
    return torch.as_tensor(np.ascontiguousarray(sdf), dtype=torch.float32, device=device)


def _level_points(values: np.ndarray, level: float, fine: float, bound: float, count: int,
                  generator: torch.Generator | None, device) -> Tensor:
    """``count`` points [count, 3] drawn uniformly by area on the level set of the fine sample (marching cubes)."""
    from skimage.measure import marching_cubes

    if not ((values > level).any() and (values < level).any()):
        return torch.zeros(0, 3, device=device)
    vertices, faces, _, _ = marching_cubes(values, level=level, spacing=(fine,) * 3)
    vertices = torch.as_tensor(vertices - bound, dtype=torch.float32)
    faces = torch.as_tensor(faces.astype(np.int64))
    return sample_surface(vertices, faces, count, generator).to(device)


def sample_surface(vertices: Tensor, faces: Tensor, count: int, generator: torch.Generator | None = None) -> Tensor:
    """``count`` points [count, 3] uniform by area on the triangles, differentiable in ``vertices`` (the faces are
    drawn by area, then uniform barycentrics); the draws come from ``generator`` on its device."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    area = torch.linalg.cross(b - a, c - a).norm(dim=-1).detach()
    draws = generator.device if generator is not None else vertices.device
    pick = torch.multinomial(area.to(draws) + 1e-20, count, replacement=True, generator=generator).to(vertices.device)
    r1, r2 = (torch.rand(count, generator=generator, device=draws).to(vertices) for _ in range(2))
    s = r1.sqrt()
    return (1 - s)[:, None] * a[pick] + (s * (1 - r2))[:, None] * b[pick] + (s * r2)[:, None] * c[pick]


def fit_surface(field: DMTetField, target: Tensor, steps: int = 50, points: int = 2048, lr: float = 0.002,
                generator: torch.Generator | None = None) -> float:
    """Pull ``field``'s surface onto the points ``target`` [N, 3] (the exporter's surface): ``steps`` Adam steps on the
    SDF and the deformation of the symmetric mean distance between ``points`` points drawn on each; returns the last.
    Marching tetrahedra place the zero level linearly inside each cell, which thins a 32-grid's cone tips and torus
    tube; the deformation moves the vertices where the export's surface is (docs/BENCHMARKS.md)."""
    if steps <= 0 or len(target) == 0:
        return 0.0
    draws = generator.device if generator is not None else target.device
    optimizer = torch.optim.Adam([field.sdf, field.deformation], lr=lr)
    loss = torch.zeros(())
    with torch.enable_grad():
        for _ in range(steps):
            vertices, faces = field.surface()
            if len(faces) == 0:
                break
            near = torch.cdist(sample_surface(vertices, faces, points, generator),
                               target[torch.randint(len(target), (points,), generator=generator, device=draws)
                                      .to(target.device)])
            loss = near.min(1).values.mean() + near.min(0).values.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return float(loss.detach())


def fit_texture(field: DMTetField, coarse, steps: int = 200, points: int = 8192, lr: float = 0.03,
                spread: float = 0.02, pool: int = 32768, generator: torch.Generator | None = None) -> float:
    """Fit ``field``'s texture to the coarse albedo at ``pool`` points, the surface's vertices jittered by ``spread``
    (normal noise), the coarse field queried once: ``steps`` Adam steps of ``points`` of them; returns the last
    mean squared error."""
    with torch.no_grad():
        surface, _ = field.surface()
    if len(surface) == 0:
        return 0.0
    draws = generator.device if generator is not None else surface.device  # where the generator draws
    pick = torch.randint(len(surface), (pool,), generator=generator, device=draws).to(surface.device)
    noise = torch.randn(pool, 3, generator=generator, device=draws).to(surface)
    where = (surface[pick] + spread * noise).clamp(-field.bound, field.bound)
    with torch.no_grad():
        target = torch.cat([coarse(chunk)["albedo"][:, :field.albedo_channels] for chunk in where.split(8192)])
    params = list(field.encoding.parameters()) + list(field.mlp.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    loss = torch.zeros(())
    for _ in range(steps):
        batch = torch.randint(pool, (points,), generator=generator, device=draws).to(surface.device)
        loss = ((field.albedo(where[batch]) - target[batch]) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def convert_into(field: DMTetField, coarse, *, threshold: float | None = None, auto_optical_depth: float = 0.3,
                 texture_steps: int = 200, fit_steps: int = 0, export_resolution: int | None = None,
                 min_component_ratio: float = 0.05, generator: torch.Generator | None = None) -> DMTetField:
    """``field`` (a DMTetField) given the coarse field's exported surface as its SDF (the deformation reset to 0),
    pulled onto that surface by ``fit_steps`` steps of :func:`fit_surface`, and, after ``texture_steps`` Adam steps,
    a texture that follows the coarse albedo; returns ``field``. The fit's target is the coarse run's own export
    (``extract_mesh`` at ``export_resolution``, as export.resolution and export.min_component_ratio made it: its
    integration at that grid's spacing places it slightly off the finer sample's level set), or with
    ``export_resolution`` None the level set of the finer sample."""
    device = field.sdf.device
    values, level, fine, f = _level_sample(coarse, field.resolution, field.bound, threshold, auto_optical_depth,
                                           SAMPLES, device)
    with torch.no_grad():
        field.sdf.copy_(_distance_sdf(values, level, fine, f, device))
        field.deformation.zero_()
    if fit_steps > 0:
        if export_resolution:
            vertices, faces = extract_mesh(coarse.density, field.bound, export_resolution, threshold=threshold,
                                           min_component_ratio=min_component_ratio,
                                           auto_optical_depth=auto_optical_depth, device=device)
            target = sample_surface(torch.as_tensor(vertices, dtype=torch.float32), torch.as_tensor(faces),
                                    FIT_POINTS, generator).to(device)
        else:
            target = _level_points(values, level, fine, field.bound, FIT_POINTS, generator, device)
        train = field.sdf.requires_grad, field.deformation.requires_grad
        field.sdf.requires_grad_(True)
        field.deformation.requires_grad_(True)
        fit_surface(field, target, fit_steps, generator=generator)
        field.sdf.requires_grad_(train[0])
        field.deformation.requires_grad_(train[1])
    if texture_steps > 0:
        fit_texture(field, coarse, steps=texture_steps, generator=generator)
    return field


def convert_field(coarse, cfg, *, threshold: float | None = None, auto_optical_depth: float = 0.3,
                  texture_steps: int = 200, fit_steps: int = 0, generator: torch.Generator | None = None,
                  device) -> DMTetField:
    """A new DMTetField (``cfg``: the field section with its ``dmtet`` group) whose surface is the coarse field's
    exported surface and whose texture follows the coarse albedo (:func:`convert_into`)."""
    field = DMTetField(cfg, device, albedo_channels=getattr(coarse, "albedo_channels", 3))
    return convert_into(field, coarse, threshold=threshold, auto_optical_depth=auto_optical_depth,
                        texture_steps=texture_steps, fit_steps=fit_steps, generator=generator)
