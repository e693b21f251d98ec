"""The embedded prior: the exact optimal denoiser of a finite, procedurally rendered image set.

For x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps and a distribution with masses m_i over images {x_i},
    E[x0 | x_t] = sum_i w_i x_i,   w = softmax_i(log m_i - |x_t - sqrt(abar_t) x_i|^2 / (2 (1 - abar_t)))
    eps_hat     = (x_t - sqrt(abar_t) E[x0 | x_t]) / sqrt(1 - abar_t)
(Tweedie's formula for a mixture of Diracs). It is a pixel-space noise predictor with the same interface
as the Stable Diffusion wrapper, so the SDS rule, t schedule, weighting and CFG are shared.

Which images a prompt stands for (dreamfusion/world/primitives.py has the prompt forms):
- The first vocabulary ('a red cube', the demo): the prompt's images from the dataset views near the render
  camera (conditional) against every vocabulary prompt's from those views (unconditional). The camera itself
  picks the view, so ``view_dependent`` changes nothing (kept as it was: the demo's results are unchanged).
- Every other prompt (an object with a front, two objects and a relation) is conditioned on text only, as with
  Stable Diffusion: the prompt alone stands for its images from ALL dataset views (any azimuth: an object seen
  from the camera may face any way), and a view-dependent prompt ('..., front view' / 'side view' / 'back view'
  / 'overhead view', the camera's label in guidance/prompts.py) for its images from the dataset views carrying
  that label (all views when none does). The unconditional set is every vocabulary prompt's images and the
  prompt's own, from all views (or the negative prompt's).
The prior's "text embedding" of such a prompt is [1, 1, 1 + V]: the index of the prompt's image set in the
prior's own table, then a distribution over the V dataset views (the unconditional row: the unconditional set,
uniform). Perp-Neg's interpolated prompts (r front + (1 - r) side) spread their distribution over two labels'
views; ``predict_eps`` serves such a distribution as the interpolation of its labels' denoisers,
    eps = sum_L m_L eps(w restricted to label L's views, renormalised),   m_L = w's mass on label L's views,
so that, as with Stable Diffusion's text embeddings, the prediction moves continuously with r. (The exact denoiser
of the mixture would not: at small t the mixture's posterior sits on whichever label's images are nearest x_t,
whatever r, so r = 0.999 already answered as the side view; benchmarks/perp_neg_probe.py, docs/BENCHMARKS.md.)
The uniform distribution (a prompt without a view, the unconditional row) and a distribution on one label's views
are served by the exact denoiser of their images.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from render.cameras import Cameras, look_at, camera_position

from ...errors import ConfigError, UserError
from ...io import atomic_write
from ...world.primitives import COLOURS, SHAPES, Scene, parse_scene, scene_palette
from ...world.renders import render_scene_coverage, render_silhouettes
from ..prompts import TextConditioning, view_label

__all__ = ["EmbeddedPrior", "PriorCondition", "closed_form_eps", "scaled_linear_alphas_cumprod", "BACKGROUNDS",
           "prior_views"]

BACKGROUNDS = {"gray": (0.5, 0.5, 0.5), "white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
MIN_VIEWS = 4  # when no dataset view lies inside the window, use this many nearest ones
CACHE_VERSION = 1
SCENE_CACHE_VERSION = 1


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


def mixture_eps(x_t: Tensor, abar: Tensor, pieces: list[tuple[Tensor, Tensor, Tensor]],
                parts: list[tuple[float, list[Tensor]]] | None = None) -> Tensor:
    """eps_hat [D] of x_t [D] for images with masses given as pieces (images [K_j, D], their squared norms [K_j],
    log mass [K_j]): the softmax over all pieces at once, without concatenating the images. The per-image
    constant |x_t|^2 is dropped from the logits:
    -|x_t - sqrt(abar) x_i|^2 / (2 (1 - abar)) = (2 sqrt(abar) <x_t, x_i> - abar |x_i|^2) / (2 (1 - abar)) + c.
    ``parts`` [(m_p, log mass [K_j] per piece)], when given, replaces the pieces' log masses: sum_p m_p times the
    eps_hat under part p's masses. eps_hat is affine in E[x0 | x_t], so the parts' posterior weights mix and the
    inner products and the weighted sum of the images are computed once."""
    sqrt_ab, var = abar.sqrt(), 1.0 - abar
    inner = [(2 * sqrt_ab * (x @ x_t) - abar * sq) / (2 * var) for x, sq, _ in pieces]
    posterior = []  # per part: its mass, its unnormalised weights per piece, their sum
    for m, log_mass in parts if parts is not None else [(1.0, [lm for _, _, lm in pieces])]:
        logits = [lm + lg for lm, lg in zip(log_mass, inner)]
        top = torch.stack([lg.max() for lg in logits]).max()
        weights = [torch.exp(lg - top) for lg in logits]
        posterior.append((m, weights, sum(w.sum() for w in weights)))
    if len(posterior) == 1 and posterior[0][0] == 1.0:  # one distribution: E[x0 | x_t]
        _, weights, total = posterior[0]
        mean = sum(w @ x for w, (x, _, _) in zip(weights, pieces)) / total
    else:
        mixed = [sum(m / total * weights[j] for m, weights, total in posterior) for j in range(len(pieces))]
        mean = sum(w @ x for w, (x, _, _) in zip(mixed, pieces))
    return (x_t - sqrt_ab * mean) / var.sqrt()


def cache_dir() -> Path:
    root = os.environ.get("DREAMFUSION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dreamfusion")
    return Path(root) / "prior"


def dataset_cameras(n: int, elevation_range, azimuth_range, distance_range, fovy_range, seed: int = 0) -> Cameras:
    """n views spread evenly: golden-angle azimuths, area-uniform elevations, seeded distance and fovy."""
    g = torch.Generator().manual_seed(seed)  # a CPU computation: every tensor on the generator's device
    i = torch.arange(n, dtype=torch.float64, device=g.device)
    lo, hi = (math.sin(math.radians(e)) for e in elevation_range)
    elevation = torch.rad2deg(torch.asin(lo + (hi - lo) * (i + 0.5) / n))
    golden = 180.0 * (3.0 - math.sqrt(5.0))  # degrees
    a0, a1 = azimuth_range
    azimuth = a0 + torch.remainder(i * golden, max(a1 - a0, 1e-6))
    uniform = lambda: torch.rand(n, generator=g, dtype=torch.float64, device=g.device)  # noqa: E731
    distance = distance_range[0] + (distance_range[1] - distance_range[0]) * uniform()
    fovy = fovy_range[0] + (fovy_range[1] - fovy_range[0]) * uniform()
    elevation, azimuth, distance, fovy = (x.float() for x in (elevation, azimuth, distance, fovy))
    eye = camera_position(elevation, azimuth, distance)
    azimuth = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    return Cameras(look_at(eye, None), torch.deg2rad(fovy), elevation, azimuth, distance)


def prior_views(camera_cfg, prior_cfg) -> Cameras:
    """The single-view prior's V = guidance.prior.views dataset cameras over the camera.* ranges: its images are
    rendered from them, and camera.snap_to_prior trains from them (train/trainer.py)."""
    c = camera_cfg
    return dataset_cameras(prior_cfg.views, c.elevation_range, c.azimuth_range, c.distance_range, c.fovy_range)


def load_silhouettes(shape: str, cams: Cameras, resolution: int) -> Tensor:
    """Silhouettes from the cache, rendered and stored on first use."""
    key = hashlib.sha1(repr((CACHE_VERSION, shape, resolution, cams.c2w.numpy().round(5).tobytes(),
                             cams.fovy.numpy().round(6).tobytes())).encode()).hexdigest()[:16]
    path = cache_dir() / f"{shape}-{resolution}px-{cams.c2w.shape[0]}v-{key}.pt"
    return _cached(path, lambda: render_silhouettes(shape, cams, resolution))


def _cached(path: Path, make) -> Tensor:
    """The tensor stored at ``path``, else ``make()``'s, stored there for next time."""
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:
            pass  # a corrupt cache entry is rebuilt below
    value = make()
    try:
        atomic_write(path, lambda fh: torch.save(value, fh))
    except UserError:
        pass  # an unwritable cache only costs the rendering next time
    return value


def _scene_key(scene: Scene, cams: Cameras, resolution: int) -> str:
    return hashlib.sha1(repr((SCENE_CACHE_VERSION, tuple(scene.parts), resolution, cams.c2w.numpy().round(5).tobytes(),
                              cams.fovy.numpy().round(6).tobytes())).encode()).hexdigest()[:16]


def load_scene_coverage(scene: Scene, cams: Cameras, resolution: int) -> Tensor:
    """Scene coverage from the cache, rendered and stored on first use."""
    path = cache_dir() / f"scene-{resolution}px-{cams.c2w.shape[0]}v-{_scene_key(scene, cams, resolution)}.pt"
    return _cached(path, lambda: render_scene_coverage(scene, cams, resolution))


@dataclass
class PriorCondition(TextConditioning):
    """One prompt under the prior. ``uncond`` / ``cond`` are its "text embeddings" (module docstring); for a
    prompt of the first vocabulary (``windowed``) ``images`` [V, D] and ``uncond_images`` (every vocabulary
    prompt's [S, C, V, D], or the negative prompt's [1, 1, V, D]) are read near the camera instead."""

    images: Tensor
    uncond_images: Tensor
    windowed: bool


class EmbeddedPrior:
    """Pixel-space noise predictor for prompts of the vocabulary ('a red cube'). Building it renders (or
    loads from the cache) every shape's silhouettes; ``encode_prompt`` picks a prompt's images."""

    def __init__(self, camera_cfg, prior_cfg, background: str, device):
        if background not in BACKGROUNDS:
            raise ConfigError(f"guidance.model_type=prior needs a solid render.background ({', '.join(BACKGROUNDS)}), "
                              f"got '{background}': the prior's images are drawn on that colour")
        self.device = torch.device(device)
        self.resolution = prior_cfg.resolution
        self.window = math.radians(prior_cfg.view_window)
        self.alphas_cumprod = scaled_linear_alphas_cumprod().to(self.device)
        cams = self._dataset_cameras(camera_cfg, prior_cfg)
        self.view_dirs = F.normalize(cams.c2w[:, :3, 3], dim=-1).to(self.device)  # [V,3] object -> camera
        self.view_scale = (cams.distance * torch.tan(cams.fovy / 2)).to(self.device)  # apparent size ~ 1/scale
        alphas = torch.stack([load_silhouettes(s, cams, self.resolution) for s in SHAPES]).to(self.device)
        bg = torch.tensor(BACKGROUNDS[background], device=self.device)
        palette = torch.tensor(list(COLOURS.values()), device=self.device)  # [C,3]
        # images[s, c, v] = alpha * colour + (1 - alpha) * bg, flattened as [3, R, R] and mapped to [-1, 1]
        a = alphas[:, None, :, None]  # [S,1,V,1,R,R]
        imgs = a * palette[None, :, None, :, None, None] + (1 - a) * bg[None, None, None, :, None, None]
        self.images = (imgs * 2 - 1).flatten(3)  # [S, C, V, 3RR]
        self._cams, self._bg = cams, bg
        self._scene_cache: dict[Scene, Tensor] = {}
        self._sets: list[list[tuple]] = []  # image sets (lists of piece names) named by the embeddings' first entry
        self._pieces: dict[tuple, Tensor | tuple] = {}  # name -> images [N, V, D], or _piece's flattened form
        self._set_ids: dict[tuple, int] = {}
        # per view label, the distribution over dataset views that '<prompt>, <label> view' stands for
        labels = view_label(cams.elevation, cams.azimuth)
        self.label_weights, buckets = {}, []
        for label in ("front", "side", "back", "overhead"):
            mask = torch.tensor([x == label for x in labels], dtype=torch.float32, device=self.device)
            buckets += [mask.bool()] if mask.sum() > 0 else []
            mask = mask if mask.sum() > 0 else torch.ones_like(mask)
            self.label_weights[label] = mask / mask.sum()
        self._buckets = torch.stack(buckets)  # [L, V]: the views of each label that has any (disjoint)

    def _dataset_cameras(self, camera_cfg, prior_cfg) -> Cameras:
        """The V cameras of the image set (the multi-view prior's are in groups: multiview_prior.py)."""
        return prior_views(camera_cfg, prior_cfg)

    def _scene_images(self, scene: Scene) -> Tensor:  # [V, D]
        if scene.legacy:
            part = scene.parts[0]
            return self.images[SHAPES.index(part.shape), list(COLOURS).index(part.colour)]
        if scene not in self._scene_cache:
            coverage = load_scene_coverage(scene, self._cams, self.resolution).to(self.device)  # [V, K, R, R]
            palette = torch.tensor([COLOURS[c] for c in scene_palette(scene)], device=self.device)  # [K, 3]
            imgs = torch.einsum("vkhw,kc->vchw", coverage, palette) + (1 - coverage.sum(1, keepdim=True)) * \
                self._bg[None, :, None, None]
            self._scene_cache[scene] = (imgs * 2 - 1).flatten(1)
        return self._scene_cache[scene]

    def _register(self, key: tuple, pieces: list[tuple[tuple, Tensor]]) -> float:
        """The index of an image set in the prior's table, added on first use. A set is a list of named pieces
        [N_j, V, D] (N_j images per view), each kept once (``_piece`` flattens it on first use)."""
        for name, images in pieces:
            self._pieces.setdefault(name, images)
        if key not in self._set_ids:
            self._set_ids[key] = len(self._sets)
            self._sets.append([name for name, _ in pieces])
        return float(self._set_ids[key])

    def encode_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> PriorCondition:
        """The prompt's conditioning (module docstring): for the first vocabulary its images and the unconditional
        set, read near the camera; for every prompt the text-only embeddings that ``predict_eps`` reads."""
        scene = parse_scene(prompt)
        images = self._scene_images(scene)
        vocabulary = self.images.flatten(0, 1)  # [S C, V, D]
        if negative_prompt.strip():
            negative = self._scene_images(parse_scene(negative_prompt))
            uncond_images, uncond_key = negative[None, None], ("neg", negative_prompt)
            uncond_pieces = [(("prompt", negative_prompt), negative[None])]
        else:
            uncond_images = self.images
            uncond_pieces = [(("vocabulary",), vocabulary)] + ([] if scene.legacy else [(("prompt", prompt), images[None])])
            uncond_key = ("vocabulary",) if scene.legacy else ("vocabulary", prompt)
        views = self.view_dirs.shape[0]
        uniform = torch.full((views,), 1.0 / views, device=self.device)
        row = lambda set_id, w: torch.cat([w.new_tensor([set_id]), w])[None, None]  # [1, 1, 1 + V]
        uncond = row(self._register(uncond_key, uncond_pieces), uniform)
        own = self._register(("prompt", prompt), [(("prompt", prompt), images[None])])
        cond = {label: row(own, w) for label, w in self.label_weights.items()} if view_dependent \
            else {"all": row(own, uniform)}
        return PriorCondition(uncond, cond, images, uncond_images, windowed=scene.legacy)

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

    def _piece(self, name: tuple) -> tuple[Tensor, Tensor, Tensor]:
        """A piece flattened in float64 (images [M, D], squared norms [M], view of each row [M]), made on first use."""
        piece = self._pieces[name]
        if isinstance(piece, Tensor):
            flat = piece.reshape(-1, piece.shape[-1]).double()
            views = torch.arange(piece.shape[1], device=self.device).repeat(piece.shape[0])
            piece = self._pieces[name] = (flat, (flat * flat).sum(-1), views)
        return piece

    def label_parts(self, w: Tensor) -> list[tuple[float, Tensor]]:
        """(weight, view distribution) pairs whose denoisers' weighted sum serves the view distribution w [V]
        (module docstring): one per label w has mass on, w restricted to its views and renormalised; [(1, w)]
        when that is one label, or w is uniform."""
        mass = (self._buckets.to(w) * w).sum(1)  # [L]
        if int((mass > 0).sum()) < 2 or torch.allclose(w, torch.full_like(w, 1.0 / w.numel())):
            return [(1.0, w)]
        return [(float(m), w * bucket / m) for m, bucket in zip(mass, self._buckets) if m > 0]

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, embeddings: Tensor) -> Tensor:
        """x_t [B, 3, R, R], t [B] long, embeddings [K, B, 1, 1 + V] (module docstring) -> eps [K, B, 3, R, R]:
        each image under each of its K conditions, the exact denoiser of the image set with those view masses
        (``mixture_eps`` in float64), interpolated over view labels (``label_parts``)."""
        k, batch = embeddings.shape[:2]
        out = torch.empty((k, *x_t.shape), device=x_t.device, dtype=torch.float32)
        for i in range(k):
            for b in range(batch):
                e = embeddings[i, b].reshape(-1).to(self.device, torch.float64)
                names = self._sets[int(round(float(e[0])))]
                pieces = [self._piece(n) for n in names]
                per_view = sum(p[0].shape[0] for p in pieces) / (e.numel() - 1)  # images per view
                x = x_t[b].reshape(-1).to(self.device, torch.float64)
                parts = [(m, [(w / per_view).log()[views] for _, _, views in pieces])  # -inf: a view without mass
                         for m, w in self.label_parts(e[1:].clamp(min=0))]
                eps = mixture_eps(x, self.alphas_cumprod[t[b]].double(), pieces, parts)
                out[i, b] = eps.reshape(x_t.shape[1:]).float()
        return out

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, cameras: Cameras, cond: PriorCondition) -> tuple[Tensor, Tensor]:
        if not cond.windowed:
            uncond, conds = cond.for_cameras(cameras, x_t.shape[0])  # [B, 1, 1 + V] each
            eps = self.predict_eps(x_t, t, torch.stack([uncond, conds]))
            return eps[0], eps[1]
        B = x_t.shape[0]
        eps_u, eps_c = torch.empty_like(x_t), torch.empty_like(x_t)
        for b in range(B):
            idx = self.select_views(cameras, b)
            abar = self.alphas_cumprod[t[b]]
            flat = x_t[b].reshape(-1)
            eps_c[b] = closed_form_eps(flat, abar, cond.images[idx]).reshape(x_t.shape[1:])
            eps_u[b] = closed_form_eps(flat, abar, cond.uncond_images[:, :, idx].reshape(-1, flat.numel())).reshape(x_t.shape[1:])
        return eps_u, eps_c
