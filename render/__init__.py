"""render: the project's pure functions of tensors, a top-level package of its published layout (``import render``).

No training state, no config objects, no file I/O: tensors in, tensors out. The modules: cameras (``Cameras``,
orbits, sampling), rays, volume (compositing; the nerfacc fast path is ``render.volume_nerfacc``, which imports
nerfacc lazily, CUDA only), shading, gaussians (rasterization, gsplat or plain PyTorch), and two helpers that know
no camera and render nothing, which fields may import too: splat_math (the Gaussian splat's conventions) and latent
(the Stable Diffusion latent <-> RGB map). ``dreamfusion/`` builds on it, never the reverse.
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
