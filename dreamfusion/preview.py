"""2D preview: ``python -m dreamfusion preview prompt=... [--config NAME] [--steps 50] [key=value ...]`` samples
one image per view (front, right, back, left at the config's evaluation camera) with DDIM from the run's own
guidance model, guidance scale and view suffixes, so a user sees what the prior makes of the prompt before a long
3D run. Works for every diffusion guidance (Stable Diffusion, the embedded prior, DeepFloyd IF), not for CLIP.

DDIM (Song et al. 2021, eq. 12 with eta = 0), on the timesteps T - T/n, ..., T/n, 0 (n = --steps):
    eps_hat = classifier-free guided noise at t
    x0_hat  = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)          (clipped to [-1, 1] in pixel space)
    x_prev  = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat         (abar_prev = 1 after the last step)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from render.cameras import Cameras, orbit_cameras

from .errors import UserError

__all__ = ["ddim_timesteps", "ddim_sample", "preview_cameras", "sample_preview", "cmd_preview"]

USAGE = "usage: python -m dreamfusion preview prompt=\"...\" [--config NAME] [--steps 50] [key=value ...]"


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """n evenly spaced training timesteps, descending: T - T/n, ..., T/n, 0 (diffusers' 'leading' spacing)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"ddim_timesteps: steps must be in [1, {num_train_timesteps}], got {steps}")
    ratio = num_train_timesteps // steps
    return [i * ratio for i in reversed(range(steps))]


@torch.no_grad()
def ddim_sample(predictor, cond, cameras: Cameras, guidance_scale: float, steps: int = 50,
                generator: torch.Generator | None = None) -> Tensor:
    """x0 [B, C, h, w]: deterministic DDIM from N(0, I) (drawn from ``generator``), one sample per camera."""
    from .guidance.sds import classifier_free_guidance

    abar = predictor.alphas_cumprod.float().cpu()
    batch = cameras.c2w.shape[0]
    x = torch.randn((batch, *predictor.sample_shape), generator=generator)
    timesteps = ddim_timesteps(steps, abar.shape[0])
    x0 = x
    for i, t in enumerate(timesteps):
        eps_u, eps_c = predictor.predict_noise(x, torch.full((batch,), t, dtype=torch.long), cameras, cond)
        eps = classifier_free_guidance(eps_u.float().cpu(), eps_c.float().cpu(), guidance_scale)
        a_t = abar[t]
        a_prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if predictor.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x0


def preview_cameras(camera_cfg, device=None) -> Cameras:
    """Front, right, back, left (azimuth 0, 90, 180, -90) at the evaluation elevation, distance and fovy."""
    cams = orbit_cameras(4, camera_cfg.eval_elevation, camera_cfg.eval_distance, camera_cfg.eval_fovy, device=device)
    return Cameras(*(torch.roll(x, -2, 0) for x in cams))  # the orbit starts at -180: roll to front first


def sample_preview(cfg, steps: int = 50, model=None) -> Tensor:
    """images [4, H, W, 3] in [0, 1]: the config's prompt sampled by its guidance model at the four views."""
    from .guidance import load_guidance_model
    from .run import resolve_device

    if cfg.guidance.type == "clip":
        raise UserError("preview samples a diffusion model; CLIP (guidance.type=clip) cannot draw images: "
                        "use guidance.type=sds, prior or deepfloyd")
    if not cfg.prompt.strip():
        raise UserError('prompt is empty: pass prompt="a red cube" (or any text)')
    device = resolve_device(cfg.device)
    model = load_guidance_model(cfg, device) if model is None else model
    cond = model.encode_prompt(cfg.prompt, cfg.negative_prompt, cfg.guidance.view_dependent)
    generator = torch.Generator().manual_seed(cfg.seed)
    x0 = ddim_sample(model, cond, preview_cameras(cfg.camera, device), cfg.guidance.guidance_scale, steps, generator)
    return model.decode(x0.to(device)).float().cpu()


def _parse(argv: list[str]) -> tuple[str | None, int, list[str]]:
    from .cli import split_config_flag

    steps, rest, i = 50, [], 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag == "--steps":
            if not eq:
                if i + 1 >= len(argv):
                    raise UserError(f"--steps needs a value; {USAGE}")
                value, i = argv[i + 1], i + 1
            try:
                steps = int(value)
            except ValueError:
                steps = 0
            if not 1 <= steps <= 1000:
                raise UserError(f"--steps must be an integer in [1, 1000], got '{value}'")
        else:
            rest.append(argv[i])
        i += 1
    name, overrides = split_config_flag(rest)
    return name, steps, overrides


def cmd_preview(argv: list[str]) -> Path:
    """The ``preview`` subcommand: writes <output_dir>/preview-<slug>-<time>.png and returns its path."""
    from .config import load_config
    from .guidance.prompts import slugify
    from .io import atomic_write

    name, steps, overrides = _parse(argv)
    cfg = load_config(name, overrides)
    t0 = time.perf_counter()
    images = sample_preview(cfg, steps)
    row = (torch.cat(list(images), dim=1).numpy() * 255).round().astype(np.uint8)  # [H, 4W, 3]
    path = Path(cfg.output_dir) / f"preview-{slugify(cfg.prompt)}-{time.strftime('%Y%m%d-%H%M%S')}.png"
    buffer = __import__("io").BytesIO()
    Image.fromarray(row).save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
    print(f"preview: {steps} DDIM steps at guidance scale {cfg.guidance.guidance_scale:g}, views front / right / "
          f"back / left, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path
