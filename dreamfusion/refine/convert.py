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
"""Points drawn on the coarse run's exported mesh that fit_surface pulls the surface onto."""

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
    from scipy.ndimage import distance_transform_edt

    f = max(1, -(-samples // resolution))
    fine = 2.0 * bound / (resolution * f)
    grid = density_grid(coarse.density, bound, resolution * f + 1, device=device)  # [x, y, z]
    values, level = surface_level(grid, fine, bound, threshold, auto_optical_depth)
    inside = values > level
    to_inside = distance_transform_edt(~inside, sampling=fine)[::f, ::f, ::f]  # 0 at inside samples
    to_outside = distance_transform_edt(inside, sampling=fine)[::f, ::f, ::f] if (~inside).any() else \
        np.full(to_inside.shape, np.inf)
    sdf = np.where(inside[::f, ::f, ::f], 0.5 * fine - to_outside, to_inside - 0.5 * fine)
    cell = fine * f
    sdf = np.clip(sdf, -2 * cell, 2 * cell).transpose(2, 1, 0).reshape(-1)  # tet order: x fastest
    return torch.as_tensor(np.ascontiguousarray(sdf), dtype=torch.float32, device=device)


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
    geometry = (field.sdf, field.deformation)
    trained = [p.requires_grad for p in geometry]  # a texture-only field keeps its geometry frozen afterwards
    for p in geometry:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(geometry, lr=lr)
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
    for p, flag in zip(geometry, trained):
        p.requires_grad_(flag)
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
    pulled by ``fit_steps`` steps of :func:`fit_surface` onto the coarse run's own export (``extract_mesh`` at
    ``export_resolution`` with ``min_component_ratio``, as its export.* made it: its integration at that grid's
    spacing places it slightly off the SDF's finer level set), and, after ``texture_steps`` Adam steps, a texture
    that follows the coarse albedo; returns ``field``."""
    if fit_steps > 0 and not export_resolution:
        raise ValueError("convert_into: fit_steps > 0 needs export_resolution (the coarse run's export.resolution)")
    device = field.sdf.device
    with torch.no_grad():
        field.sdf.copy_(coarse_sdf(coarse, field.resolution, field.bound, threshold=threshold,
                                   auto_optical_depth=auto_optical_depth, device=device))
        field.deformation.zero_()
    if fit_steps > 0:
        vertices, faces = extract_mesh(coarse.density, field.bound, export_resolution, threshold=threshold,
                                       min_component_ratio=min_component_ratio,
                                       auto_optical_depth=auto_optical_depth, device=device)
        target = sample_surface(torch.as_tensor(vertices, dtype=torch.float32), torch.as_tensor(faces),
                                FIT_POINTS, generator).to(device)
        fit_surface(field, target, fit_steps, generator=generator)
    if texture_steps > 0:
        fit_texture(field, coarse, steps=texture_steps, generator=generator)
    return field


def convert_field(coarse, cfg, *, threshold: float | None = None, auto_optical_depth: float = 0.3,
                  texture_steps: int = 200, fit_steps: int = 0, export_resolution: int | None = None,
                  generator: torch.Generator | None = None, device) -> DMTetField:
    """A new DMTetField (``cfg``: the field section with its ``dmtet`` group) whose surface is the coarse field's
    exported surface and whose texture follows the coarse albedo (:func:`convert_into`)."""
    field = DMTetField(cfg, device, albedo_channels=getattr(coarse, "albedo_channels", 3))
    return convert_into(field, coarse, threshold=threshold, auto_optical_depth=auto_optical_depth,
                        texture_steps=texture_steps, fit_steps=fit_steps, export_resolution=export_resolution,
                        generator=generator)
