"""Perp-Neg (Armandpour et al. 2023, arXiv 2304.04968): view-dependent negative prompts whose guidance is made
perpendicular to the positive prompt's, so pushing away from "front view" on a back view does not also push away
from the object (the Janus, many-faces problem of text-to-3D).

    d_pos = eps(pos) - eps_u,   d_k = eps(neg_k) - eps_u                      (eps_u: the unconditional branch)
    eps_hat = eps_u + s (d_pos - sum_k w_k perp(d_k, d_pos)),   perp(a, b) = a - (<a, b> / |b|^2) b   (paper eq. 9)

The inner products are per view, over all of a view's latent entries. The prompts per view (azimuth in degrees,
0 = front, as in threestudio's Perp-Neg prompting, whose default weight curves these are):
- overhead (elevation > 60): positive = the overhead prompt, no negatives;
- |azimuth| < 90: r = 1 - |azimuth| / 90, positive = r front + (1 - r) side (text embeddings interpolated),
  negatives front with w = f_fs(r) and side with w = f_sf(1 - r);
- otherwise: r = 2 - |azimuth| / 90, positive = r side + (1 - r) back, negatives side with w = f_sb(r) and
  front with w = f_fsb(r);
with f(r) = a exp(-b r) + c for (a, b, c) = guidance.perp_neg.f_* (f_fs(1) = f_sf(1) = f_sb(1) ~ 0: a pure
view is not pushed away from itself).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..prompts import TextConditioning
from .sds import SDSGuidance

__all__ = ["PerpNegGuidance", "perpendicular_component", "perp_neg_noise", "perp_neg_prompts", "weight_curve"]

_OVERHEAD_ELEVATION = 60.0


def perpendicular_component(a: Tensor, b: Tensor) -> Tensor:
    """a - (<a, b> / |b|^2) b per leading index: [B, ...] x [B, ...] -> [B, ...] (b = 0 leaves a unchanged)."""
    dot = (a * b).flatten(1).sum(1)
    norm2 = (b * b).flatten(1).sum(1)
    scale = torch.where(norm2 > 0, dot / norm2.clamp_min(1e-30), torch.zeros_like(dot))
    return a - scale.view(-1, *[1] * (a.dim() - 1)) * b


def perp_neg_noise(eps_u: Tensor, eps_pos: Tensor, eps_neg: Tensor, weights: Tensor, scale: float) -> Tensor:
    """eps_u, eps_pos [B, ...], eps_neg [B, K, ...], weights [B, K] -> eps_hat [B, ...] (module docstring)."""
    d_pos = eps_pos - eps_u
    push = torch.zeros_like(d_pos)
    for k in range(eps_neg.shape[1]):
        w = weights[:, k].view(-1, *[1] * (d_pos.dim() - 1)).to(d_pos)
        push = push + w * perpendicular_component(eps_neg[:, k] - eps_u, d_pos)
    return eps_u + scale * (d_pos - push)


def weight_curve(abc, r: float) -> float:
    """f(r) = a exp(-b r) + c."""
    a, b, c = abc
    return a * math.exp(-b * r) + c


def perp_neg_prompts(cond: TextConditioning, cameras: Any, cfg) -> tuple[Tensor, Tensor, Tensor]:
    """(positive [B, ...], negatives [B, 2, ...], weights [B, 2]) text embeddings per camera (module docstring);
    ``cfg`` is guidance.perp_neg."""
    e = {label: cond.cond[label][0] for label in ("front", "side", "back", "overhead")}
    positives, negatives, weights = [], [], []
    for elevation, azimuth in zip(cameras.elevation.tolist(), cameras.azimuth.tolist()):
        az = abs((azimuth + 180.0) % 360.0 - 180.0)
        if elevation > _OVERHEAD_ELEVATION:
            positives.append(e["overhead"])
            negatives.append([e["overhead"], e["overhead"]])
            weights.append([0.0, 0.0])
        elif az < 90.0:
            r = 1.0 - az / 90.0
            positives.append(r * e["front"] + (1 - r) * e["side"])
            negatives.append([e["front"], e["side"]])
            weights.append([weight_curve(cfg.f_fs, r), weight_curve(cfg.f_sf, 1 - r)])
        else:
            r = 2.0 - az / 90.0
            positives.append(r * e["side"] + (1 - r) * e["back"])
            negatives.append([e["side"], e["front"]])
            weights.append([weight_curve(cfg.f_sb, r), weight_curve(cfg.f_fsb, r)])
    return (torch.stack(positives), torch.stack([torch.stack(n) for n in negatives]),
            torch.tensor(weights, dtype=torch.float32))


class PerpNegGuidance(SDSGuidance):
    """SDS whose guided noise is Perp-Neg's (guidance.type=perp_neg, on any NoisePredictor: its ``predict_eps``
    reads the four conditions per view); the rest of the rule is SDS's. Its section is guidance.perp_neg
    (guidance/config.py PerpNegConfig, whose ``check`` holds its rules)."""

    def guided_noise(self, x_t: Tensor, t: Tensor, cameras: Any) -> Tensor:
        batch = x_t.shape[0]
        uncond, _ = self.cond.for_cameras(cameras, batch)
        positive, negatives, weights = perp_neg_prompts(self.cond, cameras, self.cfg.perp_neg)
        embeddings = torch.stack([uncond, positive, negatives[:, 0], negatives[:, 1]])  # [4, B, L, D]
        eps = self.predictor.predict_eps(x_t, t, embeddings.to(uncond)).float()  # one forward at batch 4B
        return perp_neg_noise(eps[0], eps[1], eps[2:].transpose(0, 1), weights.to(eps.device),
                              self.cfg.guidance_scale)
