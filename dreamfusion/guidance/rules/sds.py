"""Score distillation sampling: the guidance rule and its schedules (DreamFusion, arXiv 2209.14988).

Nothing here knows which diffusion model is used. A *noise predictor* (guidance/base.py's ``NoisePredictor``:
Stable Diffusion, DeepFloyd IF or the embedded prior, in guidance/models/) supplies the noise schedule, the
image -> x0 encoder and the noise prediction; this file holds the rule that turns them into a loss:

    x0  = encode(images)                                  (with gradient)
    t   ~ U{round(lo T), ..., round(hi T)},  eps ~ N(0, I)    (drawn in that order from `generator`)
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps          (DDPM forward process, Ho et al. eq. 4)
    eps_hat = eps_u + s (eps_c - eps_u)                   (classifier-free guidance)
    grad = w(t) (eps_hat - eps)                           (DreamFusion eq. 3, UNet Jacobian skipped)
    loss_sds = 0.5 / B * sum_b || x0_b - sg(x0_b - grad_b) ||^2

so that d loss_sds / d x0_b = grad_b / B exactly: the batch mean of per-view losses whose gradient
is the SDS gradient itself.

guidance.recon_loss: MVDream's x0-reconstruction form (Shi et al. 2023, §3.2 and appendix; threestudio-mvdream
``guidance/mvdream_guidance.py``, ``recon_loss`` with ``recon_std_rescale`` 0.5 in ``configs/mvdream-sd21.yaml``):

    x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)          (the guided prediction's x0)
    x0_c   = (x_t - sqrt(1 - abar_t) eps_c) / sqrt(abar_t)            (the conditional one's, no CFG)
    x0_hat <- r f x0_hat + (1 - r) x0_hat,  f = std(x0_c) / std(x0_hat) over each group of n_views views
    grad = x0 - x0_hat                                                (r = guidance.cfg_rescale; stds unbiased)

The rescale pulls the over-saturated x0 of a large guidance scale (50) back toward the conditional one's spread
(Lin et al. 2023's CFG rescale, applied to x0). Without it, x0 - x0_hat = sqrt((1 - abar) / abar) (eps_hat - eps):
SDS with that w(t).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..config import GuidanceConfig
from ..base import FrozenGuidance, NoisePredictor
from ..models.prediction import classifier_free_guidance


def t_range(step: int, total_steps: int, t_min: float, t_max: float, t_anneal: str = "none",
            t_max_end: float = 0.5, t_min_start: float | None = None,
            anneal_fraction: float = 1.0) -> tuple[float, float]:
    """The (lo, hi) range of diffusion time, as fractions of T, at `step` of `total_steps`.

    With f = step / total: none: (t_min, t_max) throughout. linear: hi = t_max + (t_max_end - t_max) f.
    sqrt: hi = t_max - (t_max - t_max_end) sqrt(f). hi never drops below lo. ``anneal_fraction`` a < 1 reaches
    the end values at step a total (f = step / (a total), held at 1 after); ``t_min_start`` moves lo linearly
    from it to t_min the same way (threestudio-mvdream's min_step_percent [0, 0.98, 0.02, 8000]: 0.98 -> 0.02 by
    step 8000 of 10000, a = 0.8), None keeps lo = t_min.
    """
    if total_steps <= 0:
        raise ValueError(f"t_range: total_steps must be positive, got {total_steps}")
    frac = min(max(step / total_steps, 0.0), 1.0)
    if anneal_fraction != 1.0:
        frac = min(frac / anneal_fraction, 1.0)
    if t_anneal == "none":
        hi = t_max
    elif t_anneal == "linear":
        hi = t_max + (t_max_end - t_max) * frac
    elif t_anneal == "sqrt":
        hi = t_max - (t_max - t_max_end) * math.sqrt(frac)
    else:
        raise ValueError(f"t_range: unknown t_anneal '{t_anneal}': choose none, linear or sqrt")
    lo = t_min if t_min_start is None else t_min_start + (t_min - t_min_start) * frac
    return lo, max(hi, lo)


def sample_timesteps(batch_size: int, lo: float, hi: float, num_train_timesteps: int = 1000,
                     generator: torch.Generator | None = None) -> Tensor:
    """t [B] long, uniform over the integers round(lo T) .. round(hi T) inclusive, clamped to [0, T-1].

    Drawn on the generator's device (CPU when none), so a CPU generator gives the same t on any device.
    """
    t_lo = min(max(round(lo * num_train_timesteps), 0), num_train_timesteps - 1)
    t_hi = min(max(round(hi * num_train_timesteps), t_lo), num_train_timesteps - 1)
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(t_lo, t_hi + 1, (batch_size,), generator=generator, device=device)


def sds_weight(alphas_cumprod_t: Tensor, kind: str = "sds") -> Tensor:
    """w(t) [B] from abar_t [B]: sds 1 - abar (DreamFusion), uniform 1, fantasia3d sqrt(abar) (1 - abar)."""
    if kind == "sds":
        return 1.0 - alphas_cumprod_t
    if kind == "uniform":
        return torch.ones_like(alphas_cumprod_t)
    if kind == "fantasia3d":
        return alphas_cumprod_t.sqrt() * (1.0 - alphas_cumprod_t)
    raise ValueError(f"sds_weight: unknown weighting '{kind}': choose sds, uniform or fantasia3d")


class SDSGuidance(FrozenGuidance):
    """The SDS rule around a noise predictor and one prompt: ``guidance(images, cameras, step, total_steps)``."""

    def __init__(self, predictor: NoisePredictor, cfg: GuidanceConfig, prompt: str, negative_prompt: str = ""):
        self.predictor = predictor
        self.cfg = cfg
        self.cond = predictor.encode_prompt(prompt, negative_prompt, cfg.view_dependent)

    def __call__(self, images: Tensor, cameras: Any, step: int, total_steps: int,
                 generator: torch.Generator | None = None) -> dict[str, Tensor | float]:
        """images [B, H, W, 3] in [0, 1] (requires grad), or latents [B, h, w, 4] for a latent
        predictor (guidance.latent_render), cameras for B views.

        Returns loss_sds (scalar; d loss_sds / d x0_b = w(t_b) (eps_hat_b - eps_b) / B after clipping),
        grad_norm (mean over views of the L2 norm of that per-view gradient, before the 1/B) and
        t (mean sampled time as a fraction of T).
        """
        if images.ndim != 4:
            raise ValueError(f"SDSGuidance: images must be [B, H, W, C], got {tuple(images.shape)}")
        cfg = self.cfg
        batch = images.shape[0]
        x0 = self.predictor.encode(images).float()  # [B, C, h, w]; fp32 for the rule whatever the model runs in
        abar_all = self.predictor.alphas_cumprod
        num_t = abar_all.shape[0]

        lo, hi = t_range(step, total_steps, cfg.t_min, cfg.t_max, cfg.t_anneal, cfg.t_max_end, cfg.t_min_start,
                         cfg.t_anneal_fraction)
        n_views = getattr(self.predictor, "n_views", 1)  # a multi-view model denoises each group at one t
        t = sample_timesteps(batch // n_views, lo, hi, num_t, generator).repeat_interleave(n_views).to(x0.device)
        noise_device = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, device=noise_device).to(x0.device)

        abar = abar_all.to(device=x0.device, dtype=torch.float32)[t].view(batch, 1, 1, 1)
        with torch.no_grad():
            x_t = abar.sqrt() * x0.detach() + (1.0 - abar).sqrt() * eps
            if cfg.recon_loss:
                grad = x0.detach() - self.reconstruction(x_t, t, cameras, abar, n_views)
            else:
                eps_hat = self.guided_noise(x_t, t, cameras).float()
                grad = sds_weight(abar, cfg.weighting) * (eps_hat - self.reference_noise(x_t, t, cameras, eps))
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            if cfg.grad_clip > 0:
                grad = grad.clamp(-cfg.grad_clip, cfg.grad_clip)

        # d/dx0 of 0.5 ||x0 - sg(x0 - grad)||^2 is x0 - (x0 - grad) = grad; the 1/B averages the views.
        target = (x0 - grad).detach()
        loss = 0.5 * ((x0 - target) ** 2).sum() / batch
        return {
            "loss_sds": loss,
            "grad_norm": grad.flatten(1).norm(dim=1).mean().item(),
            "t": t.float().mean().item() / num_t,
        }

    def guided_noise(self, x_t: Tensor, t: Tensor, cameras: Any) -> Tensor:
        """eps_hat [B, C, h, w], the prior's guided noise prediction: classifier-free guidance here; Perp-Neg
        (guidance/rules/perp_neg.py) replaces it."""
        eps_u, eps_c = self.predictor.predict_noise(x_t, t, cameras, self.cond)
        return classifier_free_guidance(eps_u.float(), eps_c.float(), self.cfg.guidance_scale)

    def reconstruction(self, x_t: Tensor, t: Tensor, cameras: Any, abar: Tensor, n_views: int) -> Tensor:
        """x0_hat [B, C, h, w] of guidance.recon_loss, CFG-rescaled by guidance.cfg_rescale per group of n_views
        (module docstring)."""
        eps_u, eps_c = self.predictor.predict_noise(x_t, t, cameras, self.cond)
        eps_hat = classifier_free_guidance(eps_u.float(), eps_c.float(), self.cfg.guidance_scale)
        x0_hat = (x_t - (1.0 - abar).sqrt() * eps_hat) / abar.sqrt()
        r = self.cfg.cfg_rescale
        if r > 0:
            x0_c = (x_t - (1.0 - abar).sqrt() * eps_c.float()) / abar.sqrt()
            groups = x_t.shape[0] // n_views
            std_c = x0_c.reshape(groups, -1).std(dim=1) + 1e-8  # [groups]
            std_hat = x0_hat.reshape(groups, -1).std(dim=1) + 1e-8
            factor = (std_c / std_hat).repeat_interleave(n_views).view(-1, 1, 1, 1)
            x0_hat = r * factor * x0_hat + (1.0 - r) * x0_hat
        return x0_hat

    def reference_noise(self, x_t: Tensor, t: Tensor, cameras: Any, eps: Tensor) -> Tensor:
        """What eps_hat is compared with: the injected noise for SDS; VSD (guidance/rules/vsd.py) uses its LoRA's
        prediction of the render's own distribution instead."""
        return eps
