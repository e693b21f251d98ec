"""Guidance: turns renders into loss terms (the Guidance interface, guidance/base.py).

    model = load_guidance_model(cfg, device)          # the frozen model: slow, once per process
    guidance = build_guidance(cfg, device, model)      # bound to cfg.prompt: fast, once per prompt

``build_guidance(cfg, device)`` alone loads the model too. ``guidance_model_key(cfg)`` says which configs can
share one loaded model (a batch worker keeps it across prompts).
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import Config
from ..settings import check_choice
from ..errors import UserError
from .base import FrozenGuidance, FunctionGuidance, Guidance
from .prompts import slugify, view_label, view_prompts
from .sds import NoisePredictor, SDSGuidance
from .stable_diffusion import StableDiffusion
from .deepfloyd import DeepFloydIF

__all__ = ["build_guidance", "load_guidance_model", "guidance_model_key", "Guidance", "FrozenGuidance", "FunctionGuidance",
           "SDSGuidance", "NoisePredictor", "StableDiffusion", "DeepFloydIF", "view_label", "view_prompts", "slugify"]


def _load_sd(cfg: Config, device: torch.device) -> StableDiffusion:
    g = cfg.guidance
    return StableDiffusion.load(g.model, revision=g.revision, device=device, half_precision=g.half_precision,
                                vae_resolution=g.vae_resolution, fast_paths=g)


def _load_prior(cfg: Config, device: torch.device):
    from .prior import EmbeddedPrior

    return EmbeddedPrior(cfg.camera, cfg.guidance.prior, cfg.render.background, device)


def _load_clip(cfg: Config, device: torch.device):
    from .clip import FrozenCLIP

    g = cfg.guidance
    return FrozenCLIP.load(g.model, revision=g.revision, device=device, half_precision=g.half_precision)


def _load_deepfloyd(cfg: Config, device: torch.device):
    g = cfg.guidance
    return DeepFloydIF.load(g.model, revision=g.revision, device=device, half_precision=g.half_precision,
                            max_length=g.deepfloyd.max_length, variant=g.deepfloyd.variant, fast_paths=g)


def guidance_model_key(cfg: Config) -> tuple:
    """Configs with equal keys load the same frozen model (the settings each loader reads)."""
    g = cfg.guidance
    if g.type == "sds":
        return ("sds", g.model, g.revision, g.half_precision, g.dtype, g.channels_last, g.attention, g.compile,
                g.vae_resolution)
    if g.type == "deepfloyd":
        return ("deepfloyd", g.model, g.revision, g.half_precision, g.dtype, g.channels_last, g.compile,
                g.deepfloyd.max_length, g.deepfloyd.variant)
    if g.type == "prior":
        c = cfg.camera
        return ("prior", tuple(c.elevation_range), tuple(c.azimuth_range), tuple(c.distance_range),
                tuple(c.fovy_range), g.prior.resolution, g.prior.views, g.prior.view_window, cfg.render.background)
    return ("clip", g.model, g.revision, g.half_precision)


def load_guidance_model(cfg: Config, device: str | torch.device) -> Any:
    """The frozen model that ``cfg.guidance.type`` needs (Stable Diffusion, the embedded prior's image set, CLIP
    or DeepFloyd IF), loaded on ``device``; it knows no prompt."""
    loaders = {"sds": _load_sd, "prior": _load_prior, "clip": _load_clip, "deepfloyd": _load_deepfloyd}
    return loaders[check_choice(cfg.guidance, "type", "guidance.type")](cfg, torch.device(device))


def build_guidance(cfg: Config, device: str | torch.device, model: Any = None) -> Guidance:
    """The guidance named by ``cfg.guidance.type`` for ``cfg.prompt``, around ``model`` (a
    ``load_guidance_model`` result for an equal ``guidance_model_key``), or a freshly loaded one."""
    if not cfg.prompt or not cfg.prompt.strip():  # before the slow model load
        raise UserError('prompt is empty: pass prompt="a red cube" (or any text)')
    model = load_guidance_model(cfg, device) if model is None else model
    if cfg.guidance.type == "clip":
        from .clip import CLIPGuidance

        return CLIPGuidance(model, cfg.prompt, cfg.guidance)
    if cfg.guidance.vsd.enabled:
        from .vsd import VSDGuidance

        return VSDGuidance(model, cfg.guidance, cfg.prompt, cfg.negative_prompt)
    if cfg.guidance.perp_neg.enabled:
        from .perp_neg import PerpNegGuidance

        return PerpNegGuidance(model, cfg.guidance, cfg.prompt, cfg.negative_prompt)
    return SDSGuidance(model, cfg.guidance, cfg.prompt, cfg.negative_prompt)
