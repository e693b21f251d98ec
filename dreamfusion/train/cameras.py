"""Where the training cameras come from: random views around the object and the render size of each step behind
one object (threestudio's random-camera data module)."""

from __future__ import annotations

import torch

from render.cameras import Cameras, group_cameras, sample_cameras

__all__ = ["RandomCameras", "render_size"]


def render_size(step: int, cfg) -> tuple[int, int]:
    """(height, width) of the training render at `step`: render.progressive_sizes[i] (square) once
    render.progressive_milestones[i - 1] is reached, or height x width without a schedule."""
    if not cfg.progressive_sizes:
        return cfg.height, cfg.width
    stage = sum(step >= m for m in cfg.progressive_milestones)
    side = cfg.progressive_sizes[stage]
    return side, side


class RandomCameras:
    """camera.batch_size views per step drawn from the camera.* ranges with the run's generator (on the CPU, so
    a seed gives the same views on every device), moved to ``device``; the size from render.*'s schedule.
    With camera.n_views > 1 (multi-view guidance) the views come in groups of n_views, one draw per group: the
    group's views share elevation, distance and field of view, azimuths 360 / n_views degrees apart.
    With ``views`` (a fixed camera set: the embedded prior's dataset views, camera.snap_to_prior) each
    camera is one of them, drawn uniformly.

        cameras = RandomCameras(cfg.camera, cfg.render, generator, device)
        cams, (height, width) = cameras.sample(step)
    """

    def __init__(self, camera_cfg, render_cfg, generator: torch.Generator, device: torch.device,
                 views: Cameras | None = None):
        self.cfg, self.render_cfg, self.generator, self.device = camera_cfg, render_cfg, generator, device
        self.views = views

    def sample(self, step: int) -> tuple[Cameras, tuple[int, int]]:
        c = self.cfg
        if self.views is not None:
            pick = torch.randint(len(self.views.c2w), (c.batch_size,), generator=self.generator)
            return self.views.index(pick).to(self.device), render_size(step, self.render_cfg)
        cams = sample_cameras(c.batch_size // c.n_views, c.elevation_range, c.azimuth_range, c.distance_range,
                              c.fovy_range, generator=self.generator)
        if c.n_views > 1:
            cams = group_cameras(cams, c.n_views)
        return cams.to(self.device), render_size(step, self.render_cfg)
