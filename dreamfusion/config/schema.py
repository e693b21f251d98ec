"""The config schema: the components' sections assembled into ``Config`` and the run's own keys (the keys of earlier
versions: dreamfusion/migrations.py).

Each section is declared next to its component (``dreamfusion/settings.py``: ``@section``, ``ranged``, ``choice``
and an optional ``check(root)``): ``field.*`` in fields/config.py, ``render.*`` in renderer/config.py,
``guidance.*`` in guidance/config.py, ``export.*`` in export/config.py, ``camera.*``, ``optim.*`` and ``loss.*``
in train/config.py. This module only assembles them; ``loader.py`` merges YAML files and key=value overrides into
them and checks them. The string literal under each key is its documentation and the text ``--help`` prints.
"""

from __future__ import annotations

from dataclasses import field as dc_field
from typing import Optional

from ..export.config import ExportConfig
from ..fields.config import (LATENT_NEEDS_VOLUME, DMTetConfig, FieldConfig, GaussianConfig, HashGridConfig,
                             TriplaneConfig)
from ..guidance.config import (ClipConfig, DeepFloydConfig, GuidanceConfig, PerpNegConfig, PriorConfig,
                               StableDiffusionConfig, VSDConfig)
from ..renderer.config import RenderConfig
from ..settings import choice, choices_of, ranged, section
from ..train.config import CameraConfig, GaussianOptimConfig, LossConfig, OptimConfig

__all__ = ["Config", "FieldConfig", "HashGridConfig", "TriplaneConfig", "GaussianConfig", "DMTetConfig", "CameraConfig",
           "RenderConfig", "GuidanceConfig", "PriorConfig", "ClipConfig", "PerpNegConfig", "VSDConfig", "OptimConfig", "GaussianOptimConfig",
           "LossConfig", "ExportConfig", "CHOICES", "LATENT_NEEDS_VOLUME",
           "DeepFloydConfig", "StableDiffusionConfig"]



@section
class Config:
    prompt: str = ""
    """The text prompt."""
    negative_prompt: str = ""
    """Text to steer away from; replaces the empty prompt in classifier-free guidance."""
    seed: int = ranged(0, "[-9223372036854775808, 18446744073709551615]")
    """Random seed of cameras, noise and initialisation (any value torch.manual_seed takes: -2^63 .. 2^64 - 1)."""
    steps: int = ranged(10000, "[1, inf)")
    """Total optimization steps (with resume: the step to continue up to)."""
    output_dir: str = "outputs"
    """Folder that receives the run folder."""
    device: str = choice("auto", ("auto", "cpu", "cuda"))
    """auto, cpu or cuda."""
    resume: Optional[str] = None
    """A run folder to continue from its last checkpoint."""
    refine: Optional[str] = None
    """A refine config run on this run's folder once it is done (e.g. demo-refine): coarse then fine in one command."""
    checkpoint_every: int = ranged(500, "[1, inf)")
    """Write the checkpoint every N steps (and at the end or on interrupt)."""
    preview_every: int = ranged(500, "[0, inf)")
    """Write a preview image every N steps; 0 disables."""
    preview_resolution: int = ranged(256, "[1, inf)")
    """Side in pixels of each of the four views of a preview image."""
    log_every: int = ranged(10, "[1, inf)")
    """Append a line to metrics.jsonl every N steps."""
    max_nonfinite_steps: int = ranged(20, "[1, inf)")
    """Skipped steps in a row (non-finite loss or gradient; skipped_steps in metrics.jsonl) that fail the run."""
    field: FieldConfig = dc_field(default_factory=FieldConfig)
    camera: CameraConfig = dc_field(default_factory=CameraConfig)
    render: RenderConfig = dc_field(default_factory=RenderConfig)
    guidance: GuidanceConfig = dc_field(default_factory=GuidanceConfig)
    optim: OptimConfig = dc_field(default_factory=OptimConfig)
    loss: LossConfig = dc_field(default_factory=LossConfig)
    export: ExportConfig = dc_field(default_factory=ExportConfig)


CHOICES: dict[str, tuple[str, ...]] = choices_of(Config)
"""The allowed values of every choice key, {dotted key: values}, read from each section's choice() declarations."""
