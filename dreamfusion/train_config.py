"""The trainer's config sections: camera sampling (camera.*) and the loss weights (loss.*); ``train.py`` reads them."""

from __future__ import annotations

from typing import List

from .errors import ConfigError
from .settings import ranged, section

__all__ = ["CameraConfig", "LossConfig"]


@section
class CameraConfig:
    """camera: where training cameras are drawn from, and the evaluation camera of previews and the video."""

    batch_size: int = ranged(1, "[1, inf)")
    """Views rendered per step."""
    elevation_range: List[float] = ranged([-10.0, 45.0], "[-90, 90]")
    """Training elevation range in degrees (min, max)."""
    azimuth_range: List[float] = ranged([-180.0, 180.0], "(-inf, inf)")
    """Training azimuth range in degrees; 0 is the front (+z)."""
    distance_range: List[float] = ranged([1.5, 2.0], "(0, inf)")
    """Training camera distance range from the origin."""
    fovy_range: List[float] = ranged([40.0, 70.0], "(0, 180)")
    """Training vertical field of view range in degrees."""
    eval_elevation: float = ranged(15.0, "[-90, 90]")
    """Elevation of the orbit video and previews, degrees."""
    eval_distance: float = ranged(1.75, "(0, inf)")
    """Distance of the orbit video and previews."""
    eval_fovy: float = ranged(55.0, "(0, 180)")
    """Field of view of the orbit video and previews, degrees."""

    def check(self, root) -> None:
        for key in ("elevation_range", "azimuth_range", "distance_range", "fovy_range"):
            value = getattr(self, key)
            if len(value) != 2 or value[0] > value[1]:
                raise ConfigError(f"camera.{key} must be [min, max] with min <= max, got {list(value)}")


@section
class LossConfig:
    """loss: the weight of each loss_<name> term the guidance, the renderer's regularisers and the field return."""

    sds: float = ranged(1.0, "[0, inf)")
    """Weight of the score distillation term."""
    clip: float = ranged(1.0, "[0, inf)")
    """Weight of the CLIP similarity term."""
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
    lora: float = ranged(1.0, "[0, inf)")
    """Weight of the VSD LoRA's denoising loss (guidance.vsd; it trains the LoRA only)."""
