"""The CUDA kernels of nerfacc (occupancy-grid sampling) and gsplat (Gaussian rasterization), built or loaded
before training instead of on their first call in the middle of it.

Both compile their kernels on first use (about 70 s and 95 s on an H200, issue 20) and cache the build, so a
later run only loads it. ``prepare_kernels`` does that for the kernels a run will use, with one line each and
a ``kernels.<name>`` phase in run.json; a build that fails leaves the run on the plain-PyTorch twin
(render.sampler=torch, field.gaussian.rasterizer=torch) with a one-line warning instead of a crash.
"""

from __future__ import annotations

import importlib
import sys

import torch

from render.gaussians import _gsplat_available
from render.volume_nerfacc import nerfacc_available

from .config import Config
from .settings import replace_key

__all__ = ["kernels_needed", "prepare_kernels"]

_BACKENDS = {"nerfacc": "nerfacc.cuda._backend", "gsplat": "gsplat.cuda._backend"}  # importing _C builds / loads


def kernels_needed(cfg: Config, device: torch.device) -> list[str]:
    """The CUDA kernel packages a run of ``cfg`` on ``device`` would call (none off CUDA)."""
    if device.type != "cuda":
        return []
    if cfg.field.type == "gaussian":
        return ["gsplat"] if cfg.field.gaussian.rasterizer != "torch" and _gsplat_available() else []
    return ["nerfacc"] if cfg.render.sampler != "torch" and nerfacc_available() else []


def _load(name: str) -> None:
    """Build (first run) or load (later runs) the package's kernels; raises when none came out."""
    if getattr(importlib.import_module(_BACKENDS[name]), "_C", None) is None:
        raise RuntimeError(f"{name} produced no CUDA extension")


_TWINS = {"nerfacc": "render.sampler", "gsplat": "field.gaussian.rasterizer"}  # the key that picks the twin


def prepare_kernels(cfg: Config, device: torch.device, timer) -> tuple[Config, list[str]]:


    """Build or load each needed package's kernels as phase ``kernels.<name>`` of ``timer``; a failure switches
    to the PyTorch twin with a one-line warning. Returns the config to run (a copy with the twin's key set after a
    failure; configs are frozen) and the packages whose kernels are ready."""
    ready = []
    for name in kernels_needed(cfg, device):
        with timer.phase(f"kernels.{name}", f"building the {name} CUDA kernels (first run only; later runs load them)"):
            try:
                _load(name)
                ready.append(name)
            except Exception as exc:  # a compiler or toolkit problem: the run goes on without the fast path
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                cfg = replace_key(cfg, _TWINS[name], "torch")
                setting = f"{_TWINS[name]}=torch"
                print(f"warning: the {name} CUDA kernels did not build ({type(exc).__name__}: {first}); "
                      f"using the PyTorch twin ({setting}), slower but the same results", file=sys.stderr)
    return cfg, ready
