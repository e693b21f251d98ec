"""The strategy interface (gsplat's ``Strategy``): the trainer calls these hooks every step, whatever the field.
This no-op one is for fields whose parameters never change in number; densify.py's DensifyStrategy, the Gaussians'
densification, has the same methods."""

from __future__ import annotations

import torch

from .densify import DensifyStrategy

__all__ = ["Strategy", "build_strategy"]


class Strategy:
    """No densification: no scheduled learning rates, nothing kept or changed, no state."""

    def learning_rates(self, step: int) -> dict[str, float]:
        """{param group name: learning rate} of Adam step ``step``, for the groups the strategy schedules."""
        return {}

    def step_pre_backward(self, out: dict) -> None:
        """After the render, before backward (keep the gradients the statistics need)."""

    def step_post_optimizer(self, field, optimizer: torch.optim.Optimizer | None, out: dict,
                            step: int) -> dict[str, int] | None:
        """After a finite Adam step of step ``step``: statistics, and resizing the field when due."""
        return None

    def log_terms(self, field) -> dict[str, float]:
        """Numbers for each metrics.jsonl row."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_strategy(cfg, field) -> Strategy:
    """The run's strategy: the Gaussians' densification for field.type gaussian, else the no-op one."""
    if cfg.field.type == "gaussian":
        return DensifyStrategy(cfg.field.gaussian, cfg.optim.gaussian, field)
    return Strategy()
