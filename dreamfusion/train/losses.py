"""The loss of one step: the renders' regularisers (opacity, orientation, Dream Fields' transmittance) and the
weighted sum of every ``loss_*`` term the guidance, the regularisers and the field return."""

from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["regularizers", "weighted_loss", "transmittance_target", "transmittance_loss"]


def transmittance_target(step: int, start: float = 0.4, end: float = 0.88, steps: int = 500) -> float:
    """tau(step): linear from ``start`` at step 0 to ``end`` at ``steps``, then constant (Dream Fields §4.3)."""
    if steps <= 0:
        return end
    frac = min(max(step / steps, 0.0), 1.0)
    return start + (end - start) * frac


def transmittance_loss(opacity: torch.Tensor, step: int) -> torch.Tensor:
    """L_T = -min(tau(step), mean transmittance) per view, averaged over views; opacity [B, H, W, 1] (Dream Fields
    eq. 3). Transmittance of a pixel is 1 - opacity (the light that passes the whole ray). Once a view is at
    least tau transparent on average the term is flat, so it only removes fog down to the target.
    """
    if opacity.ndim != 4 or opacity.shape[-1] != 1:
        raise ValueError(f"transmittance_loss: opacity must be [B, H, W, 1], got {tuple(opacity.shape)}")
    mean_transmittance = (1.0 - opacity).flatten(1).mean(1)  # [B]
    return -mean_transmittance.clamp(max=transmittance_target(step)).mean()


def regularizers(out: dict, dirs: torch.Tensor | None, step: int = 0, loss_cfg=None) -> dict[str, torch.Tensor]:
    """Opacity regularisers (always), the orientation loss (when normals were rendered) and Dream Fields'
    transmittance loss (when ``loss_cfg.transmittance`` weighs it: its target tau depends on ``step``).

    Orientation (DreamFusion eq. 9, at pixel level): opacity * max(0, n . d)^2 penalises normals that face
    away from the camera (d is the ray direction, pointing away from the camera).
    """
    opacity = out["opacity"].clamp(1e-5, 1 - 1e-5)
    terms = {
        "loss_sparsity": torch.sqrt(opacity ** 2 + 0.01).mean(),
        "loss_opacity_entropy": (-opacity * torch.log(opacity) - (1 - opacity) * torch.log(1 - opacity)).mean(),
    }
    if out.get("normal") is not None and dirs is not None:
        n = torch.nn.functional.normalize(out["normal"], dim=-1, eps=1e-6)
        facing_away = (n * dirs).sum(-1, keepdim=True).clamp(min=0)
        terms["loss_orientation"] = (out["opacity"] * facing_away ** 2).mean()
    if loss_cfg is not None and loss_cfg.transmittance:
        terms["loss_transmittance"] = transmittance_loss(out["opacity"], step)
    return terms


def weighted_loss(terms: dict, loss_cfg) -> torch.Tensor:
    """sum_k weight_k * term_k over the ``loss_*`` terms, weights from the config's ``loss`` section (terms
    weighted 0 are left out). A ``loss_<name>`` with no ``loss.<name>`` key is a ConfigError, never dropped."""
    weights = vars(loss_cfg)
    total = None
    for key, value in terms.items():
        if not key.startswith("loss_"):
            continue
        name = key[len("loss_"):]
        if name not in weights:
            raise ConfigError(f"the guidance or field returned the term '{key}' but the config has no weight "
                              f"'loss.{name}': add it to LossConfig (dreamfusion/train/config.py)")
        if weights[name] != 0:
            total = weights[name] * value if total is None else total + weights[name] * value
    if total is None:
        raise ConfigError(f"every computed loss term has weight 0 ({', '.join(k for k in terms if k.startswith('loss_'))}): "
                          f"set one of the loss.* weights, e.g. loss.sds=1")
    return total
