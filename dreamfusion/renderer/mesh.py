"""Mesh rendering of a surface field (a DMTetField): extract its surface, rasterize it (render/mesh_raster.py),
shade the visible points, antialias the silhouettes, composite over the background. The renderer's path for
surface fields (renderer/core.py chooses by the field's class); the refine stage's renders.

Outputs follow render_views' contract so the guidance, the loss and the previews take them as they take a
volume render: opacity is the antialiased coverage, albedo and normal are premultiplied by it, depth is the
distance along the unit ray (as the volume renderer's expected termination).

Two rasterizers with one contract (render.mesh_rasterizer, resolved once by ``pick_mesh_rasterizer``): the plain-
PyTorch one (render/mesh_raster.py, what CPU users run) and nvdiffrast's CUDA context where the user installed it
(render/mesh_raster_nvdiffrast.py; not on PyPI, non-commercial licence).
"""

from __future__ import annotations

import torch
from torch import Tensor

from render.cameras import Cameras
from render.mesh_raster import antialias, clip_positions, interpolate, rasterize_mesh
from render.mesh_raster_nvdiffrast import (NVDIFFRAST_INSTALL, antialias_nvdiffrast, import_nvdiffrast,
                                           interpolate_nvdiffrast, nvdiffrast_available, rasterize_mesh_nvdiffrast)
from render.rays import generate_rays
from render.shading import shade

from ..errors import ConfigError
from .backgrounds import solid_background

__all__ = ["render_mesh", "vertex_normals", "pick_mesh_rasterizer"]

# render.mesh_rasterizer -> (rasterize, interpolate, antialias), one contract (render/mesh_raster.py's)
_RASTERIZERS = {"torch": (rasterize_mesh, interpolate, antialias),
                "nvdiffrast": (rasterize_mesh_nvdiffrast, interpolate_nvdiffrast, antialias_nvdiffrast)}


def pick_mesh_rasterizer(choice: str, device: torch.device | str) -> str:
    """render.mesh_rasterizer -> the rasterizer a run on ``device`` uses: auto = nvdiffrast on CUDA when it
    imports, else torch; an explicit nvdiffrast off CUDA or without the package is a one-line ConfigError."""
    device = torch.device(device)
    if choice == "auto":
        return "nvdiffrast" if device.type == "cuda" and nvdiffrast_available() else "torch"
    if choice != "nvdiffrast":
        return choice
    if device.type != "cuda":
        raise ConfigError(f"render.mesh_rasterizer=nvdiffrast needs a CUDA device (this run is on {device}): "
                          f"set render.mesh_rasterizer=torch or auto")
    try:
        import_nvdiffrast()
    except ImportError:
        raise ConfigError(f"render.mesh_rasterizer=nvdiffrast needs nvdiffrast, which is not installed: "
                          f"{NVDIFFRAST_INSTALL} (non-commercial licence), "
                          f"or set render.mesh_rasterizer=torch") from None
    return "nvdiffrast"


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted vertex normals [V, 3] (unit; zero for a vertex of no face)."""
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    face = torch.linalg.cross(b - a, c - a)  # length = twice the area
    total = torch.zeros_like(vertices).index_add(0, faces.reshape(-1), face.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(total, dim=-1, eps=1e-12)


def render_mesh(field, background, cameras: Cameras, height: int, width: int, *, shading: str = "albedo",
                light_dirs: Tensor | None = None, ambient: float = 0.1, background_kind: str = "white",
                generator: torch.Generator | None = None, rasterizer: str = "torch",
                **volume_options) -> dict[str, Tensor]:
    """render_views' contract for a surface field: rgb [B,H,W,3], opacity [B,H,W,1], depth [B,H,W,1], albedo and
    normal [B,H,W,3] (premultiplied by the coverage), dirs [B,H,W,3]. ``rasterizer``: torch or nvdiffrast (as
    pick_mesh_rasterizer resolved render.mesh_rasterizer). The volume renderer's options (n_samples, perturb,
    need_normals, estimator, occupancy) do not apply to a mesh."""
    rasterize_fn, interpolate_fn, antialias_fn = _RASTERIZERS[rasterizer]
    vertices, faces = field.surface()
    batch = cameras.c2w.shape[0]
    c2w, fovy = cameras.c2w.to(vertices), cameras.fovy.to(vertices)
    origins, dirs = generate_rays(c2w, fovy, height, width)
    if len(faces) == 0:  # an empty surface: the background only
        fg = vertices.new_zeros(batch, height, width, 3)
        opacity, depth, normal, albedo = fg[..., :1], fg[..., :1], fg, fg
    else:
        pos = clip_positions(vertices, c2w, fovy, height, width)
        rast = rasterize_fn(pos, faces, height, width)
        mask = rast["mask"]
        points = interpolate_fn(vertices, rast, faces)  # [B, H, W, 3]
        normal = torch.nn.functional.normalize(interpolate_fn(vertex_normals(vertices, faces), rast, faces), dim=-1,
                                               eps=1e-12)
        albedo = vertices.new_zeros(batch, height, width, field.albedo_channels)
        albedo = albedo.index_put(torch.nonzero(mask, as_tuple=True), field.albedo(points[mask]))
        if shading == "albedo":
            colour = albedo
        else:
            base = torch.ones_like(albedo) if shading == "textureless" else albedo
            lights = light_dirs[:, None, None, :].expand(batch, height, width, 3)
            colour = shade(base.reshape(-1, 3), normal.reshape(-1, 3), "lambertian", lights.reshape(-1, 3),
                           ambient).reshape(batch, height, width, 3)
        distance = (points - origins).norm(dim=-1, keepdim=True)
        coverage = mask[..., None].to(vertices.dtype)
        stack = torch.cat([colour, albedo, normal, distance, torch.ones_like(distance)], dim=-1) * coverage
        smooth = antialias_fn(stack, rast, pos, faces, adjacent=field.adjacency())
        c = colour.shape[-1]
        fg, albedo, normal = smooth[..., :c], smooth[..., c:2 * c], smooth[..., 2 * c:2 * c + 3]
        depth, opacity = smooth[..., -2:-1], smooth[..., -1:]
    bg = background(dirs) if background is not None else solid_background(
        background_kind, (batch, height, width), generator, device=vertices.device)
    return {"rgb": fg + (1.0 - opacity) * bg, "opacity": opacity, "depth": depth, "albedo": albedo,
            "normal": normal, "dirs": dirs}
