"""Latent rendering (Latent-NeRF, Metzer et al., arXiv 2211.07600): the field renders Stable Diffusion's 4
latent channels directly at the latent resolution, so SDS needs neither the resize to 512 x 512 nor the
VAE encode and its backward.

Colours for people (mesh texture, orbit video, previews: the renderer's ``rgb_view``, dreamfusion/renderer/views.py) and
solid backgrounds for the renderer go through a fixed linear map between the (scaled) SD 1.x latent space and
RGB, fitted by keturn on SD 1.4 decodes (Hugging Face forum, "Decoding latents to RGB without upscaling"):

    rgb = (z @ LATENT_TO_RGB + 1) / 2          z [..., 4] as the UNet sees it (VAE mean x 0.18215)
    z   = (2 rgb - 1) @ pinv(LATENT_TO_RGB)    the least-squares inverse, so latent_to_rgb(rgb_to_latent(c)) = c

The map is an approximation of the VAE decoder: exported colours of a latent run are indicative, not exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["LATENT_CHANNELS", "LATENT_TO_RGB", "latent_to_rgb", "rgb_to_latent"]

LATENT_CHANNELS = 4
LATENT_TO_RGB = torch.tensor([[0.298, 0.207, 0.208],
                              [0.187, 0.286, 0.173],
                              [-0.158, 0.189, 0.264],
                              [-0.184, -0.271, -0.473]])  # [4, 3]: rows are latent channels, columns R G B
_RGB_TO_LATENT = torch.linalg.pinv(LATENT_TO_RGB)  # [3, 4]


def latent_to_rgb(z: Tensor) -> Tensor:
    """[..., 4] scaled SD latents -> [..., 3] approximate RGB in [0, 1] (clamped)."""
    return ((z @ LATENT_TO_RGB.to(z)) + 1.0).mul(0.5).clamp(0.0, 1.0)


def rgb_to_latent(rgb: Tensor) -> Tensor:
    """[..., 3] RGB in [0, 1] -> [..., 4] latents that latent_to_rgb maps back to the same RGB."""
    return (rgb * 2.0 - 1.0) @ _RGB_TO_LATENT.to(rgb)
