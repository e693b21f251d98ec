"""The DDIM sampler of the 2D preview (``python -m dreamfusion preview``, dreamfusion/preview.py): one image per
camera from any diffusion ``NoisePredictor`` (guidance/base.py) with ``sample_shape`` and ``clip_denoised``.

DDIM (Song et al. 2021, eq. 12 with eta = 0) on n = --steps timesteps spread evenly from T - 1 down to 0
(diffusers' 'linspace' spacing; one step: T - 1). Starting at T - 1 matches the start x_T ~ N(0, I) to the noise
level the model was trained on for it (Lin et al. 2023, sec. 3.3), and ending at 0 leaves the least noise for the
last x0 estimate (ending at T/n - 1, as 'trailing' does, leaves blends of near-identical images at the embedded prior):
    eps_hat = eps_u + s (eps_c - eps_u)                               (classifier-free guidance at scale s)
    x0_hat  = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
    where the model's pixels are bounded (clip_denoised): x0_hat <- clip(x0_hat, -1, 1) and the noise is made
    consistent with it, eps_hat <- (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t) (GLIDE's rule; diffusers' DDIM
    step with use_clipped_model_output=True): a step with the clipped x0 but the model's noise leaves x_t off the
    path of any x0, and the embedded prior then draws black squares
    x_prev  = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat   (abar_prev = 1 after the last step: x0_hat)
Every tensor lives on the model's device (``alphas_cumprod.device``); the start noise is drawn from ``generator``
on the generator's device and moved there, so a seed gives the same start on every device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from render.cameras import Cameras

from .prediction import classifier_free_guidance  # the sampler guides as the SDS rule does

__all__ = ["ddim_timesteps", "ddim_sample", "ddim_denoise"]


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """n timesteps, descending, evenly from T - 1 to 0: round((T - 1) (n - 1 - i) / (n - 1)); [T - 1] for n = 1."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"ddim_timesteps: steps must be in [1, {num_train_timesteps}], got {steps}")
    last = num_train_timesteps - 1
    return [round(last * (steps - 1 - i) / (steps - 1)) for i in range(steps)] if steps > 1 else [last]


@torch.no_grad()
def ddim_sample(predictor, cond, cameras: Cameras, guidance_scale: float, steps: int = 50,
                generator: torch.Generator | None = None) -> Tensor:
    """x0 [B, C, h, w] on the predictor's device: deterministic DDIM from N(0, I), one sample per camera."""
    abar = predictor.alphas_cumprod.float()  # [T], on the model's device
    device = abar.device
    batch = cameras.c2w.shape[0]
    noise_device = generator.device if generator is not None else device
    x = torch.randn((batch, *predictor.sample_shape), generator=generator, device=noise_device).to(device)
    return ddim_denoise(predictor, cond, cameras, x, ddim_timesteps(steps, abar.shape[0]), guidance_scale)


@torch.no_grad()
def ddim_denoise(predictor, cond, cameras: Cameras, x: Tensor, timesteps: list[int], guidance_scale: float) -> Tensor:
    """x0 [B, C, h, w]: the DDIM steps above from x = x_{timesteps[0]} [B, C, h, w] (on the predictor's device)
    through each of ``timesteps`` (descending) to a clean image. ddim_sample starts from pure noise at T - 1; the
    SDEdit rule (guidance/rules/sdedit.py) from a noised render partway down."""
    abar = predictor.alphas_cumprod.float()
    device = abar.device
    batch = x.shape[0]
    one = abar.new_ones(())
    for i, t in enumerate(timesteps):
        a_t, a_prev = abar[t], (abar[timesteps[i + 1]] if i + 1 < len(timesteps) else one)
        eps_u, eps_c = predictor.predict_noise(x, torch.full((batch,), t, dtype=torch.long, device=device),
                                               cameras, cond)
        eps = classifier_free_guidance(eps_u.float(), eps_c.float(), guidance_scale)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if predictor.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x
