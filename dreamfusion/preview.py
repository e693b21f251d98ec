"""2D preview: ``python -m dreamfusion preview prompt=... [--config NAME] [--steps 50] [key=value ...]`` samples
one image per view (front, right, back, left at the config's evaluation camera) with DDIM from the run's own
guidance model and view suffixes, at the preview's own guidance scale (``guidance.preview_scale``, a sampling
scale such as 7.5, not the SDS scale), so a user sees what the prior makes of the prompt before a long 3D run.
Works for every diffusion guidance (Stable Diffusion, the embedded prior, DeepFloyd IF), not for CLIP.

The sampler is DDIM (dreamfusion/guidance/models/ddim.py).
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
from .guidance.models.ddim import ddim_sample
from .renderer import preview_cameras

__all__ = ["sample_preview", "preview_image", "write_preview"]

VIEW_LABELS = ("front", "right", "back", "left")
MIN_VIEW_PX = 128  # each view is shown at least this wide: smaller samples are enlarged by a whole factor
LABEL_PX = 20  # height of the label band above each view




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
