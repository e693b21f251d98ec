"""Guidance: turns renders into loss terms (the Guidance interface, guidance/base.py).

    model = load_guidance_model(cfg, device)          # the frozen model: slow, once per process
    guidance = build_guidance(cfg, device, model)      # bound to cfg.prompt: fast, once per prompt

``guidance.type`` picks the rule (rules/: sds.py, perp_neg.py, vsd.py, clip.py, sdedit.py) and ``guidance.model_type`` the
noise model (models/: stable_diffusion.py, deepfloyd.py, prior.py, mvdream.py; CLIP's clip.py); base.py holds the protocols
between them, config.py their config section, build.py their construction. The names below import their module
on first use, so reading the config section (``guidance.config``, assembled by ``dreamfusion.config``) does not
import torch: the CLI's --help and the report start fast.
"""

from __future__ import annotations

import importlib

__all__ = ["build_guidance", "load_guidance_model", "guidance_model_key", "model_settings", "RULES", "MODELS",
           "Guidance", "FrozenGuidance", "FunctionGuidance", "SDSGuidance", "PerpNegGuidance", "NoisePredictor",
           "UNetNoisePredictor", "StableDiffusion", "DeepFloydIF", "view_label", "view_prompts"]

_HOME = {"build_guidance": "build", "load_guidance_model": "build", "guidance_model_key": "build",
         "model_settings": "config", "RULES": "build", "MODELS": "build",
         "Guidance": "base", "FrozenGuidance": "base", "FunctionGuidance": "base",
         "NoisePredictor": "base", "UNetNoisePredictor": "base",
         "SDSGuidance": "rules.sds", "PerpNegGuidance": "rules.perp_neg",
         "StableDiffusion": "models.stable_diffusion", "DeepFloydIF": "models.deepfloyd",
         "view_label": "prompts", "view_prompts": "prompts"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'dreamfusion.guidance' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
