"""The field's config section, ``field`` (and its groups ``field.hashgrid``, ``field.triplane``, ``field.gaussian``).

Declared next to the fields with ``dreamfusion.settings``; ``config/schema.py`` assembles it into ``Config``.
"""

from __future__ import annotations

from dataclasses import field as dc_field
from typing import Optional

from ..errors import ConfigError
from ..settings import choice, ranged, section

__all__ = ["FieldConfig", "HashGridConfig", "TriplaneConfig", "GaussianConfig", "DMTetConfig", "LATENT_NEEDS_VOLUME"]

LATENT_NEEDS_VOLUME = ("guidance.latent_render needs field.type=nerf or triplane (Gaussians and DMTet surfaces carry RGB colours): "
                       "set guidance.latent_render=false")


@section
class HashGridConfig:
    """field.hashgrid: the multiresolution hash encoding of the NeRF field (Instant-NGP)."""

    backend: str = choice("auto", ("auto", "torch", "tcnn"))
    """Implementation: auto (tinycudann on CUDA when installed), torch, or tcnn."""
    n_levels: int = ranged(16, "[1, inf)")
    """Number of resolution levels."""
    n_features_per_level: int = ranged(2, "[1, inf)")
    """Features stored per level."""
    log2_hashmap_size: int = ranged(19, "[1, inf)")
    """Log2 of the table size per level."""
    base_resolution: int = ranged(16, "[1, inf)")
    """Resolution of the coarsest level."""
    per_level_scale: float = ranged(1.447, "[1, inf)")
    """Growth factor of the resolution from one level to the next."""


@section
class TriplaneConfig:
    """field.triplane: the three feature planes of the tri-plane field (EG3D)."""

    resolution: int = ranged(128, "[2, inf)")
    """Side N of each N x N feature plane."""
    channels: int = ranged(16, "[1, inf)")
    """Feature channels per plane."""
    aggregation: str = choice("sum", ("sum", "product", "concat"))
    """How the three plane features combine: sum (EG3D), product or concat."""


@section
class GaussianConfig:
    """field.gaussian: 3D Gaussian splats and their adaptive density control (3DGS, DreamGaussian)."""

    count: int = ranged(3000, "[1, inf)")
    """Number of Gaussians at init (DreamGaussian: 5000)."""
    init_radius: float = ranged(0.8, "(0, inf)")
    """Radius of the ball the means are drawn in."""
    init_opacity: float = ranged(0.1, "(0, 1)")
    """Opacity at init."""
    sh_degree: int = ranged(0, "[0, 3]")
    """Spherical-harmonics degree of the colour (0 = view independent)."""
    init_scale: float = ranged(0.0, "[0, inf)")
    """Initial scale (standard deviation); 0 = mean distance to the 3 nearest neighbours."""
    rasterizer: str = choice("auto", ("auto", "torch", "gsplat"))
    """Rasterizer: auto (gsplat on CUDA when installed), torch, or gsplat."""
    densify_every: int = ranged(50, "[0, inf)")
    """Clone / split / prune every N steps (0 disables)."""
    densify_start: int = ranged(0, "[0, inf)")
    """First step at which densification may run."""
    densify_stop: int = ranged(3000, "[0, inf)")
    """Last step at which densification may run."""
    densify_grad_threshold: float = ranged(0.01, "[0, inf)")
    """Mean view-space (NDC) gradient norm of a mean above which it is cloned or split."""
    dense_scale: float = ranged(0.005, "[0, inf)")
    """Largest scale up to which a Gaussian is cloned; larger ones are split in two."""
    prune_opacity: float = ranged(0.05, "[0, 1]")
    """Prune Gaussians whose opacity is below this."""
    prune_scale: float = ranged(0.1, "[0, inf)")
    """Prune Gaussians whose largest scale exceeds this (0 disables)."""
    max_count: int = ranged(8000, "[0, inf)")
    """Cap on the number of Gaussians densification may reach (0 = no cap, warned about: SDS grows it without bound)."""


@section
class DMTetConfig:
    """field.dmtet: the refine stage's surface (DMTet: an SDF and a deformation on a tetrahedral grid, marching
    tetrahedra, rasterized; Magic3D's fine stage) and where it starts from."""

    resolution: int = ranged(128, "[2, inf)")
    """Cubes per side of the tetrahedral grid, six tetrahedra each (threestudio magic3d-refine: 128)."""
    max_deform: float = ranged(0.5, "[0, inf)")
    """Largest move of a grid vertex, in cells (stable-dreamfusion --dmtet: tanh(d) / 128 over [-1, 1], half a cell)."""
    init_radius: float = ranged(0.5, "(0, inf)")
    """Radius of the sphere the SDF starts as when convert_from is unset."""
    train_geometry: bool = True
    """Train the SDF and the deformation; false keeps the converted surface and trains the texture only (DreamGaussian stage 2)."""
    convert_from: Optional[str] = None
    """Run folder whose field starts this one (set by python -m dreamfusion refine RUN_DIR): its exported surface and albedo."""
    texture_fit_steps: int = ranged(200, "[0, inf)")
    """Adam steps fitting the texture to the coarse run's albedo at conversion (0: the texture starts untrained)."""
    surface_fit_steps: int = ranged(0, "[0, inf)")
    """Adam steps pulling the converted surface (SDF and deformation) onto the coarse run's exported mesh at conversion, by the symmetric distance between points drawn on both: step 0 is then the export itself, thin tips included (0: the distance-transform SDF alone, which lies on the density's level set and can be closer to the shape than the export; docs/BENCHMARKS.md)."""
    normal_edge: float = ranged(0.0, "[0, inf)")
    """Edge-preserving normal consistency: each edge costs c x / (x + c) of x = 1 - cos instead of x, with c this value, so small bends are smoothed as before and sharp edges cost at most c; 0 keeps plain 1 - cos (magic3d-refine)."""


@section
class FieldConfig:
    """field: the 3D representation; hidden_dim .. blob_radius are the MLP decoder shared by nerf and triplane."""

    type: str = choice("nerf", ("nerf", "triplane", "gaussian", "dmtet"))
    """The 3D representation: nerf (hash-grid NeRF), triplane, gaussian, or dmtet (the refine stage's surface)."""
    bound: float = ranged(1.0, "(0, inf)")
    """Half side of the scene cube [-bound, bound]^3 that holds the object."""
    hidden_dim: int = ranged(64, "[1, inf)")
    """Width of the MLP that decodes features to density and albedo."""
    n_hidden_layers: int = ranged(1, "[0, inf)")
    """Hidden layers of that MLP."""
    density_activation: str = choice("softplus", ("softplus", "exp"))
    """Density activation: softplus or exp (truncated exponential)."""
    blob_density: float = ranged(10.0, "[0, inf)")
    """Peak of the density bias added at init (0 disables it)."""
    blob_radius: float = ranged(0.5, "(0, inf)")
    """Radius of the density blob: Magic3D blob_density * (1 - |x| / blob_radius)."""
    hashgrid: HashGridConfig = dc_field(default_factory=HashGridConfig)
    triplane: TriplaneConfig = dc_field(default_factory=TriplaneConfig)
    gaussian: GaussianConfig = dc_field(default_factory=GaussianConfig)
    dmtet: DMTetConfig = dc_field(default_factory=DMTetConfig)

    def check(self, root) -> None:
        """Rules across sections: a latent render (guidance.latent_render) needs a volumetric field."""
        if root.guidance.latent_render and self.type in ("gaussian", "dmtet"):
            raise ConfigError(LATENT_NEEDS_VOLUME)
        if self.dmtet.convert_from is not None and self.type != "dmtet":
            raise ConfigError(f"field.dmtet.convert_from starts a DMTet surface but field.type is {self.type}: "
                              f"set field.type=dmtet (python -m dreamfusion refine RUN_DIR does)")
