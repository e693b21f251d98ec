"""2D preview: ``python -m dreamfusion preview prompt=... [--config NAME] [--steps 50] [key=value ...]`` samples
one image per view (front, right, back, left at the config's evaluation camera) with DDIM from the run's own
guidance model and view suffixes, at the preview's own guidance scale (``guidance.preview_scale``, a sampling
scale such as 7.5, not the SDS scale), so a user sees what the prior makes of the prompt before a long 3D run.
Works for every diffusion guidance (Stable Diffusion, the embedded prior, DeepFloyd IF), not for CLIP.

DDIM (Song et al. 2021, eq. 12 with eta = 0) on n = --steps timesteps spread evenly from T - 1 down to 0
(diffusers' 'linspace' spacing; one step: T - 1). Starting at T - 1 matches the start x_T ~ N(0, I) to the noise
level the model was trained on for it (Lin et al. 2023, sec. 3.3), and ending at 0 leaves the least noise for the
last x0 estimate (ending at T/n - 1, as 'trailing' does, leaves blends of near-identical images at the embedded prior):
    eps_hat = eps_u + s (eps_c - eps_u)                               (classifier-free guidance at scale s)
    x0_hat  = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
    where the model's pixels are bounded (clip_denoised): x0_hat <- clip(x0_hat, -1, 1) and the noise is made
    consistent with it, eps_hat <- (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t) (GLIDE's rule; diffusers' DDIM
    step with use_clipped_model_output=True): a step with the clipped x0 but the model's noise leaves x_t off the
    path of any x0, and the embedded prior then draws black squares
    x_prev  = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat   (abar_prev = 1 after the last step: x0_hat)
Every tensor lives on the model's device (``alphas_cumprod.device``); the start noise is drawn from ``generator``
on the generator's device and moved there, so a seed gives the same start on every device.
"""

from __future__ import annotations

import io
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from render.cameras import Cameras

from .errors import UserError
from .renderer import preview_cameras

__all__ = ["ddim_timesteps", "ddim_sample", "sample_preview", "preview_image", "write_preview"]

VIEW_LABELS = ("front", "right", "back", "left")
MIN_VIEW_PX = 128  # each view is shown at least this wide: smaller samples are enlarged by a whole factor
LABEL_PX = 20  # height of the label band above each view


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """n timesteps, descending, evenly from T - 1 to 0: round((T - 1) (n - 1 - i) / (n - 1)); [T - 1] for n = 1."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"ddim_timesteps: steps must be in [1, {num_train_timesteps}], got {steps}")
    last = num_train_timesteps - 1
    return [round(last * (steps - 1 - i) / (steps - 1)) for i in range(steps)] if steps > 1 else [last]


@torch.no_grad()
def ddim_sample(predictor, cond, cameras: Cameras, guidance_scale: float, steps: int = 50,
                generator: torch.Generator | None = None) -> Tensor:
    """x0 [B, C, h, w] on the predictor's device: deterministic DDIM from N(0, I), one sample per camera."""
    from .guidance.sds import classifier_free_guidance

    abar = predictor.alphas_cumprod.float()  # [T], on the model's device
    device = abar.device
    batch = cameras.c2w.shape[0]
    noise_device = generator.device if generator is not None else device
    x = torch.randn((batch, *predictor.sample_shape), generator=generator, device=noise_device).to(device)
    timesteps = ddim_timesteps(steps, abar.shape[0])
    one = abar.new_ones(())
    for i, t in enumerate(timesteps):
        a_t, a_prev = abar[t], (abar[timesteps[i + 1]] if i + 1 < len(timesteps) else one)
        eps_u, eps_c = predictor.predict_noise(x, torch.full((batch,), t, dtype=torch.long, device=device),
                                               cameras, cond)
        eps = classifier_free_guidance(eps_u.float(), eps_c.float(), guidance_scale)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if predictor.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


def sample_preview(cfg, steps: int = 50, model=None) -> Tensor:
    """images [4, H, W, 3] in [0, 1] (CPU): the prompt sampled by the config's guidance model at the four views,
    at guidance scale ``cfg.guidance.preview_scale``."""
    from .guidance import load_guidance_model
    from .run import resolve_device

    if cfg.guidance.type == "clip":
        raise UserError("preview samples a diffusion model; CLIP (guidance.type=clip) cannot draw images: "
                        "use guidance.type=sds with guidance.model_type=stable_diffusion, deepfloyd or prior")
    if not cfg.prompt.strip():
        raise UserError('prompt is empty: pass prompt="a red cube" (or any text)')
    model = load_guidance_model(cfg, resolve_device(cfg.device)) if model is None else model
    device = model.alphas_cumprod.device
    cond = model.encode_prompt(cfg.prompt, cfg.negative_prompt, cfg.guidance.view_dependent)
    generator = torch.Generator().manual_seed(cfg.seed)
    x0 = ddim_sample(model, cond, preview_cameras(cfg.camera, device), cfg.guidance.preview_scale, steps, generator)
    return model.decode(x0).float().cpu()


def preview_image(images: Tensor, labels=VIEW_LABELS) -> np.ndarray:
    """[LABEL_PX + k h, 4 k w, 3] uint8: the views side by side, each enlarged by the whole factor
    k = ceil(MIN_VIEW_PX / w) (nearest neighbour: every sample pixel becomes a k x k block) under its label."""
    n, h, w, _ = images.shape
    k = max(1, math.ceil(MIN_VIEW_PX / w))
    big = F.interpolate(images.permute(0, 3, 1, 2).float(), scale_factor=k, mode="nearest")  # [n, 3, k h, k w]
    views = (big.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    row = np.full((LABEL_PX + k * h, n * k * w, 3), 255, dtype=np.uint8)
    row[LABEL_PX:] = np.concatenate(list(views), axis=1)
    canvas = Image.fromarray(row)
    draw, font = ImageDraw.Draw(canvas), _font()
    for i, label in enumerate(labels):
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        draw.text((i * k * w + (k * w - (right - left)) // 2 - left, (LABEL_PX - (bottom - top)) // 2 - top),
                  label, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _font():
    try:
        return ImageFont.load_default(size=14)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # Pillow built without FreeType: its small bitmap font


def write_preview(cfg, steps: int = 50) -> Path:
    """The ``preview`` command's work: writes <output_dir>/preview-<slug>-<time>.png and returns its path."""
    from .io import atomic_write
    from .runfolder import slugify

    t0 = time.perf_counter()
    images = sample_preview(cfg, steps)
    path = Path(cfg.output_dir) / f"preview-{slugify(cfg.prompt)}-{time.strftime('%Y%m%d-%H%M%S')}.png"
    buffer = io.BytesIO()
    Image.fromarray(preview_image(images)).save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
    print(f"preview: {steps} DDIM steps at guidance scale {cfg.guidance.preview_scale:g} (guidance.preview_scale), "
          f"views {' / '.join(VIEW_LABELS)}, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path
