"""Broken DDIM samplers, each with ``ddim_sample``'s signature, that the preview's oracles must catch
(tests/test_preview.py, tests/test_deepfloyd.py): a test passes a broken sampler where the real one goes and
asserts that the oracle fails."""

from __future__ import annotations

import torch

from dreamfusion.guidance.models.ddim import ddim_sample, ddim_timesteps


def _leading(steps, num_train_timesteps=1000):
    ratio = num_train_timesteps // steps
    return [i * ratio for i in reversed(range(steps))]


@torch.no_grad()
def _ddim_keeps_model_noise(predictor, cond, cameras, guidance_scale, steps=50, generator=None, timesteps=_leading):
    """c5a276d's loop (timesteps = 'leading': T - T/n ... 0): x0 clipped, but the step taken with the model's noise."""
    abar = predictor.alphas_cumprod.float().cpu()
    batch = cameras.c2w.shape[0]
    x = torch.randn((batch, *predictor.sample_shape), generator=generator)
    ts = timesteps(steps, abar.shape[0])
    x0 = x
    for i, t in enumerate(ts):
        eps_u, eps_c = predictor.predict_noise(x, torch.full((batch,), t, dtype=torch.long), cameras, cond)
        eps = eps_u.float().cpu() + guidance_scale * (eps_c.float().cpu() - eps_u.float().cpu())
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if predictor.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x0


class _NoClip:
    """A predictor seen without its clip_denoised flag."""

    clip_denoised = False

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)


BROKEN = {
    "c5a276d": _ddim_keeps_model_noise,
    "clip keeps the model's noise": lambda p, c, cams, s, n, g: _ddim_keeps_model_noise(p, c, cams, s, n, g,
                                                                                         timesteps=ddim_timesteps),
    "stops after the first step": lambda p, c, cams, s, n, g: ddim_sample(p, c, cams, s, 1, g),
    "guidance sign-flipped": lambda p, c, cams, s, n, g: ddim_sample(p, c, cams, -s, n, g),
    "guidance ignored": lambda p, c, cams, s, n, g: ddim_sample(p, c, cams, 1.0, n, g),
    "no clipping": lambda p, c, cams, s, n, g: ddim_sample(_NoClip(p), c, cams, s, n, g),
}
