"""What a diffusion UNet predicts, and the noise eps it implies: one conversion for every model wrapper.

A DDPM-trained UNet is read at x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps and predicts one of three things,
named by its scheduler's ``prediction_type`` (diffusers' scheduler config key):

    epsilon        eps                                        (Ho et al. 2020, eq. 11; SD 1.x, SD 2.x base, IF)
    v_prediction   v = sqrt(abar) eps - sqrt(1 - abar) x0     (Salimans & Ho 2022, §4; SD 2.x at 768 px)
    sample         x0

SDS, Perp-Neg, VSD and the 2D preview all need eps. Putting x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) into v:
sqrt(abar) v + sqrt(1 - abar) x_t = abar eps + (1 - abar) eps, so

    eps = sqrt(abar) v + sqrt(1 - abar) x_t          (v_prediction)
    eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)      (sample; 1 - abar >= beta_0 > 0 for every t)
"""

from __future__ import annotations

from torch import Tensor

from ..errors import ModelNotFoundError

__all__ = ["PREDICTION_TYPES", "prediction_type", "eps_from_prediction", "prediction_target"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def prediction_type(scheduler) -> str:
    """The scheduler's ``prediction_type`` ('epsilon' when its config has none); any other than PREDICTION_TYPES
    is a one-line ModelNotFoundError (its noise could not be recovered, so its guidance would be wrong)."""
    kind = getattr(scheduler.config, "prediction_type", None) or "epsilon"
    if kind not in PREDICTION_TYPES:
        raise ModelNotFoundError(f"the guidance model's scheduler/scheduler_config.json has prediction_type "
                                 f"'{kind}': dreamfusion reads {', '.join(PREDICTION_TYPES)} models; use a "
                                 f"checkpoint trained with one of those")
    return kind


def _per_sample(abar: Tensor, like: Tensor) -> Tensor:
    """abar [B] -> [B, 1, ..., 1] in float32 on ``like``'s device."""
    return abar.float().to(like.device).view(-1, *[1] * (like.dim() - 1))


def eps_from_prediction(out: Tensor, x_t: Tensor, abar: Tensor, kind: str) -> Tensor:
    """out, x_t [B, C, h, w], abar [B] (abar_t of each sample) -> eps [B, C, h, w] (module docstring).

    ``out`` as it is for epsilon; otherwise computed in float32 and returned in ``out``'s dtype."""
    if kind == "epsilon":
        return out
    a, x = _per_sample(abar, out), x_t.float().to(out.device)
    if kind == "v_prediction":
        eps = a.sqrt() * out.float() + (1 - a).sqrt() * x
    elif kind == "sample":
        eps = (x - a.sqrt() * out.float()) / (1 - a).sqrt()
    else:
        raise ValueError(f"eps_from_prediction: unknown prediction type '{kind}': choose {PREDICTION_TYPES}")
    return eps.to(out.dtype)


def prediction_target(x0: Tensor, eps: Tensor, abar: Tensor, kind: str) -> Tensor:
    """x0, eps [B, C, h, w], abar [B] -> what the UNet should output at x_t = sqrt(abar) x0 + sqrt(1 - abar) eps:
    eps, v or x0 (VSD trains its LoRA towards it)."""
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        a = _per_sample(abar, x0)
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    if kind == "sample":
        return x0
    raise ValueError(f"prediction_target: unknown prediction type '{kind}': choose {PREDICTION_TYPES}")
