"""The embedded prior: the exact optimal denoiser of a finite, procedurally rendered image set.

For x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps and a uniform distribution over images {x_i},
    E[x0 | x_t] = sum_i w_i x_i,   w = softmax_i(-|x_t - sqrt(abar_t) x_i|^2 / (2 (1 - abar_t)))
    eps_hat     = (x_t - sqrt(abar_t) E[x0 | x_t]) / sqrt(1 - abar_t)
(Tweedie's formula for a mixture of Diracs). It is a pixel-space noise predictor with the same interface
as the Stable Diffusion wrapper, so the SDS rule, t schedule, weighting and CFG are shared: conditional =
the prompt's images, unconditional = every vocabulary prompt's images, both restricted to dataset views
near the render camera (the analogue of view-dependent prompts).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from render.cameras import Cameras, look_at, camera_position
from render.rays import generate_rays

from ..errors import ConfigError, UserError
from ..io import atomic_write
from .primitives import COLOURS, SHAPES, parse_prompt, render_alpha

__all__ = ["EmbeddedPrior", "PriorCondition", "closed_form_eps", "scaled_linear_alphas_cumprod", "BACKGROUNDS"]

BACKGROUNDS = {"gray": (0.5, 0.5, 0.5), "white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
SUPERSAMPLE = 3  # rays per pixel side when rendering the silhouettes (anti-aliasing)
MIN_VIEWS = 4  # when no dataset view lies inside the window, use this many nearest ones
CACHE_VERSION = 1


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's DDPM 'scaled_linear' schedule: betas = linspace(sqrt(b0), sqrt(b1))^2."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def closed_form_eps(x_t: Tensor, abar: Tensor, images: Tensor) -> Tensor:
    """eps_hat [D] of x_t [D] at noise level abar (scalar) for the image set images [K, D]."""
    sqrt_ab, var = abar.sqrt(), 1.0 - abar
    logits = -((x_t[None] - sqrt_ab * images) ** 2).sum(-1) / (2.0 * var)
    mean = torch.softmax(logits, 0) @ images  # E[x0 | x_t]
    return (x_t - sqrt_ab * mean) / var.sqrt()


def cache_dir() -> Path:
    root = os.environ.get("DREAMFUSION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dreamfusion")
    return Path(root) / "prior"


def dataset_cameras(n: int, elevation_range, azimuth_range, distance_range, fovy_range, seed: int = 0) -> Cameras:
    """n views spread evenly: golden-angle azimuths, area-uniform elevations, seeded distance and fovy."""
    i = torch.arange(n, dtype=torch.float64)
    lo, hi = (math.sin(math.radians(e)) for e in elevation_range)
    elevation = torch.rad2deg(torch.asin(lo + (hi - lo) * (i + 0.5) / n))
    golden = 180.0 * (3.0 - math.sqrt(5.0))  # degrees
    a0, a1 = azimuth_range
    azimuth = a0 + torch.remainder(i * golden, max(a1 - a0, 1e-6))
    g = torch.Generator().manual_seed(seed)
    distance = distance_range[0] + (distance_range[1] - distance_range[0]) * torch.rand(n, generator=g, dtype=torch.float64)
    fovy = fovy_range[0] + (fovy_range[1] - fovy_range[0]) * torch.rand(n, generator=g, dtype=torch.float64)
    elevation, azimuth, distance, fovy = (x.float() for x in (elevation, azimuth, distance, fovy))
    eye = camera_position(elevation, azimuth, distance)
    azimuth = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    return Cameras(look_at(eye, None), torch.deg2rad(fovy), elevation, azimuth, distance)


def render_silhouettes(shape: str, cams: Cameras, resolution: int, views_per_chunk: int = 64) -> Tensor:
    """Anti-aliased coverage [V, R, R] in [0, 1] of a primitive seen from each camera."""
    side = resolution * SUPERSAMPLE
    out = []
    for v in range(0, cams.c2w.shape[0], views_per_chunk):
        c2w, fovy = cams.c2w[v:v + views_per_chunk], cams.fovy[v:v + views_per_chunk]
        origins, dirs = generate_rays(c2w, fovy, side, side)  # [n, side, side, 3]
        alpha = render_alpha(shape, origins.reshape(-1, 3), dirs.reshape(-1, 3)).reshape(-1, 1, side, side)
        out.append(F.avg_pool2d(alpha, SUPERSAMPLE)[:, 0])
    return torch.cat(out)


def load_silhouettes(shape: str, cams: Cameras, resolution: int) -> Tensor:
    """Silhouettes from the cache, rendered and stored on first use."""
    key = hashlib.sha1(repr((CACHE_VERSION, shape, resolution, cams.c2w.numpy().round(5).tobytes(),
                             cams.fovy.numpy().round(6).tobytes())).encode()).hexdigest()[:16]
    path = cache_dir() / f"{shape}-{resolution}px-{cams.c2w.shape[0]}v-{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:
            pass  # a corrupt cache entry is rebuilt below
    alpha = render_silhouettes(shape, cams, resolution)
    try:
        atomic_write(path, lambda fh: torch.save(alpha, fh))
    except UserError:
        pass  # an unwritable cache only costs the rendering next time
    return alpha


class PriorCondition(NamedTuple):
    """One prompt under the prior: the conditional image set [V, D] and the unconditional one (every
    vocabulary prompt's images [S, C, V, D], or the negative prompt's [1, 1, V, D])."""

    cond: Tensor
    uncond: Tensor


class EmbeddedPrior:
    """Pixel-space noise predictor for prompts of the vocabulary ('a red cube'). Building it renders (or
    loads from the cache) every shape's silhouettes; ``encode_prompt`` picks a prompt's images."""

    def __init__(self, camera_cfg, prior_cfg, background: str, device):
        if background not in BACKGROUNDS:
            raise ConfigError(f"guidance.type=prior needs a solid render.background ({', '.join(BACKGROUNDS)}), "
                              f"got '{background}': the prior's images are drawn on that colour")
        self.device = torch.device(device)
        self.resolution = prior_cfg.resolution
        self.window = math.radians(prior_cfg.view_window)
        self.alphas_cumprod = scaled_linear_alphas_cumprod().to(self.device)
        c = camera_cfg
        cams = dataset_cameras(prior_cfg.views, c.elevation_range, c.azimuth_range, c.distance_range, c.fovy_range)
        self.view_dirs = F.normalize(cams.c2w[:, :3, 3], dim=-1).to(self.device)  # [V,3] object -> camera
        self.view_scale = (cams.distance * torch.tan(cams.fovy / 2)).to(self.device)  # apparent size ~ 1/scale
        alphas = torch.stack([load_silhouettes(s, cams, self.resolution) for s in SHAPES]).to(self.device)
        bg = torch.tensor(BACKGROUNDS[background], device=self.device)
        palette = torch.tensor(list(COLOURS.values()), device=self.device)  # [C,3]
        # images[s, c, v] = alpha * colour + (1 - alpha) * bg, flattened as [3, R, R] and mapped to [-1, 1]
        a = alphas[:, None, :, None]  # [S,1,V,1,R,R]
        imgs = a * palette[None, :, None, :, None, None] + (1 - a) * bg[None, None, None, :, None, None]
        self.images = (imgs * 2 - 1).flatten(3)  # [S, C, V, 3RR]

    def _prompt_images(self, prompt: str) -> Tensor:  # [V, D]
        shape, colour = parse_prompt(prompt)
        return self.images[SHAPES.index(shape), list(COLOURS).index(colour)]

    def encode_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> PriorCondition:
        """The prompt's images; the unconditional set is the negative prompt's, else every vocabulary prompt's.
        (The prior always keeps the dataset views near the render camera: its analogue of view-dependent
        prompts, so ``view_dependent`` changes nothing.)"""
        uncond = self._prompt_images(negative_prompt)[None, None] if negative_prompt.strip() else self.images
        return PriorCondition(self._prompt_images(prompt), uncond)

    def encode(self, images: Tensor) -> Tensor:
        """[B,H,W,3] in [0,1] -> x0 [B,3,R,R] in [-1,1], differentiable (area-resized when H != R)."""
        x = images.permute(0, 3, 1, 2)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="area")
        return x * 2.0 - 1.0

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the space the prior denoises: RGB images at guidance.prior.resolution, in [-1, 1]."""
        return (3, self.resolution, self.resolution)

    clip_denoised = True  # pixels live in [-1, 1]: DDIM clips its x0 estimates there

    def decode(self, x: Tensor) -> Tensor:
        """x [B, 3, R, R] in [-1, 1] -> images [B, R, R, 3] in [0, 1]."""
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    def select_views(self, cameras: Cameras, b: int) -> Tensor:
        """Dataset view indices within the angular window of camera b (and within 10 % of its scale)."""
        d = F.normalize(cameras.c2w[b, :3, 3].to(self.device), dim=0)
        angle = torch.acos((self.view_dirs @ d).clamp(-1, 1))
        scale = cameras.distance[b].to(self.device) * torch.tan(cameras.fovy[b].to(self.device) / 2)
        size_gap = (self.view_scale / scale).log().abs()
        ok = (angle <= self.window) & (size_gap <= 0.1)
        if int(ok.sum()) >= MIN_VIEWS:
            return ok.nonzero()[:, 0]
        return torch.argsort(angle / self.window + size_gap / 0.1)[:MIN_VIEWS]

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, cameras: Cameras, cond: PriorCondition) -> tuple[Tensor, Tensor]:
        B = x_t.shape[0]
        eps_u, eps_c = torch.empty_like(x_t), torch.empty_like(x_t)
        for b in range(B):
            idx = self.select_views(cameras, b)
            abar = self.alphas_cumprod[t[b]]
            flat = x_t[b].reshape(-1)
            eps_c[b] = closed_form_eps(flat, abar, cond.cond[idx]).reshape(x_t.shape[1:])
            eps_u[b] = closed_form_eps(flat, abar, cond.uncond[:, :, idx].reshape(-1, flat.numel())).reshape(x_t.shape[1:])
        return eps_u, eps_c
