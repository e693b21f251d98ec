"""Render a field from cameras: the renderer chooses volume rendering (volume.py) or splats (splats.py) by the
field's class, and :class:`Renderer` holds what rendering one run's field needs (the render config and the
sampler state: nerfacc's occupancy-grid estimator)."""

from __future__ import annotations

import sys

import torch
from torch import Tensor
from tqdm import tqdm

from render.cameras import Cameras, orbit_cameras
from render.shading import random_light_dirs

from ..fields.dmtet import DMTetField
from ..fields.gaussian import GaussianField
from .backgrounds import eval_background
from .config import RenderConfig
from .occupancy import make_sampler, skip_grid, update_sampler
from .mesh import pick_mesh_rasterizer, render_mesh
from .splats import render_splats
from .views import eval_view
from .volume import render_volume

__all__ = ["Renderer", "render_views", "render_views_chunked", "render_eval", "pick_shading", "preview_cameras"]

# field class -> how it is rendered; every other field is a volume (render_volume).
_RENDERERS = {GaussianField: render_splats, DMTetField: render_mesh}


def render_views(field, background, cameras: Cameras, height: int, width: int, **options) -> dict[str, Tensor]:
    """Render B views of any field: splats for a GaussianField (splats.render_splats), rasterization for a
    DMTetField (mesh.render_mesh), volume rendering for every other field (volume.render_volume). Returns rgb [B,H,W,C], opacity [B,H,W,1], depth [B,H,W,1], albedo,
    normal | None, dirs (see render_volume); splats add means2d and radii."""
    render = next((fn for kind, fn in _RENDERERS.items() if isinstance(field, kind)), render_volume)
    return render(field, background, cameras, height, width, **options)


def render_views_chunked(field, background, cameras: Cameras, height: int, width: int, *, n_samples: int,
                         views_per_chunk: int = 1, need_normals: bool = False, progress: str | None = None,
                         **kwargs) -> dict[str, Tensor]:
    """render_views without keeping a graph, a few views at a time (orbit videos, previews, evaluation).
    Pass occupancy=skip_grid(field, n_samples) to skip empty space; ``progress`` names a progress bar on stderr.

    Normals come from autograd of the density, so grad mode stays on only while they are needed.
    """
    need = need_normals or kwargs.get("shading", "albedo") != "albedo"
    parts = []
    starts = range(0, cameras.c2w.shape[0], views_per_chunk)
    if progress:
        starts = tqdm(starts, desc=progress, file=sys.stderr, dynamic_ncols=True, leave=False)
    for start in starts:
        sub = Cameras(*(x[start:start + views_per_chunk] for x in cameras))
        with torch.set_grad_enabled(need):
            out = render_views(field, background, sub, height, width, n_samples=n_samples,
                               need_normals=need, **kwargs)
        parts.append({k: (v.detach() if v is not None else None) for k, v in out.items()})
    return {k: (torch.cat([p[k] for p in parts]) if parts[0][k] is not None else None) for k in parts[0]}


def render_eval(view, cameras: Cameras, side: int, *, n_samples: int, trained_over: str,
                **options) -> dict[str, Tensor]:
    """Views of ``view`` (an eval_view) as previews and the orbit video show them: without a graph, side x side,
    empty space skipped, over ``eval_background(trained_over)`` (``trained_over``: the run's render.background;
    the training colour when fixed, else mid gray); ``options`` go to render_views_chunked (need_normals, ...)."""
    return render_views_chunked(view, None, cameras, side, side, n_samples=n_samples,
                                background_kind=eval_background(trained_over), occupancy=skip_grid(view, n_samples),
                                **options)


def pick_shading(step: int, cfg, generator: torch.Generator) -> str:
    """DreamFusion shading schedule: albedo during warm-up, then albedo / textureless / lambertian at random."""
    if step < cfg.albedo_warmup_steps:
        return "albedo"
    u = torch.rand((), generator=generator, device=generator.device).item()
    if u < cfg.albedo_prob:
        return "albedo"
    return "textureless" if u < cfg.albedo_prob + cfg.textureless_prob else "lambertian"


def pick_lights(shading: str, origins: Tensor, generator: torch.Generator) -> Tensor | None:
    """Light directions [B, 3] for a shaded render from cameras at ``origins`` [B, 3]; None for albedo (no draw)."""
    return None if shading == "albedo" else random_light_dirs(origins, generator)


def preview_cameras(camera_cfg, device=None) -> Cameras:
    """Front, right, back, left (azimuth 0, 90, 180, -90) at the evaluation elevation, distance and fovy."""
    cams = orbit_cameras(4, camera_cfg.eval_elevation, camera_cfg.eval_distance, camera_cfg.eval_fovy, device=device)
    return Cameras(*(torch.roll(x, -2, 0) for x in cams))  # the orbit starts at -180: roll to front first


class Renderer:
    """Renders one run's field with the ``render`` config section and holds the state of that: nerfacc's
    occupancy-grid estimator (render.sampler nerfacc, or auto on CUDA; None with the torch sampler and for splats),
    which the trainer checkpoints (:meth:`state_dict`, under the key "estimator"), and the eval view of the field
    since its last training step (previews, then the orbit video).

        renderer = Renderer(cfg.render, field, device, latent=cfg.guidance.latent_render)
        renderer.update(step)                               # before each training render
        out = renderer.render_train(cams, H, W, step, background=bg, generator=g)   # shading and light drawn
        out = renderer.render(cams, H, W, background=bg, shading="albedo", generator=g)
        image = renderer.render_preview(cfg.camera, side)   # [side, 4 side, 3]: front, right, back, left
        view = renderer.eval_view()                         # previews and the video: RGB, on render.eval_grid
        out = renderer.render_eval(view, cams, side)        # no graph, empty space skipped, eval_background
    """

    def __init__(self, cfg: RenderConfig, field, device: torch.device | str, latent: bool = False):
        self.cfg, self.field, self.latent = cfg, field, latent  # a latent field is trained unshaded (albedo)
        self.device = torch.device(device)
        self.estimator = make_sampler(cfg.sampler, field, self.device)
        self.mesh_rasterizer = pick_mesh_rasterizer(cfg.mesh_rasterizer, self.device)  # torch | nvdiffrast
        self._view = None  # the eval view made since the last training step, if any

    def update(self, step: int) -> None:
        """Before the training render of ``step``: refresh the occupancy grid from the field's density (nerfacc's
        schedule; nothing without one) and forget the eval view (the field is about to change)."""
        self._view = None
        update_sampler(self.estimator, self.field, step, self.cfg.n_samples)

    def render(self, cameras: Cameras, height: int, width: int, *, background, shading: str = "albedo",
               light_dirs: Tensor | None = None, perturb: bool = True, need_normals: bool = False,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """A training render (with a graph) of the field: render_views with the config's samples, jitter
        (``perturb`` and render.perturb), ambient light and background kind, through the occupancy grid if any."""
        r = self.cfg
        return render_views(self.field, background, cameras, height, width, n_samples=r.n_samples,
                            perturb=perturb and r.perturb, shading=shading, light_dirs=light_dirs,
                            ambient=r.ambient, background_kind=r.background, generator=generator,
                            need_normals=need_normals, estimator=self.estimator, **self._mesh_options(self.field))

    def render_train(self, cameras: Cameras, height: int, width: int, step: int, *, background,
                     generator: torch.Generator, need_normals: bool = False) -> dict[str, Tensor]:
        """:meth:`render` of training step ``step`` with the shading it draws (pick_shading; albedo for a latent
        field) and, when shaded, a random light (pick_lights), both from ``generator``."""
        shading = "albedo" if self.latent else pick_shading(step, self.cfg, generator)
        return self.render(cameras, height, width, background=background, shading=shading, generator=generator,
                           light_dirs=pick_lights(shading, cameras.c2w[:, :3, 3], generator), need_normals=need_normals)

    @torch.no_grad()
    def render_preview(self, camera_cfg, side: int) -> Tensor:
        """[side, 4 side, 3] in [0, 1], on the CPU: four views (front, right, back, left) at the evaluation camera
        side by side, of the eval view (render_eval: empty space skipped, over backgrounds.eval_background)."""
        out = self.render_eval(self.eval_view(), preview_cameras(camera_cfg, self.device), side, views_per_chunk=1)
        return torch.cat(list(out["rgb"].clamp(0, 1)), dim=1).cpu()

    def eval_view(self):
        """The field as previews and the orbit video see it (views.eval_view with render.eval_grid), made once
        between two training steps."""
        if self._view is None:
            self._view = eval_view(self.field, self.cfg.eval_grid)
        return self._view

    def cached_eval_view(self):
        """The eval view already made since the last training step (the last preview's), else None."""
        return self._view

    def render_eval(self, view, cameras: Cameras, side: int, **options) -> dict[str, Tensor]:
        """:func:`render_eval` with the config's samples per ray and background."""
        return render_eval(view, cameras, side, n_samples=self.cfg.n_samples, trained_over=self.cfg.background,
                           **self._mesh_options(view), **options)

    def _mesh_options(self, field) -> dict:
        """The rasterizer render_mesh takes for a surface field; nothing for the other renderers."""
        return {"rasterizer": self.mesh_rasterizer} if isinstance(field, DMTetField) else {}

    def state_dict(self) -> dict:
        return self.estimator.state_dict() if self.estimator is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """The estimator's state from a checkpoint ({} from a run without one: the grid is rebuilt by update)."""
        if self.estimator is not None and state:
            self.estimator.load_state_dict(state)
