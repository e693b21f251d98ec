"""The config schema: one dataclass per component, the allowed values of every choice key, renamed keys.

The string literal under each field is its documentation and the text ``--help`` prints. YAML files in
``configs/`` and ``key=value`` overrides only set these fields (``loader.py`` checks them). Keys that only
one field or guidance type reads are grouped under it: ``field.hashgrid.*``, ``field.triplane.*``,
``field.gaussian.*``, ``optim.gaussian.*``, ``guidance.prior.*``, ``guidance.clip.*``, ``guidance.deepfloyd.*``.
The ``field`` section (and its groups) is declared next to the fields (fields/config.py), ``render`` next to the
renderer (renderer/config.py); this module imports and assembles them.

Every numeric key is declared with ``ranged(default, "[lo, hi]")`` (``ranges.py``): its allowed values in
interval notation, each entry's for a list; ``--help`` prints the range after the docstring.
"""

from __future__ import annotations

from dataclasses import field as dc_field
from typing import List, Optional

from ..export.config import ExportConfig
from ..fields.config import LATENT_NEEDS_VOLUME, FieldConfig, GaussianConfig, HashGridConfig, TriplaneConfig
from ..renderer.config import RenderConfig
from ..settings import choice, choices_of, ranged, section
from ..train_config import CameraConfig, LossConfig

__all__ = ["Config", "FieldConfig", "HashGridConfig", "TriplaneConfig", "GaussianConfig", "CameraConfig",
           "RenderConfig", "GuidanceConfig", "PriorConfig", "ClipConfig", "PerpNegConfig", "VSDConfig", "OptimConfig", "GaussianOptimConfig",
           "LossConfig", "ExportConfig", "CHOICES", "RENAMED", "LATENT_NEEDS_VOLUME",
           "DeepFloydConfig"]



@section
class PriorConfig:
    """guidance.prior: the embedded offline prior (guidance.type=prior)."""

    resolution: int = ranged(32, "[1, inf)")
    """Image resolution of its dataset and of the denoiser."""
    views: int = ranged(256, "[1, inf)")
    """Rendered views per prompt in its image set."""
    view_window: float = ranged(20.0, "(0, 180]")
    """Prompts of one plain object ('a red cube'): keep dataset views within this many degrees of the render camera (other prompts are conditioned on text only: guidance.view_dependent)."""


@section
class ClipConfig:
    """guidance.clip: Dream Fields' CLIP guidance (guidance.type=clip)."""

    crops: int = ranged(4, "[1, inf)")
    """Augmented crops per step."""
    crop_fraction: float = ranged(0.8, "(0, 1]")
    """Fraction of the render side each random crop covers."""


@section
class PerpNegConfig:
    """guidance.perp_neg: Perp-Neg view-dependent negative prompts (guidance/perp_neg.py; sds or deepfloyd)."""

    enabled: bool = False
    """Replace classifier-free guidance by Perp-Neg (Armandpour et al. 2023) against multi-faced (Janus) objects."""
    f_fs: List[float] = ranged([4.0, 0.5, -2.426], "(-inf, inf)")
    """(a, b, c) of the weight a exp(-b r) + c of the front negative between front and side (r = 1 front)."""
    f_sf: List[float] = ranged([4.0, 0.5, -2.426], "(-inf, inf)")
    """(a, b, c) of the weight of the side negative between front and side (at 1 - r)."""
    f_sb: List[float] = ranged([1.0, 0.5, -0.606], "(-inf, inf)")
    """(a, b, c) of the weight of the side negative between side and back (r = 1 side)."""
    f_fsb: List[float] = ranged([1.0, 0.5, 0.967], "(-inf, inf)")
    """(a, b, c) of the weight of the front negative between side and back."""


@section
class VSDConfig:
    """guidance.vsd: variational score distillation (ProlificDreamer; guidance/vsd.py; guidance.type=sds)."""

    enabled: bool = False
    """Compare the guided noise with a camera-conditioned LoRA of the UNet trained on the renders instead of the injected noise."""
    lora_rank: int = ranged(4, "[1, inf)")
    """Rank of the LoRA on the UNet's attention projections (to_q, to_k, to_v, to_out)."""
    lr: float = ranged(0.001, "(0, inf)")
    """Adam learning rate of the LoRA and its camera embedding."""
    camera_dropout: float = ranged(0.1, "[0, 1]")
    """Probability of a zero camera condition in the LoRA's training loss (classifier-free training)."""


@section
class DeepFloydConfig:
    """guidance.deepfloyd: DeepFloyd IF stage I, a pixel-space prior read by T5 (guidance.type=deepfloyd)."""

    max_length: int = ranged(77, "[1, inf)")
    """T5 tokens per text, padded or truncated; IF was trained with 77 (diffusers' IFPipeline)."""
    variant: Optional[str] = None
    """Weight files to load: null = the full-precision ones; fp16 = IF's *.fp16.safetensors (half the download)."""


@section
class GuidanceConfig:
    """guidance: the 2D prior that grades the renders, and the SDS rule's settings."""

    type: str = choice("sds", ("sds", "prior", "clip", "deepfloyd"))
    """Guidance: sds (Stable Diffusion), prior (embedded offline prior), clip (Dream Fields) or deepfloyd (SDS on DeepFloyd IF stage I, pixel space)."""
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    """Hub id or local folder of the guidance model."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of the model."""
    guidance_scale: float = ranged(100.0, "[0, inf)")
    """Classifier-free guidance scale s in eps_u + s (eps_c - eps_u)."""
    preview_scale: float = ranged(7.5, "[0, inf)")
    """Guidance scale of the 2D preview's DDIM sampling (not the SDS scale; 7.5 is Stable Diffusion's default)."""
    t_min: float = ranged(0.02, "(0, 1)")
    """Smallest diffusion time, as a fraction of the 1000 training steps."""
    t_max: float = ranged(0.98, "(0, 1)")
    """Largest diffusion time at the start of training."""
    t_anneal: str = choice("none", ("none", "linear", "sqrt"))
    """How t_max moves toward t_max_end: none, linear or sqrt."""
    t_max_end: float = ranged(0.5, "(0, 1)")
    """T_max at the end of training when t_anneal is not none."""
    weighting: str = choice("sds", ("sds", "uniform", "fantasia3d"))
    """W(t): sds (1 - abar_t), uniform, or fantasia3d (sqrt(abar_t) (1 - abar_t))."""
    grad_clip: float = ranged(0.0, "[0, inf)")
    """Clamp each element of the SDS gradient to [-grad_clip, grad_clip]; 0 disables."""
    view_dependent: bool = True
    """Append front/side/back/overhead view to the prompt by camera."""
    half_precision: bool = True
    """Run the frozen model in fp16 on CUDA (always fp32 on CPU); read when guidance.dtype is auto."""
    dtype: str = choice("auto", ("auto", "fp32", "fp16", "bf16"))
    """Precision of the frozen UNet and VAE: auto (see half_precision), fp32, fp16 (CUDA only) or bf16."""
    channels_last: bool = False
    """Store the UNet and VAE convolution weights channels-last (NHWC), the layout tensor cores prefer."""
    attention: str = choice("sdpa", ("sdpa", "classic"))
    """Attention kernel of the UNet and VAE: sdpa (fused torch scaled_dot_product_attention) or classic."""
    compile: bool = False
    """Torch.compile the UNet: the first steps are slow while it compiles (needs a C++ compiler on CPU)."""
    vae_resolution: int = ranged(512, "[1, inf)")
    """Renders are resized to this before the VAE encodes them."""
    latent_render: bool = False
    """Latent-NeRF: the field renders SD's 4 latent channels (albedo only, no lighting) at render.width x height (64 for SD) and SDS skips the VAE; nerf / triplane with guidance.type=sds."""
    prior: PriorConfig = dc_field(default_factory=PriorConfig)
    clip: ClipConfig = dc_field(default_factory=ClipConfig)
    perp_neg: PerpNegConfig = dc_field(default_factory=PerpNegConfig)
    vsd: VSDConfig = dc_field(default_factory=VSDConfig)
    deepfloyd: DeepFloydConfig = dc_field(default_factory=DeepFloydConfig)


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
