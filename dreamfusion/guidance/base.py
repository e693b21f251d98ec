"""The Guidance interface: what the training loop asks of anything that grades renders.

    terms = guidance(images [B, H, W, C], cameras, step, total_steps, generator=None)
        -> {"loss_<name>": scalar tensor (weighted by the config's loss.<name>), "<name>": float (logged)}
    guidance.param_groups()       Adam groups of trainable guidance state ([] for a frozen prior)
    guidance.state_dict()         that state, checkpointed with the field ({} when frozen)
    guidance.load_state_dict(s)

The frozen diffusion / CLIP model is loaded apart from the prompt (``guidance.load_guidance_model``), so a
process can build one guidance per prompt around one loaded model (docs/DESIGN.md, "Guidance").

What a rule (guidance/rules/) asks of a diffusion model (guidance/models/): ``NoisePredictor`` (SDS, Perp-Neg,
the DDIM sampler) and ``UNetNoisePredictor`` (VSD, which trains a LoRA of the UNet).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import CheckpointError

__all__ = ["Guidance", "FrozenGuidance", "FunctionGuidance", "NoisePredictor", "UNetNoisePredictor"]


@runtime_checkable
class Guidance(Protocol):
    def __call__(self, images: Tensor, cameras: Any, step: int, total_steps: int,
                 generator: torch.Generator | None = None) -> dict[str, Tensor | float]: ...

    def param_groups(self) -> list[dict]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class FrozenGuidance:
    """Base of guidance without trainable state (SDS on a frozen model, CLIP): no parameter groups, empty state."""

    def param_groups(self) -> list[dict]:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise CheckpointError(f"the checkpoint holds trainable guidance state ({', '.join(sorted(state))}) "
                                  f"but {type(self).__name__} has none: resume with the run's own guidance settings")


class FunctionGuidance(FrozenGuidance):
    """A plain function ``fn(images, cameras, step, total_steps, generator=None) -> dict`` as a frozen guidance
    (a custom loss, a test's stand-in for a diffusion model)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, images: Tensor, cameras: Any, step: int, total_steps: int,
                 generator: torch.Generator | None = None) -> dict[str, Tensor | float]:
        return self.fn(images, cameras, step, total_steps, generator=generator)


class NoisePredictor(Protocol):
    """What the SDS rule and Perp-Neg need from a diffusion model (Stable Diffusion, DeepFloyd IF, the embedded prior)."""

    alphas_cumprod: Tensor
    """abar_t for t = 0 .. T-1, shape [T] (T = 1000 for Stable Diffusion)."""
    n_views: int
    """Optional (1 when absent): a multi-view model (MVDream, the multi-view prior) grades its batch in groups of
    n_views consecutive views (camera.n_views); the SDS rule draws one t per group."""

    def encode(self, images: Tensor) -> Tensor:
        """images [B, H, W, 3] in [0, 1] -> x0 [B, C, h, w], differentiable."""
        ...

    def encode_prompt(self, prompt: str, negative_prompt: str, view_dependent: bool) -> Any:
        """The prompt's conditioning (text embeddings, or the prior's image sets), computed once per prompt."""
        ...

    def predict_noise(self, x_t: Tensor, t: Tensor, cameras: Any, cond: Any) -> tuple[Tensor, Tensor]:
        """x_t [B, C, h, w], t [B] long, cameras, encode_prompt's result -> (eps_uncond, eps_cond), each
        [B, C, h, w]; no gradient."""
        ...

    def predict_eps(self, x_t: Tensor, t: Tensor, embeddings: Tensor) -> Tensor:
        """x_t [B, C, h, w], t [B] long, K conditions per sample [K, B, ...] (rows of encode_prompt's result,
        e.g. Perp-Neg's interpolated and negative prompts) -> eps [K, B, C, h, w] in one call; no gradient."""
        ...


class UNetNoisePredictor(NoisePredictor, Protocol):
    """A noise predictor that is a diffusers UNet (Stable Diffusion): what VSD needs to train a LoRA of it."""

    unet: Any
    """The frozen UNet2DConditionModel (peft adapters are added to it)."""
    device: torch.device
    dtype: torch.dtype
    prediction_type: str
    """What the UNet outputs: epsilon, v_prediction or sample (guidance/models/prediction.py)."""

    def predict_eps(self, x_t: Tensor, t: Tensor, embeddings: Tensor, **unet_kwargs) -> Tensor:
        """As NoisePredictor.predict_eps, with extra UNet inputs (VSD's camera ``class_labels``)."""
        ...
