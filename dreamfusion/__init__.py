"""dreamfusion: text-to-3D by optimization (NeRF, tri-plane or Gaussians guided by SDS, CLIP or an embedded prior)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
