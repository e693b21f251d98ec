"""The 3D Gaussian splat's conventions (Kerbl et al. 2023, "3D Gaussian Splatting"), shared by the Gaussian field
(dreamfusion/fields/gaussian.py) and the rasterizer (render/gaussians.py). Tensors only: no camera, no rendering.

    colour   = 0.5 + SH_C0 * sh_dc                the degree-0 spherical harmonic Y_0^0 = 1 / (2 sqrt(pi))
    alpha   <= ALPHA_MAX                         a splat never hides what lies behind it completely (3DGS's clamp)
    rotation = quat_to_rotmat(q / |q|)           quaternions (w, x, y, z), w first
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SH_C0", "ALPHA_MAX", "quat_to_rotmat"]

SH_C0 = 0.28209479177387814  # Y_0^0: colour = 0.5 + SH_C0 * sh_dc
ALPHA_MAX = 0.99  # the largest alpha of a splat (3DGS's clamp)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Unit quaternions (w, x, y, z) [N, 4] -> rotation matrices [N, 3, 3]."""
    w, x, y, z = quats.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(*quats.shape[:-1], 3, 3)
