"""The optimizer step of the loop: is the step finite, the learning-rate warm-up (a named function of the step),
and Adam's step with the scheduled groups' rates."""

from __future__ import annotations

import torch

__all__ = ["all_finite", "warmup_factor", "adam_step"]


def all_finite(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
    """Whether the loss and every gradient the optimizer would apply are finite (a gradient's norm is NaN or
    infinite when one of its entries is); one sync."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norms = torch.stack(torch._foreach_norm(grads)).to(loss.device) if grads else loss.new_zeros(0)
    return bool(torch.isfinite(torch.cat([loss.detach().reshape(1).float(), norms.float()])).all())


def warmup_factor(step: int, cfg) -> float:
    """Learning-rate multiplier at `step`: lr_warmup_start -> 1 linearly over optim.lr_warmup_steps, then 1."""
    if cfg.lr_warmup_steps <= 0 or step >= cfg.lr_warmup_steps:
        return 1.0
    return cfg.lr_warmup_start + (1.0 - cfg.lr_warmup_start) * step / cfg.lr_warmup_steps


def adam_step(optimizer: torch.optim.Optimizer, factor: float, lrs: dict[str, float] | None = None) -> None:
    """optimizer.step() after setting the scheduled groups' lrs (``lrs``: {group name: lr}, e.g. the Gaussian
    means' decay), with every group's lr scaled by `factor` (warmup_factor) for this step only, so the warm-up
    composes with the schedules and checkpoints keep plain lrs."""
    for group in optimizer.param_groups:
        if lrs and group.get("name") in lrs:
            group["lr"] = lrs[group["name"]]
    if factor != 1.0:
        for group in optimizer.param_groups:
            group["lr"] *= factor
    optimizer.step()
    if factor != 1.0:
        for group in optimizer.param_groups:
            group["lr"] /= factor
