"""Write a run's artifacts from its field: the field's own files, mesh (.obj + .mtl + .png, .glb) and the orbit
video. Each phase prints a line on stderr when it starts and is timed (the seconds go to run.json). Under the
embedded prior the written mesh is scored against the prompt's known object (``mesh_scores``)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from render.cameras import orbit_cameras

from .config import Config
from .errors import UserError
from .export import (bake_albedo, clean_mesh, colorize_depth, decimate, extract_mesh, normals_to_rgb, stack_panels, unwrap,
                     vertex_colors, write_field_files, write_glb, write_obj, write_video)
from .fields.base import field_device
from .renderer import BakedField, eval_view, render_eval, rgb_view
from .runfolder import MESH_GLB, MESH_OBJ, VIDEO

__all__ = ["export_mesh", "export_video", "export_run", "mesh_scores", "PhaseTimer"]


class PhaseTimer:
    """Seconds per named phase; ``with timer.phase("export.mesh"):`` prints what starts, on stderr."""

    def __init__(self, quiet: bool = False):
        self.seconds: dict[str, float] = {}
        self.quiet = quiet

    @contextmanager
    def phase(self, name: str, what: str = ""):
        if not self.quiet and what:
            print(f"{name}: {what}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def surface_optical_depth(field, configured: float | None) -> float:
    """export.auto_optical_depth, or when it is null the field's own ``surface_optical_depth``."""
    return configured if configured is not None else field.surface_optical_depth


@torch.no_grad()
def export_mesh(field, cfg: Config, run_dir: Path, timer: PhaseTimer | None = None,
                density_fn=None) -> dict[str, Path]:
    """mesh/model.obj (+ .mtl, .png) and mesh/model.glb. ``density_fn`` (default ``field.density``) is what marching
    cubes samples: a BakedField of the same resolution gives the same grid without a second pass."""
    e, timer, device = cfg.export, timer or PhaseTimer(quiet=True), field_device(field)
    if hasattr(field, "surface"):  # a DMTet surface (the refine stage) is exported as it is
        with timer.phase("export.mesh", "the DMTet surface (marching tetrahedra)"):
            vertices, faces = (x.detach().cpu().numpy() for x in field.surface())
            if len(faces) == 0:
                raise UserError("the DMTet surface is empty: nothing to export (the refine stage lost the object; "
                                "refine again with a lower optim.dmtet_lr)")
            vertices, faces = clean_mesh(vertices, faces, e.min_component_ratio, e.decimate_faces)
    else:
        with timer.phase("export.mesh", f"marching cubes on a {e.resolution}^3 density grid"):
            vertices, faces = extract_mesh(density_fn or field.density, field.bound, e.resolution,
                                           threshold=e.threshold, min_component_ratio=e.min_component_ratio,
                                           decimate_faces=e.decimate_faces, device=device,
                                           auto_optical_depth=surface_optical_depth(field, e.auto_optical_depth))
    albedo_fn = lambda pts: field(pts)["albedo"]  # noqa: E731
    obj, glb = Path(run_dir) / MESH_OBJ, Path(run_dir) / MESH_GLB
    glb.parent.mkdir(exist_ok=True)
    if e.texture == "uv":
        if 0 < e.uv_max_faces < len(faces):
            with timer.phase("export.decimate", f"{len(faces)} faces to {e.uv_max_faces} for the UV atlas"):
                vertices, faces = decimate(vertices, faces, e.uv_max_faces, option="export.uv_max_faces")
        with timer.phase("export.unwrap", f"UV atlas of {len(faces)} faces (xatlas)"):
            vertices, faces, uv = unwrap(vertices, faces, size=e.texture_size)
        with timer.phase("export.bake", f"albedo baked into a {e.texture_size} px texture"):
            texture = bake_albedo(vertices, faces, uv, albedo_fn, size=e.texture_size, device=device)
        kwargs = {"uv": uv, "texture": texture}
    else:
        with timer.phase("export.bake", f"vertex colours of {len(vertices)} vertices"):
            kwargs = {"vertex_colors": vertex_colors(vertices, albedo_fn, device=device)}
    with timer.phase("export.write", f"{MESH_OBJ} and {MESH_GLB}"):
        write_obj(obj, vertices, faces, **kwargs)
        write_glb(glb, vertices, faces, **kwargs)
    return {"obj": obj, "glb": glb}


def export_video(field, cfg: Config, run_dir: Path, device, timer: PhaseTimer | None = None) -> Path:
    """orbit.mp4: export.video_frames views on the evaluation orbit, over the previews' background (the training
    colour when render.background is white, black or gray, else mid gray: renderer.eval_background)."""
    e, c, timer = cfg.export, cfg.camera, timer or PhaseTimer(quiet=True)
    with timer.phase("export.video", f"{e.video_frames} frames at {e.video_resolution} px"):
        cams = orbit_cameras(e.video_frames, c.eval_elevation, c.eval_distance, c.eval_fovy, device=device)
        side = e.video_resolution
        out = render_eval(field, cams, side, n_samples=cfg.render.n_samples, trained_over=cfg.render.background,
                          need_normals="normal" in e.video_panels, progress=None if timer.quiet else "video frames")
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
        path = Path(run_dir) / VIDEO
        write_video(path, stack_panels(panels), fps=e.video_fps)
    return path


def export_run(field, cfg: Config, run_dir: Path, device, timer: PhaseTimer | None = None,
               video_view=None) -> tuple[dict[str, Path], list[str]]:
    """Every artifact that can be made; the errors of those that could not, one line each. ``video_view``:
    ``renderer.eval_view(field, cfg.render.eval_grid)`` when the caller has it already (the trainer's last preview).

    A failure of one artifact (an empty field has no mesh) does not lose the others. Any other exception
    propagates carrying the artifacts written so far as its ``written`` attribute.
    """
    timer = timer or PhaseTimer(quiet=True)
    field.eval()
    written: dict[str, Path] = {}
    errors: list[str] = []
    with timer.phase("export.field", "the field's own files"):
        written.update(write_field_files(field, Path(run_dir)))  # triplane.npz, splats.ply
    view = rgb_view(field)  # a latent field (guidance.latent_render) is exported through latent_to_rgb
    video_field, e, grid = video_view, cfg.export, cfg.render.eval_grid
    if video_field is None and grid and not view.rasterized:
        with timer.phase("export.grid", f"density and albedo sampled once on a {grid}^3 grid for the video"):
            video_field = eval_view(field, grid)
    elif video_field is None:
        video_field = view
    same_grid = isinstance(video_field, BakedField) and video_field.resolution == e.resolution
    density_fn = video_field.density if same_grid else None
    for name, job in (("mesh", lambda: export_mesh(view, cfg, run_dir, timer, density_fn)),
                      ("video", lambda: {"video": export_video(video_field, cfg, run_dir, device, timer)})):
        try:
            written.update(job())
        except UserError as exc:
            errors.append(f"{name}: {exc}")
        except Exception as exc:
            exc.written = written  # an unexpected failure: the artifacts already written stay listed (run.py)
            raise
    field.train()
    return written, errors


def mesh_scores(cfg: Config, written: dict[str, Path]) -> dict[str, float]:
    """Under the embedded prior, the written mesh (``written["glb"]``) against the prompt's known object
    (world.scores.prior_scores: IoU, colour error); {} for any other guidance or without a mesh."""
    if cfg.guidance.model_kind != "prior" or "glb" not in written:
        return {}
    from .world.scores import prior_scores

    return prior_scores(written["glb"], cfg.prompt)
