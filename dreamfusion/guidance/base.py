"""The Guidance interface: what the training loop asks of anything that grades renders.

    terms = guidance(images [B, H, W, C], cameras, step, total_steps, generator=None)
        -> {"loss_<name>": scalar tensor (weighted by the config's loss.<name>), "<name>": float (logged)}
    guidance.param_groups()       Adam groups of trainable guidance state ([] for a frozen prior)
    guidance.state_dict()         that state, checkpointed with the field ({} when frozen)
    guidance.load_state_dict(s)

The frozen diffusion / CLIP model is loaded apart from the prompt (``guidance.load_guidance_model``), so a
process can build one guidance per prompt around one loaded model (docs/DESIGN.md, "Guidance").
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import CheckpointError

__all__ = ["Guidance", "FrozenGuidance", "FunctionGuidance"]


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
