"""Building a guidance from the config: the rule (``RULES``) around the loaded noise model (``MODELS``).

    model = load_guidance_model(cfg, device)          # the frozen model: slow, once per process
    guidance = build_guidance(cfg, device, model)      # bound to cfg.prompt: fast, once per prompt

Two keys choose it (guidance/config.py): ``guidance.type`` the rule (sds, perp_neg, vsd, clip, sdedit) and
``guidance.model_type`` the noise predictor (stable_diffusion, deepfloyd, prior, mvdream; clip loads CLIP).
``build_guidance(cfg, device)`` alone loads the model too. ``guidance_model_key(cfg)`` says which configs can
share one loaded model (a batch worker keeps it across prompts): the values of the keys its loader reads
(``config.model_settings``: config.MODEL_KEYS), the only ones that loader is handed.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from ..errors import UserError
from ..settings import check_sections
from .base import Guidance
from .config import model_settings
from .models.deepfloyd import DeepFloydIF
from .models.stable_diffusion import StableDiffusion
from .rules.perp_neg import PerpNegGuidance
from .rules.sds import SDSGuidance

__all__ = ["build_guidance", "load_guidance_model", "guidance_model_key", "RULES", "MODELS"]


def _load_sd(s: _Settings, device: torch.device) -> StableDiffusion:
    sd = s["guidance.stable_diffusion"]  # its dtype, channels_last, attention, compile: models/fastpaths.py
    return StableDiffusion.load(sd.model, revision=sd.revision, device=device, half_precision=sd.half_precision,
                                vae_resolution=sd.vae_resolution, fast_paths=sd)


def _load_deepfloyd(s: _Settings, device: torch.device) -> DeepFloydIF:
    deepfloyd = s["guidance.deepfloyd"]  # its dtype, channels_last, compile: models/fastpaths.py
    return DeepFloydIF.load(deepfloyd.model, revision=deepfloyd.revision, device=device,
                            half_precision=deepfloyd.half_precision, max_length=deepfloyd.max_length,
                            variant=deepfloyd.variant, fast_paths=deepfloyd)


def _load_mvdream(s: _Settings, device: torch.device):
    from .models.mvdream import MVDream

    return MVDream.load(s["guidance.mvdream"], device=device, n_views=s["camera.n_views"])


def _load_prior(s: _Settings, device: torch.device):
    from .models.multiview_prior import MultiViewPrior
    from .models.prior import EmbeddedPrior

    camera = SimpleNamespace(**{k: s[f"camera.{k}"] for k in  # the ranges of its image set: the training cameras'
                                ("elevation_range", "azimuth_range", "distance_range", "fovy_range")})
    if s["camera.n_views"] > 1:  # groups of views graded jointly (models/multiview_prior.py)
        return MultiViewPrior(camera, s["guidance.prior"], s["render.background"], device, s["camera.n_views"])
    return EmbeddedPrior(camera, s["guidance.prior"], s["render.background"], device)


def _load_clip(s: _Settings, device: torch.device):
    from .models.clip import FrozenCLIP

    return FrozenCLIP.load(s["guidance.clip.model"], revision=s["guidance.clip.revision"], device=device,
                           half_precision=s["guidance.clip.half_precision"])


MODELS = {"stable_diffusion": _load_sd, "deepfloyd": _load_deepfloyd, "prior": _load_prior, "mvdream": _load_mvdream,
          "clip": _load_clip}
"""guidance.model_type (and clip) -> its loader, handed only the keys MODEL_KEYS lists for it."""


def _vsd():
    from .rules.vsd import VSDGuidance  # peft is imported when a VSD guidance is built

    return VSDGuidance


def _clip():
    from .rules.clip import CLIPGuidance

    return lambda model, g, prompt, negative_prompt: CLIPGuidance(model, prompt, g)


def _sdedit():
    from .rules.sdedit import SDEditGuidance

    return SDEditGuidance


RULES = {"sds": lambda: SDSGuidance, "perp_neg": lambda: PerpNegGuidance, "vsd": _vsd, "clip": _clip,
         "sdedit": _sdedit}
"""guidance.type -> its rule's constructor ``rule(model, cfg.guidance, prompt, negative_prompt)``, imported when asked
for (rules/vsd.py needs peft, rules/clip.py transformers' CLIP)."""


def guidance_model_key(cfg: Any) -> tuple:
    """Configs with equal keys load the same frozen model: the model kind and the values of the keys its loader reads."""
    return (cfg.guidance.model_kind,) + model_settings(cfg).key()


def load_guidance_model(cfg: Any, device: str | torch.device) -> Any:
    """The frozen model ``cfg.guidance`` needs (guidance.model_type: Stable Diffusion, DeepFloyd IF or the embedded
    prior's image set; CLIP for guidance.type=clip), loaded on ``device``; it knows no prompt. The guidance
    section's checks run first (a config made in code meets the rules a loaded one does)."""
    check_sections(cfg.guidance, cfg, "guidance.")
    return MODELS[cfg.guidance.model_kind](model_settings(cfg), torch.device(device))


def build_guidance(cfg: Any, device: str | torch.device, model: Any = None) -> Guidance:
    """The rule named by ``cfg.guidance.type`` for ``cfg.prompt``, around ``model`` (a ``load_guidance_model``
    result for an equal ``guidance_model_key``), or a freshly loaded one; the guidance section's checks run
    first either way."""
    if not cfg.prompt or not cfg.prompt.strip():  # before the slow model load
        raise UserError('prompt is empty: pass prompt="a red cube" (or any text)')
    if model is None:
        model = load_guidance_model(cfg, device)
    else:
        check_sections(cfg.guidance, cfg, "guidance.")
    rule = RULES[cfg.guidance.type]()
    return rule(model, cfg.guidance, cfg.prompt, cfg.negative_prompt)
