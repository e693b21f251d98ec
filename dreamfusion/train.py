"""The optimization loop: sample cameras, render, ask the guidance, step Adam (``Trainer.train_step``), with
logging, previews and checkpoints as plain calls in ``Trainer.fit``."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from render.cameras import Cameras, orbit_cameras, sample_cameras
from render.latent import LATENT_CHANNELS
from render.shading import random_light_dirs

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config
from .densify import DensifyStrategy
from .errors import CheckpointError, ConfigError, UserError
from .fields import build_field
from .io import atomic_write, atomic_write_text, write_error
from .renderer import Renderer, build_background

__all__ = ["Trainer", "Interrupted", "Diverged", "pick_shading", "regularizers", "render_size", "warmup_factor",
           "weighted_loss", "metrics_step", "transmittance_target", "transmittance_loss"]


class Interrupted(UserError):
    """Ctrl-C or SIGTERM: the checkpoint was saved and the run can be resumed."""


class Diverged(UserError):
    """cfg.max_nonfinite_steps steps in a row had a NaN or infinite loss or gradient; the last checkpoint is intact."""


def pick_shading(step: int, cfg, generator: torch.Generator) -> str:
    """DreamFusion shading schedule: albedo during warm-up, then albedo / textureless / lambertian at random."""
    if step < cfg.albedo_warmup_steps:
        return "albedo"
    u = torch.rand((), generator=generator, device=generator.device).item()
    if u < cfg.albedo_prob:
        return "albedo"
    return "textureless" if u < cfg.albedo_prob + cfg.textureless_prob else "lambertian"


def render_size(step: int, cfg) -> tuple[int, int]:
    """(height, width) of the training render at `step`: render.progressive_sizes[i] (square) once
    render.progressive_milestones[i - 1] is reached, or height x width without a schedule."""
    if not cfg.progressive_sizes:
        return cfg.height, cfg.width
    stage = sum(step >= m for m in cfg.progressive_milestones)
    side = cfg.progressive_sizes[stage]
    return side, side


def warmup_factor(step: int, cfg) -> float:
    """Learning-rate multiplier at `step`: lr_warmup_start -> 1 linearly over optim.lr_warmup_steps, then 1."""
    if cfg.lr_warmup_steps <= 0 or step >= cfg.lr_warmup_steps:
        return 1.0
    return cfg.lr_warmup_start + (1.0 - cfg.lr_warmup_start) * step / cfg.lr_warmup_steps


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
                              f"'loss.{name}': add it to LossConfig (dreamfusion/train_config.py)")
        if weights[name] != 0:
            total = weights[name] * value if total is None else total + weights[name] * value
    if total is None:
        raise ConfigError(f"every computed loss term has weight 0 ({', '.join(k for k in terms if k.startswith('loss_'))}): "
                          f"set one of the loss.* weights, e.g. loss.sds=1")
    return total


class Trainer:
    """Holds the field, background, optimizer, RNG and (when training) the guidance of one run."""

    def __init__(self, cfg: Config, run_dir: Path, device: torch.device, guidance=None):
        self.cfg, self.run_dir, self.device, self.guidance = cfg, Path(run_dir), device, guidance
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator("cpu").manual_seed(cfg.seed)
        self.field = build_field(cfg.field, device, LATENT_CHANNELS if cfg.guidance.latent_render else 3)
        self.background = build_background(cfg.render.background, device)
        groups = self.field.param_groups(cfg.optim)
        if self.background is not None:
            groups += self.background.param_groups(cfg.optim)
        if guidance is not None:
            groups += guidance.param_groups()  # trainable guidance state (e.g. a VSD LoRA)
        self.optimizer = torch.optim.Adam(groups, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
        self.renderer = Renderer(cfg.render, self.field, device)  # render config + sampler state (nerfacc on CUDA)
        self.strategy = (DensifyStrategy(cfg.field.gaussian, cfg.optim.gaussian, self.field)
                         if cfg.field.type == "gaussian" else None)  # densification, the means' lr schedule
        self.step = 0
        self.skipped, self._nonfinite_run, self._saved_step = 0, 0, None  # non-finite steps: in all, in a row
        self._eval_view: tuple[int, object] | None = None

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"step": self.step, "field_type": self.cfg.field.type,
                "field": self.field.state_dict(), "optimizer": self.optimizer.state_dict(),
                "background": self.background.state_dict() if self.background is not None else {},
                "guidance": self.guidance.state_dict() if self.guidance is not None else {},
                "rng": self.generator.get_state(), "torch_rng": torch.get_rng_state(), "skipped_steps": self.skipped,
                "estimator": self.renderer.state_dict(),
                "strategy": self.strategy.state_dict() if self.strategy is not None else {}}

    def load(self, state: dict, with_optimizer: bool = True) -> None:
        if state.get("field_type", self.cfg.field.type) != self.cfg.field.type:
            raise CheckpointError(f"checkpoint holds a {state['field_type']} field but the config asks for "
                                  f"field.type={self.cfg.field.type}")
        try:  # ``state``: today's layout (checkpoint.load_checkpoint upgrades an older one, migrations.py)
            self.field.load_state_dict(state["field"])
            if self.strategy is not None:
                self.strategy.load_state_dict(state["strategy"])
            if self.background is not None:
                self.background.load_state_dict(state["background"])
            if self.guidance is not None:
                self.guidance.load_state_dict(state["guidance"])
            if with_optimizer:
                self.optimizer.load_state_dict(state["optimizer"])
            self.renderer.load_state_dict(state["estimator"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint does not match the run's config ({str(exc).splitlines()[0][:160]})") from None
        self.step, self.skipped = int(state["step"]), int(state["skipped_steps"])
        self._saved_step = self.step
        self.generator.set_state(state["rng"].cpu())  # map_location may have moved the states
        torch.set_rng_state(state["torch_rng"].cpu())

    def resume(self, state: dict | None = None) -> None:
        """Continue from the last checkpoint (``state``, when already loaded); metrics rows and previews written
        after it (a kill between checkpoints) are dropped, so the resumed run writes each step once."""
        self.load(state if state is not None else load_checkpoint(self.run_dir, map_location=self.device))
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.is_file():
            rows = [line for line in metrics.read_text().splitlines(keepends=True) if 0 <= metrics_step(line) <= self.step]
            atomic_write_text(metrics, "".join(rows))
        for preview in (self.run_dir / "previews").glob("step_*.png"):
            if int(preview.stem[len("step_"):]) > self.step:
                preview.unlink()

    def save(self) -> Path:
        path = save_checkpoint(self.run_dir, self.state())
        self._saved_step = self.step
        return path

    # -- one step ---------------------------------------------------------------------------------
    def render_batch(self, cams: Cameras, shading: str, perturb: bool = True) -> dict:
        light_dirs = None
        if shading != "albedo":
            light_dirs = random_light_dirs(cams.c2w[:, :3, 3], self.generator)
        height, width = render_size(self.step, self.cfg.render)
        return self.renderer.render(cams, height, width, background=self.background, shading=shading,
                                    light_dirs=light_dirs, perturb=perturb, generator=self.generator,
                                    need_normals=self.cfg.loss.orientation > 0)

    def train_step(self) -> dict[str, float]:
        """One optimization step; returns the loss, every term and ``skipped_steps`` as floats. A step whose loss
        or gradient is NaN or infinite is skipped (no optimizer step: the parameters stay finite) and counted;
        ``cfg.max_nonfinite_steps`` of them in a row raise Diverged."""
        c = self.cfg
        cams = sample_cameras(c.camera.batch_size, c.camera.elevation_range, c.camera.azimuth_range,
                              c.camera.distance_range, c.camera.fovy_range, generator=self.generator)
        cams = Cameras(*(x.to(self.device) for x in cams))
        self.renderer.update(self.step)  # the occupancy grid of nerfacc's sampler, when it has one
        shading = "albedo" if c.guidance.latent_render else pick_shading(self.step, c.render, self.generator)
        out = self.render_batch(cams, shading)
        if self.strategy is not None:
            self.strategy.step_pre_backward(out)  # keep the splats' 2D-mean gradients
        terms = self.guidance(out["rgb"], cams, self.step, c.steps, generator=self.generator)
        terms.update(regularizers(out, out.get("dirs"), self.step, c.loss))
        terms.update(self.field.regularizers())
        loss = weighted_loss(terms, c.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if _all_finite(loss, self.optimizer):  # one sync for the loss and every gradient
            self._nonfinite_run = 0
            lrs = self.strategy.learning_rates(self.step) if self.strategy is not None else {}
            self._adam_step(warmup_factor(self.step, c.optim), lrs)
            if self.strategy is not None:  # densification statistics; clone / split / prune when due
                self.strategy.step_post_optimizer(self.field, self.optimizer, out, self.step)
        else:  # skipped: no Adam step, no densification
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped, self._nonfinite_run = self.skipped + 1, self._nonfinite_run + 1
            if self._nonfinite_run >= c.max_nonfinite_steps:
                kept = f"step {self._saved_step}" if self._saved_step is not None else "none was written yet"
                raise Diverged(f"{self._nonfinite_run} steps in a row had a non-finite loss or gradient (the last at "
                               f"step {self.step + 1} of {c.steps}): lower the learning rates (optim.*) or "
                               f"guidance.guidance_scale, or set guidance.grad_clip; the last checkpoint ({kept}) "
                               f"is intact")
        self.step += 1
        counts = self.strategy.log_terms(self.field) if self.strategy is not None else {}  # e.g. "gaussians"
        return {"loss": loss.item(), **{k: (v.item() if torch.is_tensor(v) else v) for k, v in terms.items()},
                "skipped_steps": self.skipped, **counts}

    def _adam_step(self, factor: float, lrs: dict[str, float] | None = None) -> None:
        """optimizer.step() after setting the scheduled groups' lrs (``lrs``: {group name: lr}, e.g. the Gaussian
        means' decay), with every group's lr scaled by `factor` for this step only, so the warm-up composes with
        the schedules and checkpoints keep plain lrs."""
        for group in self.optimizer.param_groups:
            if lrs and group.get("name") in lrs:
                group["lr"] = lrs[group["name"]]
        if factor != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] *= factor
        self.optimizer.step()
        if factor != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] /= factor

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, progress: bool = True, should_stop=None) -> dict[str, float]:
        """Steps until cfg.steps with metrics rows, previews and checkpoints; returns the last step's terms.
        ``should_stop()``, asked after each step, ends the loop like Ctrl-C (checkpoint saved, Interrupted)."""
        c = self.cfg
        if self.guidance is None:
            raise ValueError("Trainer.fit needs the guidance: Trainer(cfg, run_dir, device, guidance)")
        metrics_path = self.run_dir / "metrics.jsonl"
        try:
            metrics = open(metrics_path, "a")
        except OSError as exc:
            raise write_error(metrics_path, exc) from None
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
        bar = tqdm(total=c.steps, initial=self.step, file=sys.stderr, dynamic_ncols=True, desc="optimizing",
                   disable=not progress)
        t0, step0, row = time.perf_counter(), self.step, {}
        pause_at = _test_pause_step(c.prompt)
        try:
            while self.step < c.steps:
                row = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4g}")
                if self.step % c.log_every == 0 or self.step == c.steps:
                    elapsed = time.perf_counter() - t0
                    try:
                        metrics.write(json.dumps({"step": self.step, "loss": row["loss"],
                                                  "sec_per_step": elapsed / (self.step - step0), **row}) + "\n")
                        metrics.flush()
                    except OSError as exc:  # a full disk: one line naming the file
                        raise write_error(metrics_path, exc) from None
                if c.preview_every and self.step % c.preview_every == 0:
                    self.write_preview()
                if self.step % c.checkpoint_every == 0:
                    self.save()
                if self.step == pause_at:
                    _pause_until_stopped(self.run_dir, self.step, should_stop)
                if should_stop is not None and self.step < c.steps and should_stop():
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.save()
            raise Interrupted(f"interrupted at step {self.step} of {c.steps}; checkpoint saved; continue with: "
                              f"python -m dreamfusion resume={shlex.quote(str(self.run_dir))} steps={c.steps}") from None
        finally:
            bar.close()
            try:
                metrics.close()
            except OSError:  # a full disk again: the error that stopped the loop is the one to report
                pass
            signal.signal(signal.SIGTERM, previous_handler)
        self.save()
        return row

    def eval_view(self):
        """``Renderer.eval_view`` of the field at this step (previews, then the video), made once per step."""
        if self._eval_view is None or self._eval_view[0] != self.step:
            self._eval_view = (self.step, self.renderer.eval_view())
        return self._eval_view[1]

    def cached_eval_view(self):
        """The eval_view already made at this step (the last preview), else None."""
        return self._eval_view[1] if self._eval_view is not None and self._eval_view[0] == self.step else None

    @torch.no_grad()
    def write_preview(self) -> Path:
        """Four views (front, right, back, left) at the evaluation camera, side by side, as a PNG; each view
        preview_resolution pixels square, empty space skipped; from the field sampled on a grid with render.eval_grid."""
        c = self.cfg
        cams = orbit_cameras(4, c.camera.eval_elevation, c.camera.eval_distance, c.camera.eval_fovy,
                             device=self.device)
        cams = Cameras(*(torch.roll(x, -2, 0) for x in cams))  # orbit starts at -180: roll to front first
        side = c.preview_resolution
        out = self.renderer.render_eval(self.eval_view(), cams, side, views_per_chunk=1)
        row = torch.cat(list(out["rgb"].clamp(0, 1)), dim=1)  # [H, 4W, 3]
        path = self.run_dir / "previews" / f"step_{self.step:06d}.png"
        buffer = io.BytesIO()
        Image.fromarray((row.cpu().numpy() * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        return atomic_write(path, buffer.getvalue())


def _all_finite(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
    """Whether the loss and every gradient the optimizer would apply are finite (a gradient's norm is NaN or
    infinite when one of its entries is); one sync."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norms = torch.stack(torch._foreach_norm(grads)).to(loss.device) if grads else loss.new_zeros(0)
    return bool(torch.isfinite(torch.cat([loss.detach().reshape(1).float(), norms.float()])).all())


def metrics_step(line: str) -> int:
    """The step of a metrics.jsonl row; -1 for a torn line (a kill in the middle of a write)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return -1


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


TEST_PAUSE_ENV = "DREAMFUSION_TEST_PAUSE"
"""Tests only: STEP or STEP:PROMPT. After that step of a run (of that prompt) is logged, previewed and
checkpointed, the loop writes run_dir/paused and waits until it is stopped (should_stop(), SIGTERM or kill -9):
a test that stops a process at a given step sees the file, then signals; no timing window to miss."""


def _test_pause_step(prompt: str) -> int | None:
    step, _, only = os.environ.get(TEST_PAUSE_ENV, "").partition(":")
    return int(step) if step and only in ("", prompt) else None


def _pause_until_stopped(run_dir: Path, step: int, should_stop) -> None:
    (run_dir / "paused").write_text(f"{step}\n")
    while not (should_stop is not None and should_stop()):
        time.sleep(0.05)
