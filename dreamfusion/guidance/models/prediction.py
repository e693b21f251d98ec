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

Two such predictions, unconditional and conditional, make the guided noise of classifier-free guidance
(``classifier_free_guidance``), which the SDS rules and the DDIM sampler both use.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...errors import ModelNotFoundError

__all__ = ["PREDICTION_TYPES", "prediction_type", "eps_from_prediction", "prediction_target", "TextUNetPredictor",
           "classifier_free_guidance"]

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


class TextUNetPredictor:
    """The noise prediction of a text-conditioned diffusers UNet, shared by Stable Diffusion and DeepFloyd IF.

    A subclass sets ``unet``, ``device``, ``dtype``, ``alphas_cumprod`` [T], ``prediction_type`` and
    ``eps_channels`` (the channels of eps: the UNet's further output channels, IF's learned variance, are dropped).
    """

    unet: Any
    device: torch.device
    dtype: torch.dtype
    alphas_cumprod: Tensor
    prediction_type: str
    eps_channels: int

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, embeddings: Tensor, **unet_kwargs) -> Tensor:
        """x_t [B, C, h, w], t [B] long, embeddings [K, B, L, D] -> eps [K, B, C, h, w]: each of the B samples under
        each of its K text conditions, in one UNet forward at batch K B; a v- or x0-predicting UNet's output is
        converted to eps (module docstring). ``unet_kwargs`` go to the UNet (VSD's camera ``class_labels``)."""
        k, batch = embeddings.shape[:2]
        x_in = x_t.to(device=self.device, dtype=self.dtype).repeat(k, 1, 1, 1)
        t_in = t.to(self.device).repeat(k)
        hidden = embeddings.reshape(k * batch, *embeddings.shape[2:]).to(device=self.device, dtype=self.dtype)
        out = self.unet(x_in, t_in, encoder_hidden_states=hidden, **unet_kwargs).sample  # [K B, C (+ variance), h, w]
        if out.shape[1] != self.eps_channels:
            out = out[:, :self.eps_channels]
        eps = eps_from_prediction(out, x_in, self.alphas_cumprod[t_in], self.prediction_type)
        return eps.reshape(k, batch, *eps.shape[1:])

    def predict_noise(self, x_t: Tensor, t: Tensor, cameras: Any, cond: Any) -> tuple[Tensor, Tensor]:
        """x_t [B, C, h, w], t [B] long, the prompt's TextConditioning -> (eps_uncond, eps_cond) [B, C, h, w] from one
        UNet forward at batch 2B (conditional embedding per camera's view label)."""
        uncond, conds = cond.for_cameras(cameras, x_t.shape[0])  # [B, L, D] each
        eps = self.predict_eps(x_t, t, torch.stack([uncond, conds]))
        return eps[0], eps[1]


def classifier_free_guidance(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """eps_u + s (eps_c - eps_u) (Ho & Salimans 2022). threestudio's eps_c + s (eps_c - eps_u) is our s + 1."""
    return eps_uncond + scale * (eps_cond - eps_uncond)
