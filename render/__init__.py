"""Pure tensor functions: cameras, rays, volume rendering, shading, Gaussian rasterization.

The nerfacc fast path lives in ``render.volume_nerfacc`` (imports nerfacc lazily, CUDA only).
"""

from .cameras import Cameras, camera_position, look_at, orbit_cameras, sample_cameras
from .rays import generate_rays
from .shading import random_light_dirs, shade
from .volume import composite, ray_aabb, render_rays, stratified_t

__all__ = [
    "Cameras", "camera_position", "look_at", "sample_cameras", "orbit_cameras",
    "generate_rays",
    "ray_aabb", "stratified_t", "composite", "render_rays",
    "shade", "random_light_dirs",
]
