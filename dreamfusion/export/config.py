"""The export section of the config: mesh extraction, texture and orbit video settings (export.*)."""

from __future__ import annotations

from typing import List, Optional

from ..errors import ConfigError
from ..settings import choice, ranged, section

__all__ = ["ExportConfig"]


@section
class ExportConfig:
    resolution: int = ranged(128, "[2, inf)")
    """Marching-cubes grid resolution per side."""
    threshold: Optional[float] = ranged(None, "(0, inf)")
    """Density level of the surface; null = automatic, where the optical depth seen from outside reaches auto_optical_depth."""
    auto_optical_depth: Optional[float] = ranged(None, "(0, inf)")
    """Automatic surface: optical depth (min over the six axis directions) at which the mesh surface lies; null = the field's own (0.3 for nerf / triplane, 0.15 for gaussian)."""
    min_component_ratio: float = ranged(0.05, "[0, 1]")
    """Drop mesh pieces with fewer faces than this fraction of the largest piece."""
    decimate_faces: int = ranged(0, "[0, inf)")
    """Target face count for decimation; 0 keeps every face."""
    texture: str = choice("uv", ("uv", "vertex"))
    """Colour: uv (xatlas unwrap + baked albedo texture) or vertex (vertex colours)."""
    uv_max_faces: int = ranged(20000, "[0, inf)")
    """UV texture only: decimate to at most this many faces before the unwrap (xatlas time grows faster than the face count); 0 never."""
    texture_size: int = ranged(1024, "[1, inf)")
    """Side of the baked albedo texture in pixels."""
    video_frames: int = ranged(120, "[1, inf)")
    """Frames of the orbit video."""
    video_fps: int = ranged(30, "[1, inf)")
    """Frames per second of the orbit video."""
    video_resolution: int = ranged(256, "[1, inf)")
    """Side of each orbit video panel in pixels."""
    video_panels: List[str] = ("rgb",)
    """Panels side by side in the orbit video: rgb, normal, depth."""

    def check(self, root) -> None:
        for panel in self.video_panels:
            if panel not in ("rgb", "normal", "depth"):
                raise ConfigError(f"bad export.video_panels entry '{panel}': choose from rgb, normal, depth")
