"""The config schema: one dataclass per component, the allowed values of every choice key, renamed keys.

The string literal under each field is its documentation and the text ``--help`` prints. YAML files in
``configs/`` and ``key=value`` overrides only set these fields (``loader.py`` checks them). Keys that only
one field or guidance type reads are grouped under it: ``field.hashgrid.*``, ``field.triplane.*``,
``field.gaussian.*``, ``optim.gaussian.*``, ``guidance.prior.*``, ``guidance.clip.*``, ``guidance.deepfloyd.*``.

Every numeric key is declared with ``ranged(default, "[lo, hi]")`` (``ranges.py``): its allowed values in
interval notation, each entry's for a list; ``--help`` prints the range after the docstring.
"""

from __future__ import annotations

from dataclasses import field as dc_field
from typing import List, Optional

from ..guidance.config import (REPLACED, ClipConfig, DeepFloydConfig, GuidanceConfig, PerpNegConfig, PriorConfig,
                               VSDConfig)
from ..settings import choice, choices_of, ranged, section

__all__ = ["Config", "FieldConfig", "HashGridConfig", "TriplaneConfig", "GaussianConfig", "CameraConfig",
           "RenderConfig", "GuidanceConfig", "PriorConfig", "ClipConfig", "PerpNegConfig", "VSDConfig", "OptimConfig", "GaussianOptimConfig",
           "LossConfig", "ExportConfig", "CHOICES", "RENAMED", "REPLACED", "LATENT_NEEDS_VOLUME",
           "DeepFloydConfig"]



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
class FieldConfig:
    """field: the 3D representation; hidden_dim .. blob_radius are the MLP decoder shared by nerf and triplane."""

    type: str = choice("nerf", ("nerf", "triplane", "gaussian"))
    """The 3D representation: nerf (hash-grid NeRF), triplane, or gaussian."""
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


@section
class CameraConfig:
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


@section
class RenderConfig:
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
    background: str = choice("learned", ("learned", "random", "white", "black", "gray", "white_or_black", "augment"))
    """Background: learned (MLP of view direction), random (solid colour per view), white, black, gray, white_or_black (either, per view), or augment (Dream Fields random textures)."""
    albedo_warmup_steps: int = ranged(1000, "[0, inf)")
    """Steps that render albedo only before random shading starts (DreamFusion)."""
    albedo_prob: float = ranged(0.2, "[0, 1]")
    """After warm-up: probability of albedo shading."""
    textureless_prob: float = ranged(0.3, "[0, 1]")
    """After warm-up: probability of textureless (white albedo) Lambertian shading; the rest is Lambertian."""
    ambient: float = ranged(0.1, "[0, 1]")
    """Ambient light fraction in Lambertian shading."""


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


@section
class LossConfig:
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
    video_panels: List[str] = dc_field(default_factory=lambda: ["rgb"])
    """Panels side by side in the orbit video: rgb, normal, depth."""


@section
class Config:
    prompt: str = ""
    """The text prompt."""
    negative_prompt: str = ""
    """Text to steer away from; replaces the empty prompt in classifier-free guidance."""
    seed: int = ranged(0, "[-9223372036854775808, 18446744073709551615]")
    """Random seed of cameras, noise and initialisation (any value torch.manual_seed takes: -2^63 .. 2^64 - 1)."""
    steps: int = ranged(10000, "[1, inf)")
    """Total optimization steps (with resume: the step to continue up to)."""
    output_dir: str = "outputs"
    """Folder that receives the run folder."""
    device: str = choice("auto", ("auto", "cpu", "cuda"))
    """auto, cpu or cuda."""
    resume: Optional[str] = None
    """A run folder to continue from its last checkpoint."""
    checkpoint_every: int = ranged(500, "[1, inf)")
    """Write the checkpoint every N steps (and at the end or on interrupt)."""
    preview_every: int = ranged(500, "[0, inf)")
    """Write a preview image every N steps; 0 disables."""
    preview_resolution: int = ranged(256, "[1, inf)")
    """Side in pixels of each of the four views of a preview image."""
    log_every: int = ranged(10, "[1, inf)")
    """Append a line to metrics.jsonl every N steps."""
    max_nonfinite_steps: int = ranged(20, "[0, inf)")
    """Skipped steps in a row (non-finite loss or gradient; skipped_steps in metrics.jsonl) that fail the run."""
    field: FieldConfig = dc_field(default_factory=FieldConfig)
    camera: CameraConfig = dc_field(default_factory=CameraConfig)
    render: RenderConfig = dc_field(default_factory=RenderConfig)
    guidance: GuidanceConfig = dc_field(default_factory=GuidanceConfig)
    optim: OptimConfig = dc_field(default_factory=OptimConfig)
    loss: LossConfig = dc_field(default_factory=LossConfig)
    export: ExportConfig = dc_field(default_factory=ExportConfig)


CHOICES: dict[str, tuple[str, ...]] = choices_of(Config)
"""The allowed values of every choice key, {dotted key: values}, read from each section's choice() declarations."""


def _renamed() -> dict[str, str]:
    old_to_new = {f"field.{k}": f"field.hashgrid.{k}" for k in
                  ("backend", "n_levels", "n_features_per_level", "log2_hashmap_size", "base_resolution",
                   "per_level_scale")}
    old_to_new.update({f"field.triplane_{k}": f"field.triplane.{k}" for k in ("resolution", "channels", "aggregation")})
    old_to_new.update({f"field.gaussian_{k}": f"field.gaussian.{k}" for k in GaussianConfig.__dataclass_fields__})
    old_to_new.update({f"optim.gaussian_{k}": f"optim.gaussian.{k}" for k in GaussianOptimConfig.__dataclass_fields__})
    old_to_new.update({f"guidance.prior_{k}": f"guidance.prior.{k}" for k in PriorConfig.__dataclass_fields__})
    old_to_new.update({f"guidance.clip_{k}": f"guidance.clip.{k}" for k in ClipConfig.__dataclass_fields__})
    return old_to_new


RENAMED: dict[str, str] = _renamed()
"""Keys of earlier versions -> their name now (the loader answers an old key with a one-line 'renamed to')."""

LATENT_NEEDS_VOLUME = ("guidance.latent_render needs field.type=nerf or triplane (Gaussians carry RGB colours): "
                       "set guidance.latent_render=false")
