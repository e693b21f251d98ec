"""Guidance: turns renders into loss terms. ``build_guidance(cfg, device)`` picks one by ``cfg.guidance.type``.

A guidance is called ``guidance(images [B, H, W, 3], cameras, step, total_steps, generator=None) -> dict``
of ``loss_*`` tensors (weighted by ``cfg.loss.<name>`` in the loop) and plain floats for logging.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..config import Config
from ..errors import ConfigError
from .prompts import slugify, view_label, view_prompts
from .sds import NoisePredictor, SDSGuidance
from .stable_diffusion import StableDiffusion

__all__ = ["build_guidance", "SDSGuidance", "NoisePredictor", "StableDiffusion", "view_label", "view_prompts",
           "slugify"]


def _build_sds(cfg: Config, device: torch.device) -> SDSGuidance:
    g = cfg.guidance
    model = StableDiffusion.load(g.model, revision=g.revision, device=device, half_precision=g.half_precision,
                                 prompt=cfg.prompt, negative_prompt=cfg.negative_prompt,
                                 view_dependent=g.view_dependent, vae_resolution=g.vae_resolution, fast_paths=g)
    return SDSGuidance(model, g)


def _build_prior(cfg: Config, device: torch.device) -> SDSGuidance:
    from .prior import EmbeddedPrior

    model = EmbeddedPrior(cfg.prompt, cfg.negative_prompt, cfg.camera, cfg.guidance, cfg.render.background, device)
    return SDSGuidance(model, cfg.guidance)


def _build_clip(cfg: Config, device: torch.device):
    from .clip import CLIPGuidance

    return CLIPGuidance.load(cfg.prompt, cfg.guidance, device)


def build_guidance(cfg: Config, device: str | torch.device) -> Callable[..., dict]:
    """The guidance named by ``cfg.guidance.type``, loaded on ``device``."""
    builders = {"sds": _build_sds, "prior": _build_prior, "clip": _build_clip}
    kind = cfg.guidance.type
    if kind not in builders:
        raise ConfigError(f"guidance.type '{kind}' is not available in this build: choose one of {', '.join(builders)}")
    return builders[kind](cfg, torch.device(device))
