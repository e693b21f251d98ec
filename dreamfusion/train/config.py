"""The trainer's config sections: camera sampling (camera.*), Adam and the learning rate of every parameter group
(optim.*; a field's ``param_groups`` reads its own rates from it) and the loss weights (loss.*)."""

from __future__ import annotations

from dataclasses import field as dc_field
from typing import List

from ..errors import ConfigError
from ..settings import ranged, section

__all__ = ["CameraConfig", "OptimConfig", "GaussianOptimConfig", "LossConfig"]


@section
class CameraConfig:
    """camera: where training cameras are drawn from, and the evaluation camera of previews and the video."""

    batch_size: int = ranged(1, "[1, inf)")
    """Views rendered per step (a multiple of n_views)."""
    n_views: int = ranged(1, "[1, inf)")
    """Views per group graded jointly: 4 for multi-view guidance (MVDream), 90 degrees apart; 1: single views."""
    elevation_range: List[float] = ranged([-10.0, 45.0], "[-90, 90]")
    """Training elevation range in degrees (min, max)."""
    azimuth_range: List[float] = ranged([-180.0, 180.0], "(-inf, inf)")
    """Training azimuth range in degrees; 0 is the front (+z)."""
    distance_range: List[float] = ranged([1.5, 2.0], "(0, inf)")
    """Training camera distance range from the origin."""
    fovy_range: List[float] = ranged([40.0, 70.0], "(0, 180)")
    """Training vertical field of view range in degrees."""
    snap_to_prior: bool = False
    """Draw each training camera from the embedded prior's own dataset views (its guidance.prior.views cameras over these ranges, uniformly), so that a render and the prior's image of that view are registered pixel for pixel: sharper edges and textures (demo-refine; docs/BENCHMARKS.md). Needs guidance.model_type=prior and n_views = 1."""
    eval_elevation: float = ranged(15.0, "[-90, 90]")
    """Elevation of the orbit video and previews, degrees."""
    eval_distance: float = ranged(1.75, "(0, inf)")
    """Distance of the orbit video and previews."""
    eval_fovy: float = ranged(55.0, "(0, 180)")
    """Field of view of the orbit video and previews, degrees."""

    def check(self, root) -> None:
        if self.batch_size % self.n_views:
            raise ConfigError(f"camera.batch_size ({self.batch_size}) must be a multiple of camera.n_views "
                              f"({self.n_views}): views come in groups of n_views")
        for key in ("elevation_range", "azimuth_range", "distance_range", "fovy_range"):
            value = getattr(self, key)
            if len(value) != 2 or value[0] > value[1]:
                raise ConfigError(f"camera.{key} must be [min, max] with min <= max, got {list(value)}")
        if self.snap_to_prior and root.guidance.model_kind != "prior":
            raise ConfigError("camera.snap_to_prior draws the training cameras from the embedded prior's views: "
                              "use it with guidance.model_type=prior, or set it to false")
        if self.snap_to_prior and self.n_views > 1:
            raise ConfigError(f"camera.snap_to_prior draws single views, not groups of camera.n_views ({self.n_views}): "
                              "set camera.n_views=1 or camera.snap_to_prior=false")


@section
class GaussianOptimConfig:
    """optim.gaussian: per-parameter learning rates of the Gaussian field (3DGS / DreamGaussian)."""

    position_lr: float = ranged(0.005, "(0, inf)")
    """Adam learning rate of the means at step 0."""
    position_lr_final: float = ranged(0.0002, "[0, inf)")
    """Learning rate of the means after position_lr_steps (log-linear decay)."""
    position_lr_steps: int = ranged(600, "[0, inf)")
    """Steps over which the means' learning rate decays."""
    color_lr: float = ranged(0.01, "[0, inf)")
    """Learning rate of the SH colour coefficients (higher degrees at 1/20 of it)."""
    opacity_lr: float = ranged(0.05, "[0, inf)")
    """Learning rate of the opacity logits."""
    scale_lr: float = ranged(0.005, "[0, inf)")
    """Learning rate of the log-scales."""
    rotation_lr: float = ranged(0.005, "[0, inf)")
    """Learning rate of the quaternions."""


@section
class OptimConfig:
    """optim: Adam and the learning rates of every parameter group."""

    encoding_lr: float = ranged(0.01, "[0, inf)")
    """Adam learning rate of the grid / plane / Gaussian parameters."""
    network_lr: float = ranged(0.001, "[0, inf)")
    """Adam learning rate of the MLPs."""
    triplane_lr: float = ranged(0.02, "[0, inf)")
    """Adam learning rate of the tri-plane feature planes."""
    dmtet_lr: float = ranged(0.01, "[0, inf)")
    """Adam learning rate of a DMTet surface's SDF and deformation (threestudio magic3d-refine: 0.01)."""
    background_lr: float = ranged(0.001, "[0, inf)")
    """Adam learning rate of the learned background."""
    lr_warmup_steps: int = ranged(0, "[0, inf)")
    """Linear learning-rate warm-up over this many steps, on top of every other schedule; 0 disables (Dream Fields: 1500)."""
    lr_warmup_start: float = ranged(0.1, "(0, 1]")
    """Fraction of each learning rate at step 0 of the warm-up (Dream Fields: 1e-5 -> 1e-4 is 0.1)."""
    betas: List[float] = ranged([0.9, 0.99], "[0, 1)")
    """Adam betas."""
    eps: float = ranged(1e-15, "[0, inf)")
    """Adam epsilon."""
    gaussian: GaussianOptimConfig = dc_field(default_factory=GaussianOptimConfig)

    def check(self, root) -> None:
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must be two values in [0, 1), got {list(self.betas)}")


@section
class LossConfig:
    """loss: the weight of each loss_<name> term the guidance, the renderer's regularisers and the field return."""

    sds: float = ranged(1.0, "[0, inf)")
    """Weight of the score distillation term."""
    clip: float = ranged(1.0, "[0, inf)")
    """Weight of the CLIP similarity term."""
    sdedit: float = ranged(1.0, "[0, inf)")
    """Weight of the MSE to the SDEdit-refined renders (guidance.type=sdedit)."""
    transmittance: float = ranged(0.0, "[0, inf)")
    """Weight of the Dream Fields transmittance term (configs/dreamfields.yaml: 0.5)."""
    orientation: float = ranged(0.0, "[0, inf)")
    """Weight of the orientation loss (normals facing away from the camera)."""
    sparsity: float = ranged(0.0, "[0, inf)")
    """Weight of the opacity sparsity loss mean(sqrt(opacity^2 + 0.01))."""
    opacity_entropy: float = ranged(0.0, "[0, inf)")
    """Weight of the binary entropy of the opacity."""
    tv: float = ranged(0.0, "[0, inf)")
    """Weight of the total-variation regulariser of tri-planes."""
    normal_consistency: float = ranged(0.0, "[0, inf)")
    """Weight of a DMTet surface's normal consistency, mean 1 - cos between adjacent faces (magic3d-refine: 1e4)."""
    laplacian: float = ranged(0.0, "[0, inf)")
    """Weight of a DMTet surface's uniform Laplacian smoothing (stable-dreamfusion --dmtet: 0.5)."""
    lora: float = ranged(1.0, "[0, inf)")
    """Weight of the VSD LoRA's denoising loss (guidance.vsd; it trains the LoRA only)."""
