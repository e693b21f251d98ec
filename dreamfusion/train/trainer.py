"""The optimization loop: cameras -> render -> guidance -> loss -> Adam step (``Trainer.train_step``), with
logging, previews and checkpoints as plain calls in ``Trainer.fit``."""

from __future__ import annotations

import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from render.latent import LATENT_CHANNELS

from .. import runfolder
from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import CheckpointError, UserError
from ..fields import build_field
from ..renderer import Renderer, build_background
from .cameras import RandomCameras
from .losses import regularizers, weighted_loss
from .optim import adam_step, all_finite, warmup_factor
from .strategy import build_strategy

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Trainer", "Interrupted", "Diverged", "build_scene", "load_scene"]


class Interrupted(UserError):
    """Ctrl-C or SIGTERM: the checkpoint was saved and the run can be resumed."""


class Diverged(UserError):
    """cfg.max_nonfinite_steps steps in a row had a NaN or infinite loss or gradient; the last checkpoint is intact."""


def build_scene(cfg: Config, device: torch.device):
    """(field, background) of a run as built before training: seeded with cfg.seed (torch's global generator), so
    a seed gives the same initial field; the trainer's and load_run's."""
    torch.manual_seed(cfg.seed)
    field = build_field(cfg.field, device, LATENT_CHANNELS if cfg.guidance.latent_render else 3)
    return field, build_background(cfg.render.background, device)


def load_scene(state: dict, cfg: Config, field, background) -> int:
    """A checkpoint's field and background into those of :func:`build_scene` (no optimizer, no guidance); returns
    its step. A checkpoint of another field type or shape is a one-line CheckpointError."""
    if state.get("field_type", cfg.field.type) != cfg.field.type:
        raise CheckpointError(f"checkpoint holds a {state['field_type']} field but the config asks for "
                              f"field.type={cfg.field.type}")
    try:
        field.load_state_dict(state["field"])  # today's layout: load_checkpoint upgrades older ones
        if background is not None:
            background.load_state_dict(state["background"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint does not match the run's config ({str(exc).splitlines()[0][:160]})") from None
    return int(state["step"])


def _training_views(cfg: Config):
    """The prior's dataset cameras when camera.snap_to_prior asks to train from them, else None."""
    if not cfg.camera.snap_to_prior:
        return None
    from ..guidance.models.prior import prior_views

    return prior_views(cfg.camera, cfg.guidance.prior)


class Trainer:
    """Holds the field, background, optimizer, RNG, camera sampler, renderer, strategy and (when training) the
    guidance of one run."""

    def __init__(self, cfg: Config, run_dir: Path, device: torch.device, guidance=None):
        self.cfg, self.run_dir, self.device, self.guidance = cfg, Path(run_dir), device, guidance
        self.field, self.background = build_scene(cfg, device)
        self.generator = torch.Generator("cpu").manual_seed(cfg.seed)  # the run's RNG: the same draws on any device
        groups = self.field.param_groups(cfg.optim)
        if self.background is not None:
            groups += self.background.param_groups(cfg.optim)
        if guidance is not None:
            groups += guidance.param_groups()  # trainable guidance state (e.g. a VSD LoRA)
        self.optimizer = torch.optim.Adam(groups, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
        self.cameras = RandomCameras(cfg.camera, cfg.render, self.generator, device, views=_training_views(cfg))
        self.renderer = Renderer(cfg.render, self.field, device, latent=cfg.guidance.latent_render)
        self.strategy = build_strategy(cfg, self.field)  # densification and the means' lr schedule, or none
        self.step = 0
        self.skipped, self._nonfinite_run, self._saved_step = 0, 0, None  # non-finite steps: in all, in a row

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"step": self.step, "field_type": self.cfg.field.type,
                "field": self.field.state_dict(), "optimizer": self.optimizer.state_dict(),
                "background": self.background.state_dict() if self.background is not None else {},
                "guidance": self.guidance.state_dict() if self.guidance is not None else {},
                "rng": self.generator.get_state(), "torch_rng": torch.get_rng_state(), "skipped_steps": self.skipped,
                "estimator": self.renderer.state_dict(), "strategy": self.strategy.state_dict()}

    def load(self, state: dict, with_optimizer: bool = True) -> None:
        if state.get("field_type", self.cfg.field.type) != self.cfg.field.type:
            raise CheckpointError(f"checkpoint holds a {state['field_type']} field but the config asks for "
                                  f"field.type={self.cfg.field.type}")
        try:  # ``state``: today's layout (checkpoint.load_checkpoint upgrades an older one, migrations.py)
            self.field.load_state_dict(state["field"])
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
        runfolder.trim_after(self.run_dir, self.step)

    def save(self) -> Path:
        path = save_checkpoint(self.run_dir, self.state())
        self._saved_step = self.step
        return path

    # -- one step ---------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimization step; returns the loss, every term and ``skipped_steps`` as floats. A step whose loss
        or gradient is NaN or infinite is skipped (no optimizer step: the parameters stay finite) and counted;
        ``cfg.max_nonfinite_steps`` of them in a row raise Diverged."""
        c = self.cfg
        cams, (height, width) = self.cameras.sample(self.step)
        self.renderer.update(self.step)  # the occupancy grid of nerfacc's sampler, when it has one
        out = self.renderer.render_train(cams, height, width, self.step, background=self.background,
                                         generator=self.generator, need_normals=c.loss.orientation > 0)
        self.strategy.step_pre_backward(out)  # e.g. keep the splats' 2D-mean gradients
        terms = self.guidance(out["rgb"], cams, self.step, c.steps, generator=self.generator)
        terms.update(regularizers(out, out.get("dirs"), self.step, c.loss))
        terms.update(self.field.regularizers())
        loss = weighted_loss(terms, c.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if all_finite(loss, self.optimizer):  # one sync for the loss and every gradient
            self._nonfinite_run = 0
            adam_step(self.optimizer, warmup_factor(self.step, c.optim), self.strategy.learning_rates(self.step))
            self.strategy.step_post_optimizer(self.field, self.optimizer, out, self.step)  # e.g. clone / split
        else:  # skipped: no Adam step, no densification
            self._skip()
        self.step += 1
        return {"loss": loss.item(), **{k: (v.item() if torch.is_tensor(v) else v) for k, v in terms.items()},
                "skipped_steps": self.skipped, **self.strategy.log_terms(self.field)}

    def _skip(self) -> None:
        """Count a non-finite step; ``cfg.max_nonfinite_steps`` in a row raise Diverged."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped, self._nonfinite_run = self.skipped + 1, self._nonfinite_run + 1
        if self._nonfinite_run >= self.cfg.max_nonfinite_steps:
            kept = f"step {self._saved_step}" if self._saved_step is not None else "none was written yet"
            raise Diverged(f"{self._nonfinite_run} steps in a row had a non-finite loss or gradient (the last at "
                           f"step {self.step + 1} of {self.cfg.steps}): lower the learning rates (optim.*) or "
                           f"guidance.guidance_scale, or set guidance.grad_clip; the last checkpoint ({kept}) "
                           f"is intact")

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, progress: bool = True, should_stop=None, on_step=None) -> dict[str, float]:
        """Steps until cfg.steps with metrics rows, checkpoints and previews; returns the last step's terms.
        ``on_step(step, run_dir)`` is called after each step's row, preview and checkpoint; ``should_stop()``,
        asked after it, ends the loop like Ctrl-C (checkpoint saved, Interrupted)."""
        c, row = self.cfg, {}
        if self.guidance is None:
            raise ValueError("Trainer.fit needs the guidance: Trainer(cfg, run_dir, device, guidance)")
        with runfolder.MetricsLog(self.run_dir, self.step) as metrics, _sigterm_interrupts(), \
                tqdm(total=c.steps, initial=self.step, file=sys.stderr, dynamic_ncols=True, desc="optimizing",
                     disable=not progress) as bar:
            try:
                while self.step < c.steps:
                    row = self.train_step()
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss']:.4g}")
                    if self.step % c.log_every == 0 or self.step == c.steps:
                        metrics.write(self.step, row)
                    if self.step % c.checkpoint_every == 0:  # before the preview: a failed render keeps it
                        self.save()
                    if c.preview_every and self.step % c.preview_every == 0:
                        image = self.renderer.render_preview(c.camera, c.preview_resolution)
                        runfolder.write_preview(self.run_dir, self.step, image)
                    if on_step is not None:
                        on_step(self.step, self.run_dir)
                    if should_stop is not None and self.step < c.steps and should_stop():
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                self.save()
                raise Interrupted(f"interrupted at step {self.step} of {c.steps}; checkpoint saved; continue with: "
                                  f"python -m dreamfusion resume={shlex.quote(str(self.run_dir))} "
                                  f"steps={c.steps}") from None
        self.save()
        return row


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextmanager
def _sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt inside the block (the loop saves and stops as for Ctrl-C)."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
