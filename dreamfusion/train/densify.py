"""Adaptive density control of a Gaussian field (3DGS, Kerbl et al. 2023, §5.2) as a strategy object, in the
spirit of gsplat's ``Strategy``: the field holds the Gaussians' parameters; this module decides when and how
their number changes, keeps the statistics it decides on, and resizes the parameters and Adam's state.

Schedules are named functions of the step (``done`` = optimizer steps completed):
    ``densify_active(done, cfg)``: densify_every > 0 and densify_start <= done <= densify_stop;
    ``densify_due(done, cfg)``: active and done % densify_every == 0;
    ``position_lr(step, ...)``: the means' learning rate at a step (``DensifyStrategy.learning_rates``).

The trainer calls, each step: ``step_pre_backward(out)`` after the render (keep the gradient of the splats'
2D means), ``learning_rates(step)`` before the Adam step (the trainer sets those groups' rates to them, so a
checkpoint needs no schedule state), and after a finite Adam step (a skipped step gathers and densifies
nothing) ``step_post_optimizer(field, optimizer, out, step)``: when step + 1 is active, the statistics gain
|d loss / d means2d| in NDC units (pixels * (W/2, H/2), 3DGS's threshold units) over the views that saw each
Gaussian; when step + 1 is due, ``densify_and_prune``: Gaussians whose mean gradient reaches
field.gaussian.densify_grad_threshold are cloned when small (largest scale <= dense_scale) or split in two when
large (children sampled from the parent, scales / 1.6), at most max_count - count of them (the largest
gradients); then those with opacity < prune_opacity or largest scale > prune_scale are pruned, and the
statistics restart at zero. The parameters are replaced by resized ones, in the optimizer too (its
param_groups and Adam moments follow the rows: kept rows keep theirs, new rows start at zero).

``state_dict()`` / ``load_state_dict()`` hold the statistics (the trainer checkpoints them as "strategy"; those
of checkpoints written before this module, the field's buffers, move there on load: migrations.py).
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from render.splat_math import quat_to_rotmat

__all__ = ["DensifyStrategy", "densify_active", "densify_due", "position_lr"]

_STATS = ("grad_accum", "grad_count")
_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def position_lr(step: int, lr_init: float, lr_final: float, decay_steps: int) -> float:
    """Learning rate of the means: log-linear from lr_init at step 0 to lr_final at decay_steps, then constant
    (3DGS's exponential schedule without its delay)."""
    if decay_steps <= 0:
        return lr_final
    t = min(max(step / decay_steps, 0.0), 1.0)
    return lr_init * (lr_final / lr_init) ** t


def densify_active(done: int, cfg) -> bool:
    """Whether densification is on after ``done`` steps (``cfg``: field.gaussian): statistics are gathered
    at the step that completes ``done``."""
    return cfg.densify_every > 0 and cfg.densify_start <= done <= cfg.densify_stop


def densify_due(done: int, cfg) -> bool:
    """Whether clone / split / prune runs after ``done`` steps."""
    return densify_active(done, cfg) and done % cfg.densify_every == 0


class DensifyStrategy:
    """Densification of a Gaussian field (module docstring). ``cfg``: field.gaussian (densify_*, dense_scale,
    prune_*, max_count); ``optim_cfg``: optim.gaussian (the means' learning-rate schedule); ``field``: the
    GaussianField, read for its count and device."""

    def __init__(self, cfg, optim_cfg, field):
        if cfg.max_count <= 0 and cfg.densify_every > 0:
            print(f"warning: field.gaussian.max_count={cfg.max_count} puts no cap on densification (SDS "
                  f"gradients once grew 5,000 Gaussians to 2.8 M in 500 steps): set e.g. "
                  f"field.gaussian.max_count=100000", file=sys.stderr)
        self.cfg, self.optim_cfg = cfg, optim_cfg
        self._reset_stats(field.count, field.means.device)

    # -- schedules --------------------------------------------------------------------------------
    def learning_rates(self, step: int) -> dict[str, float]:
        """{param group name: learning rate} of Adam step ``step`` (0 = the first)."""
        o = self.optim_cfg
        return {"gaussian_means": position_lr(step, o.position_lr, o.position_lr_final, o.position_lr_steps)}

    # -- the step ---------------------------------------------------------------------------------
    def step_pre_backward(self, out: dict) -> None:
        """Keep d loss / d means2d (a non-leaf tensor of the render) for the statistics."""
        means2d = out.get("means2d")
        if means2d is not None and means2d.requires_grad:
            means2d.retain_grad()

    def step_post_optimizer(self, field, optimizer: torch.optim.Optimizer | None, out: dict,
                            step: int) -> dict[str, int] | None:
        """After the Adam step of step ``step``: gather the statistics, densify when due; the counts or None."""
        done = step + 1
        if densify_active(done, self.cfg):
            self._accumulate(field, out)
        if densify_due(done, self.cfg):
            return self.densify_and_prune(field, optimizer)
        return None

    @torch.no_grad()
    def _accumulate(self, field, out: dict) -> None:
        grad = out.get("means2d")
        grad = grad.grad if grad is not None else None
        if grad is None or grad.shape[1] != field.count:
            return
        H, W = out["rgb"].shape[1:3]
        norm = (grad * grad.new_tensor([0.5 * W, 0.5 * H])).norm(dim=-1)  # [B, N]
        seen = out["radii"] > 0
        self.grad_accum += torch.where(seen, norm, torch.zeros_like(norm)).sum(0)
        self.grad_count += seen.sum(0).to(self.grad_count.dtype)

    @torch.no_grad()
    def densify_and_prune(self, field, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
        """Clone / split / prune (module docstring) and reset the statistics; returns the counts."""
        c = self.cfg
        n = field.count
        if self.grad_accum.shape[0] != n:
            raise RuntimeError(f"densification statistics for {self.grad_accum.shape[0]} Gaussians, the field "
                               f"has {n}")
        grads = self.grad_accum / self.grad_count.clamp_min(1.0)
        hot = (grads >= c.densify_grad_threshold) & (self.grad_count > 0)
        if c.max_count > 0:  # keep the largest gradients within the cap (each adds one Gaussian)
            budget = max(c.max_count - n, 0)
            if int(hot.sum()) > budget:
                top = torch.topk(torch.where(hot, grads, torch.full_like(grads, -1.0)), budget).indices
                hot = torch.zeros_like(hot)
                hot[top] = True
        small = field.scales.max(-1).values <= c.dense_scale
        clone, split = hot & small, hot & ~small
        keep = torch.nonzero(~split).squeeze(1)
        clone_idx, split_idx = torch.nonzero(clone).squeeze(1), torch.nonzero(split).squeeze(1)
        # split children: two samples from the parent Gaussian, scales / (0.8 * 2) (3DGS)
        s = field.scales[split_idx].repeat(2, 1)
        rot = quat_to_rotmat(nn.functional.normalize(field.quats[split_idx], dim=-1)).repeat(2, 1, 1)
        offsets = (rot @ (torch.randn_like(s) * s)[..., None])[..., 0]
        extra = {"means": field.means[split_idx].repeat(2, 1) + offsets,
                 "log_scales": (s / 1.6).log()}
        params = list(field.named_parameters(recurse=False))
        new_values = {}
        for name, p in params:
            born = extra.get(name, p[split_idx].repeat(2, *([1] * (p.dim() - 1))))
            new_values[name] = torch.cat([p[keep], p[clone_idx], born])
        opacity = torch.sigmoid(new_values["opacity_logits"])
        big = new_values["log_scales"].exp().max(-1).values
        prune = opacity < c.prune_opacity
        if c.prune_scale > 0:
            prune |= big > c.prune_scale
        final = torch.nonzero(~prune).squeeze(1)
        n_new = len(clone_idx) + 2 * len(split_idx)
        for name, p in params:
            replace_rows(field, name, new_values[name][final], optimizer, keep, n_new, final)
        self._reset_stats(field.count, field.means.device)
        return {"cloned": len(clone_idx), "split": len(split_idx), "pruned": int(prune.sum()), "count": field.count}

    def log_terms(self, field) -> dict[str, float]:
        """Numbers for each metrics.jsonl row: the Gaussian count."""
        return {"gaussians": field.count}

    # -- state ------------------------------------------------------------------------------------
    def _reset_stats(self, count: int, device: torch.device) -> None:
        self.grad_accum = torch.zeros(count, device=device)  # sum of |d loss / d means2d| (NDC)
        self.grad_count = torch.zeros(count, device=device)  # views that saw each Gaussian

    def state_dict(self) -> dict[str, Tensor]:
        return {"grad_accum": self.grad_accum, "grad_count": self.grad_count}

    def load_state_dict(self, state: dict) -> None:
        """The statistics of ``state_dict()``; moved to the current device."""
        missing = [name for name in _STATS if name not in state]
        if missing:
            raise KeyError(f"densification state lacks {', '.join(missing)}")
        accum, count = state["grad_accum"], state["grad_count"]
        if accum.dim() != 1 or accum.shape != count.shape:
            raise ValueError(f"densification statistics of shapes {list(accum.shape)} and {list(count.shape)}")
        device = self.grad_accum.device
        self.grad_accum, self.grad_count = accum.to(device).clone(), count.to(device).clone()


def replace_rows(field: nn.Module, name: str, value: Tensor, optimizer: torch.optim.Optimizer | None,
                 keep: Tensor, n_new: int, final: Tensor) -> None:
    """Replace parameter ``name`` of ``field`` by a new one holding ``value`` (rows ``final`` of
    [kept rows ``keep``, ``n_new`` new rows]), in the optimizer too: its Adam moments follow the rows (kept rows
    keep theirs, new rows start at zero). A new Parameter (not ``p.data = ...``) because autograd caches a
    leaf's shape while an old graph is alive."""
    old = getattr(field, name)
    new = nn.Parameter(value.contiguous(), requires_grad=old.requires_grad)
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["params"] = [new if q is old else q for q in group["params"]]
        state = optimizer.state.pop(old, None)
        if state:
            for key in _MOMENTS:
                if key in state:
                    m = state[key]
                    state[key] = torch.cat([m[keep], m.new_zeros((n_new, *m.shape[1:]))])[final].contiguous()
            optimizer.state[new] = state
    setattr(field, name, new)
