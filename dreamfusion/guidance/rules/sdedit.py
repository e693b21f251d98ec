"""SDEdit refinement as a loss: DreamGaussian's texture stage (Tang et al., arXiv 2309.16653 §3.3, its main2.py).

Each render is noised partway down the diffusion, denoised by DDIM with classifier-free guidance, and the
render is pulled toward that refined copy by a plain MSE (SDEdit, Meng et al. 2022, used as a target):

    x0      = encode(render)                                           (no gradient)
    k       = int(n strength),  t_k = ddim_timesteps(n)[k]             (strength: guidance.sdedit.strength, moving
                                                                        linearly from its start to its end value)
    x_{t_k} = sqrt(abar_{t_k}) x0 + sqrt(1 - abar_{t_k}) eps           (eps ~ N(0, I), from the run's generator)
    x0'     = DDIM from x_{t_k} through ddim_timesteps(n)[k:]          (models/ddim.py's ddim_denoise, scale s)
    loss_sdedit = mean (render - resize(decode(x0')))^2                (over pixels, channels and views)

A larger strength skips more of the schedule and so adds less noise: of n = 50 steps, 0.8 starts at t = 183 of
1000 and 0.95 at t = 41 (DreamGaussian's 0.8 -> 0.95 on diffusers' DDIM 'leading' steps: 181 -> 41). The
refined copy is decoded at the model's own size (the prior's resolution, Stable Diffusion's VAE output) and
resized to the render's (bilinear, as DreamGaussian). Unlike SDS, the gradient is an image difference, so the
rule also works as a one-shot edit of renders that are already close.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import FrozenGuidance, NoisePredictor
from ..config import GuidanceConfig
from ..models.ddim import ddim_denoise, ddim_timesteps

__all__ = ["SDEditGuidance", "sdedit_start"]


def sdedit_start(step: int, total_steps: int, strength: tuple[float, float], steps: int) -> int:
    """The index k into ddim_timesteps(steps) where the refinement starts at ``step`` of ``total_steps``:
    int(steps * s) for s moving linearly from strength[0] to strength[1], at most steps - 1 (one DDIM step)."""
    frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
    s = strength[0] + (strength[1] - strength[0]) * frac
    return min(int(steps * s), steps - 1)


class SDEditGuidance(FrozenGuidance):
    """The SDEdit rule around a noise predictor and one prompt: ``guidance(images, cameras, step, total_steps)``."""

    def __init__(self, predictor: NoisePredictor, cfg: GuidanceConfig, prompt: str, negative_prompt: str = ""):
        self.predictor = predictor
        self.cfg = cfg
        self.cond = predictor.encode_prompt(prompt, negative_prompt, cfg.view_dependent)

    def refine(self, images: Tensor, cameras: Any, step: int, total_steps: int,
               generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        """(refined images [B, H, W, 3] in [0, 1] at the renders' size, start timestep t_k) for renders
        ``images`` [B, H, W, 3]; no gradient."""
        s = self.cfg.sdedit
        abar = self.predictor.alphas_cumprod.float()
        timesteps = ddim_timesteps(s.steps, abar.shape[0])
        k = sdedit_start(step, total_steps, tuple(s.strength), s.steps)
        with torch.no_grad():
            x0 = self.predictor.encode(images.detach()).float()
            noise_device = generator.device if generator is not None else x0.device
            eps = torch.randn(x0.shape, generator=generator, device=noise_device).to(x0.device)
            a = abar[timesteps[k]].to(x0.device)
            x = a.sqrt() * x0 + (1.0 - a).sqrt() * eps
            x = ddim_denoise(self.predictor, self.cond, cameras, x, timesteps[k:], self.cfg.guidance_scale)
            refined = self.predictor.decode(x).float()  # [B, h, w, 3] in [0, 1]
            if refined.shape[1:3] != images.shape[1:3]:
                refined = F.interpolate(refined.permute(0, 3, 1, 2), size=tuple(images.shape[1:3]), mode="bilinear",
                                        align_corners=False).permute(0, 2, 3, 1)
        return refined.to(images), timesteps[k]

    def __call__(self, images: Tensor, cameras: Any, step: int, total_steps: int,
                 generator: torch.Generator | None = None) -> dict[str, Tensor | float]:
        """images [B, H, W, 3] in [0, 1] (requires grad). Returns loss_sdedit (the mean squared difference to the
        refined copies) and t (the start time as a fraction of T)."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"SDEditGuidance: images must be [B, H, W, 3], got {tuple(images.shape)}")
        refined, t = self.refine(images, cameras, step, total_steps, generator)
        return {"loss_sdedit": ((images - refined) ** 2).mean(),
                "t": t / self.predictor.alphas_cumprod.shape[0]}
