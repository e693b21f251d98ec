"""Training: the loop (trainer.py: ``Trainer.train_step`` and ``Trainer.fit``), where the cameras come from
(cameras.py), the loss (losses.py), the optimizer step (optim.py), the strategy that may resize the field
(strategy.py: none, or densify.py's for Gaussians) and the config sections of all that (config.py: camera.*,
optim.*, loss.*). Rendering is the renderer's (dreamfusion/renderer/), the run folder's files runfolder.py's.

    trainer = Trainer(cfg, run_dir, device, guidance)   # field, background, optimizer, RNG, sampler, renderer
    row = trainer.fit(should_stop=..., on_step=...)     # metrics rows, previews, checkpoints in run_dir

The names below import their module on first use, so reading the config sections (``train.config``, assembled by
``dreamfusion.config``) does not import torch.
"""

from __future__ import annotations

import importlib

__all__ = ["Trainer", "Interrupted", "Diverged", "build_scene", "load_scene", "weighted_loss", "regularizers",
           "RandomCameras", "render_size"]

_HOME = {"Trainer": "trainer", "Interrupted": "trainer", "Diverged": "trainer", "build_scene": "trainer",
         "load_scene": "trainer", "weighted_loss": "losses", "regularizers": "losses", "RandomCameras": "cameras",
         "render_size": "cameras"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'dreamfusion.train' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
