"""Guidance: turns renders into loss terms (the Guidance interface, guidance/base.py).

    model = load_guidance_model(cfg, device)          # the frozen model: slow, once per process
    guidance = build_guidance(cfg, device, model)      # bound to cfg.prompt: fast, once per prompt

``guidance.type`` picks the rule (sds.py, perp_neg.py, vsd.py, clip.py) and ``guidance.model_type`` the noise
model (stable_diffusion.py, deepfloyd.py, prior.py); their config section is config.py, their construction
build.py. The names below import their module on first use, so reading the config section (``guidance.config``,
assembled by ``dreamfusion.config``) does not import torch: the CLI's --help and the report start fast.
"""

from __future__ import annotations

import importlib

__all__ = ["build_guidance", "load_guidance_model", "guidance_model_key", "model_settings", "RULES", "MODELS",
           "Guidance", "FrozenGuidance", "FunctionGuidance", "SDSGuidance", "PerpNegGuidance", "NoisePredictor",
           "UNetNoisePredictor", "StableDiffusion", "DeepFloydIF", "view_label", "view_prompts"]

_HOME = {"build_guidance": "build", "load_guidance_model": "build", "guidance_model_key": "build",
         "model_settings": "build", "RULES": "build", "MODELS": "build",
         "Guidance": "base", "FrozenGuidance": "base", "FunctionGuidance": "base",
         "SDSGuidance": "sds", "NoisePredictor": "sds", "UNetNoisePredictor": "sds", "PerpNegGuidance": "perp_neg",
         "StableDiffusion": "stable_diffusion", "DeepFloydIF": "deepfloyd",
         "view_label": "prompts", "view_prompts": "prompts"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'dreamfusion.guidance' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
