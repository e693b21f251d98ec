"""The multi-view embedded prior: the exact optimal denoiser of a finite image set, over groups of n views.

MVDream (Shi et al. 2023, arXiv 2308.16512) denoises four views of one object jointly, conditioned on their
cameras. Its closed-form twin here (camera.n_views = n > 1 with guidance.model_type=prior): the image set is made
of *instances* (a scene of the prior's vocabulary, in its own frame: front toward +z) each seen by *groups* of n
dataset cameras arranged as the training groups are (render.cameras.group_cameras: one elevation, distance and
field of view, azimuths 360 / n apart). A render group G of n cameras is matched to the dataset groups whose n
cameras lie near its n cameras, view for view (``select_groups``: every dataset group under each of its n cyclic
shifts, kept when each of the n angles is within guidance.prior.view_window and each apparent size within 10 %;
else the MIN_VIEWS best). The candidates of G are, for every instance i and every matched dataset group j, the
concatenation X_ij = [x_i(j_1), ..., x_i(j_n)] of the instance's n images; with x_t = [x_t^1, ..., x_t^n] the
noisy group (one t per group, drawn so by the SDS rule because ``n_views`` is set) and uniform masses,

    w_ij      = softmax_ij( -|x_t - sqrt(abar_t) X_ij|^2 / (2 (1 - abar_t)) )
              = softmax_ij( sum_k -|x_t^k - sqrt(abar_t) x_i(j_k)|^2 / (2 (1 - abar_t)) )
    E[x0 | x_t] = sum_ij w_ij X_ij,   eps_hat = (x_t - sqrt(abar_t) E[x0 | x_t]) / sqrt(1 - abar_t)

(Tweedie's formula for a mixture of Diracs, prior.py, over the concatenated groups): an instance's weight comes
from all n views at once, so the group's estimate is one instance seen consistently (its front on one side of
the group only), where n independent single-view denoisers may each pick another. Every prompt form is
conditioned on the cameras (``view_dependent`` is not read: plain prompts; the config refuses view suffixes).
The conditional instances are the prompt's scene; the unconditional ones every vocabulary object and the
prompt's scene (or the negative prompt's scene alone), as in prior.py's text-only sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from render.cameras import Cameras, group_cameras

from ...errors import ConfigError
from ...world.primitives import parse_scene
from .prior import MIN_VIEWS, EmbeddedPrior, dataset_cameras

__all__ = ["MultiViewPrior", "MultiViewCondition", "joint_eps", "group_candidates"]


def joint_eps(x_t: Tensor, abar: Tensor, pieces: list[tuple[Tensor, Tensor]], groups: Tensor) -> Tensor:
    """eps_hat [n, D] of the noisy group x_t [n, D] at noise level abar (scalar) (module docstring): the candidates
    are, for each piece (instances [N, V, D], their squared norms [N, V] in float64) and each row of ``groups``
    [J, n] (dataset view indices, one per view of the group), the instance's n images at those views; uniform
    masses. The images' inner products with x_t are taken in the images' dtype, the logits in float64:
    -|x_t - sqrt(abar) X|^2 / (2 (1 - abar)) = (2 sqrt(abar) <x_t, X> - abar |X|^2) / (2 (1 - abar)) + c."""
    j, n = groups.shape
    flat = groups.reshape(-1)
    ab = abar.double()
    sqrt_ab, var = ab.sqrt(), 1.0 - ab
    x_t = x_t.reshape(-1)
    logits, images = [], []
    for inst, sq in pieces:
        x = inst.index_select(1, flat).reshape(inst.shape[0] * j, -1)  # [N J, n D]: candidate groups, concatenated
        dot = (x @ x_t.to(x.dtype)).double()
        logits.append((2 * sqrt_ab * dot - ab * sq[:, groups].sum(-1).flatten()) / (2 * var))
        images.append(x)
    w = torch.softmax(torch.cat(logits), 0)
    mean, at = 0.0, 0
    for x in images:  # E[x0 | x_t], piece by piece
        mean = mean + w[at:at + x.shape[0]].to(x.dtype) @ x
        at += x.shape[0]
    return ((x_t - sqrt_ab.to(x_t.dtype) * mean) / var.sqrt().to(x_t.dtype)).reshape(n, -1)


def group_candidates(views: int, n: int) -> Tensor:
    """[V, n] long: row j = g n + s is dataset group g under cyclic shift s, its k-th view g n + (s + k) % n."""
    j = torch.arange(views)
    return (j // n * n)[:, None] + ((j % n)[:, None] + torch.arange(n)[None]) % n


@dataclass
class MultiViewCondition:
    """One prompt under the multi-view prior: the conditional and unconditional pieces (instances [N, V, D],
    squared norms [N, V]) that ``joint_eps`` reads."""

    cond: list[tuple[Tensor, Tensor]]
    uncond: list[tuple[Tensor, Tensor]]


class MultiViewPrior(EmbeddedPrior):
    """The embedded prior over groups of ``n_views`` cameras (module docstring); the image set's V dataset views
    are V / n_views groups (guidance.prior.views a multiple of camera.n_views)."""

    def __init__(self, camera_cfg, prior_cfg, background: str, device, n_views: int):
        if n_views < 2 or prior_cfg.views % n_views:
            raise ConfigError(f"the multi-view prior needs camera.n_views >= 2 dividing guidance.prior.views, got "
                              f"n_views={n_views}, views={prior_cfg.views}")
        self.n_views = n_views  # the SDS rule draws one t per group of n_views consecutive views
        super().__init__(camera_cfg, prior_cfg, background, device)
        self.candidates = group_candidates(prior_cfg.views, n_views).to(self.device)  # [V, n]
        self._norms: dict[tuple, Tensor] = {}

    def _dataset_cameras(self, camera_cfg, prior_cfg) -> Cameras:
        """V / n base cameras spread as prior.py's (azimuths within one 360 / n sector), each as a group of n."""
        c, n = camera_cfg, self.n_views
        a0 = c.azimuth_range[0]
        base = dataset_cameras(prior_cfg.views // n, c.elevation_range, (a0, a0 + 360.0 / n), c.distance_range,
                               c.fovy_range)
        return group_cameras(base, n)

    def _with_norms(self, name: tuple, images: Tensor) -> tuple[Tensor, Tensor]:
        """(instances [N, V, D], their squared norms [N, V] in float64), the norms computed once per name."""
        if name not in self._norms:
            self._norms[name] = torch.stack([(im.double() ** 2).sum(-1) for im in images])  # [N, V]
        return images, self._norms[name]

    def encode_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool = False) -> MultiViewCondition:
        """The prompt's instances and the unconditional ones (module docstring); ``view_dependent`` is not read."""
        scene = parse_scene(prompt)
        own = self._scene_images(scene)[None]  # [1, V, D]
        vocabulary = self.images.flatten(0, 1)  # [S C, V, D]
        mine = self._with_norms(("prompt", prompt), own)
        if negative_prompt.strip():
            negative = self._scene_images(parse_scene(negative_prompt))[None]
            uncond = [self._with_norms(("prompt", negative_prompt), negative)]
        else:
            uncond = [self._with_norms(("vocabulary",), vocabulary)] + ([] if scene.legacy else [mine])
        return MultiViewCondition([mine], uncond)

    def select_groups(self, cameras: Cameras) -> Tensor:
        """[J, n] dataset view indices of the dataset groups matching the n cameras view for view (module
        docstring): each angle within the view window and each apparent size within 10 %, else the MIN_VIEWS
        groups with the least mean of angle / window + size gap / 0.1."""
        d = torch.nn.functional.normalize(cameras.c2w[:, :3, 3].to(self.device), dim=-1)  # [n, 3]
        scale = cameras.distance.to(self.device) * torch.tan(cameras.fovy.to(self.device) / 2)  # [n]
        cand = self.candidates
        cos = (self.view_dirs[cand] * d[None]).sum(-1)  # [V, n]
        angle = torch.acos(cos.clamp(-1, 1))
        gap = (self.view_scale[cand] / scale[None]).log().abs()
        ok = (angle <= self.window).all(1) & (gap <= 0.1).all(1)
        if int(ok.sum()) >= MIN_VIEWS:
            return cand[ok]
        return cand[torch.argsort((angle / self.window + gap / 0.1).mean(1))[:MIN_VIEWS]]

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, cameras: Cameras, cond: MultiViewCondition) -> tuple[Tensor, Tensor]:
        """x_t [B, 3, R, R] (B a multiple of n_views: groups of consecutive views), t [B] (one t per group),
        cameras for the B views -> (eps_uncond, eps_cond) [B, 3, R, R]: each group's joint denoiser."""
        n, batch = self.n_views, x_t.shape[0]
        if batch % n:
            raise ValueError(f"MultiViewPrior: a batch of {batch} views is not whole groups of {n} (camera.n_views)")
        eps_u, eps_c = torch.empty_like(x_t), torch.empty_like(x_t)
        for g in range(0, batch, n):
            if bool((t[g:g + n] != t[g]).any()):
                raise ValueError(f"MultiViewPrior: the views of a group share one t, got {t[g:g + n].tolist()}")
            groups = self.select_groups(cameras.index(slice(g, g + n)))
            abar = self.alphas_cumprod[t[g]]
            flat = x_t[g:g + n].reshape(n, -1).to(self.device)
            for out, pieces in ((eps_u, cond.uncond), (eps_c, cond.cond)):
                out[g:g + n] = joint_eps(flat, abar, pieces, groups).reshape(n, *x_t.shape[1:]).to(x_t)
        return eps_u, eps_c

    def predict_eps(self, x_t: Tensor, t: Tensor, embeddings: Tensor) -> Tensor:
        raise ConfigError("the multi-view prior grades groups of views with their cameras (predict_noise); "
                          "guidance.type=sds is the rule that uses it")
