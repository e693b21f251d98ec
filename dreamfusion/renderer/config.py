"""The renderer's config section, ``render``: resolution, samples, sampler, background, shading schedule.

Declared next to the renderer with ``dreamfusion.settings``; ``config/schema.py`` assembles it into ``Config``.
"""

from __future__ import annotations

from typing import List

from ..errors import ConfigError
from ..settings import choice, ranged, section

__all__ = ["RenderConfig"]


@section
class RenderConfig:
    """render: how the field is rendered in training, previews and the video (renderer/)."""

    width: int = ranged(64, "[1, inf)")
    """Training render width in pixels."""
    height: int = ranged(64, "[1, inf)")
    """Training render height in pixels."""
    progressive_sizes: List[int] = ranged([], "[1, inf)")
    """Progressive resolution: square render sides used in turn, e.g. [128, 256, 512] (DreamGaussian); empty keeps width x height."""
    progressive_milestones: List[int] = ranged([], "[1, inf)")
    """Steps at which training moves on to the next of progressive_sizes (one fewer entry than it, increasing)."""
    n_samples: int = ranged(128, "[1, inf)")
    """Stratified samples per ray inside the scene cube."""
    eval_grid: int = ranged(0, "[0, inf)")
    """Previews and the orbit video render the field sampled once on this many grid vertices per side (fast on a CPU); 0 renders the field itself."""
    perturb: bool = True
    """Jitter sample positions during training."""
    sampler: str = choice("auto", ("auto", "torch", "nerfacc"))
    """Ray sampler: auto (nerfacc occupancy grid on CUDA when installed), torch, or nerfacc."""
    mesh_rasterizer: str = choice("auto", ("auto", "torch", "nvdiffrast"))
    """Mesh rasterizer of surface fields (refine stage): auto (nvdiffrast's CUDA context on CUDA when installed; not on PyPI, non-commercial licence), torch, or nvdiffrast."""
    background: str = choice("learned", ("learned", "random", "white", "black", "gray", "white_or_black", "augment"))
    """Background: learned (MLP of view direction), random (solid colour per view), white, black, gray, white_or_black (either, per view), or augment (Dream Fields random textures). Previews and the orbit video show the object over this colour when it is white, black or gray, else over mid gray."""
    albedo_warmup_steps: int = ranged(1000, "[0, inf)")
    """Steps that render albedo only before random shading starts (DreamFusion)."""
    albedo_prob: float = ranged(0.2, "[0, 1]")
    """After warm-up: probability of albedo shading."""
    textureless_prob: float = ranged(0.3, "[0, 1]")
    """After warm-up: probability of textureless (white albedo) Lambertian shading; the rest is Lambertian."""
    ambient: float = ranged(0.1, "[0, 1]")
    """Ambient light fraction in Lambertian shading."""

    def check(self, root) -> None:
        """The progressive schedule's lengths and order, eval_grid's values, the shading probabilities' sum."""
        sizes, milestones = list(self.progressive_sizes), list(self.progressive_milestones)
        if sizes or milestones:
            if len(milestones) != len(sizes) - 1:
                raise ConfigError(f"render.progressive_milestones needs one entry fewer than render.progressive_sizes "
                                  f"(got {len(milestones)} and {len(sizes)}), e.g. sizes [128, 256] milestones [300]")
            if any(b <= a for a, b in zip([0] + milestones, milestones)):
                raise ConfigError(f"render.progressive_milestones must be positive and increasing, got {milestones}")
        if self.eval_grid == 1:
            raise ConfigError("render.eval_grid must be 0 (render the field itself) or a grid side >= 2, got 1")
        if self.albedo_prob + self.textureless_prob > 1.0:
            raise ConfigError("render.albedo_prob + render.textureless_prob must be <= 1")
