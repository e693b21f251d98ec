"""Write a run's artifacts from its field: mesh (.obj + .mtl + .png, .glb) and the orbit video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from render.cameras import orbit_cameras

from .config import Config
from .errors import UserError
from .latent import rgb_view
from .export import (bake_texture, colorize_depth, extract_mesh, normals_to_rgb, stack_panels, vertex_colors,
                     write_glb, write_obj, write_video)
from .renderer import occupancy_grid, render_views_chunked

__all__ = ["export_mesh", "export_video", "export_run"]


def surface_optical_depth(field, configured: float | None) -> float:
    """export.auto_optical_depth, or when it is null the field's `surface_optical_depth` (default 0.3)."""
    return configured if configured is not None else getattr(field, "surface_optical_depth", 0.3)


def _density_fn(field):
    return lambda pts: field.density(pts)


def _albedo_fn(field):
    return lambda pts: field(pts)["albedo"]


@torch.no_grad()
def export_mesh(field, cfg: Config, run_dir: Path) -> dict[str, Path]:
    e = cfg.export
    vertices, faces = extract_mesh(_density_fn(field), field.bound, e.resolution, threshold=e.threshold,
                                   min_component_ratio=e.min_component_ratio, decimate_faces=e.decimate_faces,
                                   auto_optical_depth=surface_optical_depth(field, e.auto_optical_depth))
    mesh_dir = Path(run_dir) / "mesh"
    mesh_dir.mkdir(exist_ok=True)
    if e.texture == "uv":
        vertices, faces, uv, texture = bake_texture(vertices, faces, _albedo_fn(field), size=e.texture_size)
        kwargs = {"uv": uv, "texture": texture}
    else:
        kwargs = {"vertex_colors": vertex_colors(vertices, _albedo_fn(field))}
    write_obj(mesh_dir / "model.obj", vertices, faces, **kwargs)
    write_glb(mesh_dir / "model.glb", vertices, faces, **kwargs)
    return {"obj": mesh_dir / "model.obj", "glb": mesh_dir / "model.glb"}


def export_video(field, background, cfg: Config, run_dir: Path, device) -> Path:
    e, c = cfg.export, cfg.camera
    cams = orbit_cameras(e.video_frames, c.eval_elevation, c.eval_distance, c.eval_fovy, device=device)
    side = e.video_resolution
    need_normals = "normal" in e.video_panels
    occupancy = None if hasattr(field, "render") else occupancy_grid(field, cfg.render.n_samples)
    if occupancy is not None and occupancy.float().mean() > 0.5:
        occupancy = None  # a foggy field fills the box: skipping would save little
    out = render_views_chunked(field, background, cams, side, side, n_samples=cfg.render.n_samples,
                               background_kind="white", need_normals=need_normals, occupancy=occupancy)
    panels = []
    for name in e.video_panels:
        if name == "rgb":
            panels.append((out["rgb"].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
        elif name == "normal":  # the composited normal is premultiplied: unit normal over white by opacity
            unit = torch.nn.functional.normalize(out["normal"], dim=-1).cpu().numpy()
            alpha = out["opacity"].cpu().numpy()
            panels.append((normals_to_rgb(unit) * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8))
        else:
            panels.append(colorize_depth(out["depth"][..., 0].cpu().numpy(), out["opacity"][..., 0].cpu().numpy()))
    path = Path(run_dir) / "orbit.mp4"
    write_video(path, stack_panels(panels), fps=e.video_fps)
    return path


def export_run(field, background, cfg: Config, run_dir: Path, device) -> tuple[dict[str, Path], list[str]]:
    """Every artifact that can be made; the errors of those that could not, one line each.

    A failure of one artifact (an empty field has no mesh) does not lose the others.
    """
    field.eval()
    written: dict[str, Path] = {}
    errors: list[str] = []
    if hasattr(field, "tv_loss"):  # tri-planes as arrays + metadata, for other tools
        from .fields.triplane import save_planes
        written["planes"] = save_planes(field, Path(run_dir) / "triplane.npz")
    if hasattr(field, "sh_dc"):  # Gaussian splats: the standard 3DGS .ply (SuperSplat, `dreamfusion view`)
        from .export.ply import write_ply
        written["splats"] = write_ply(Path(run_dir) / "splats.ply", field)
    view = rgb_view(field)  # a latent field (guidance.latent_render) is exported through latent_to_rgb
    for name, job in (("mesh", lambda: export_mesh(view, cfg, run_dir)),
                      ("video", lambda: {"video": export_video(view, background, cfg, run_dir, device)})):
        try:
            written.update(job())
        except UserError as exc:
            errors.append(f"{name}: {exc}")
    field.train()
    return written, errors
