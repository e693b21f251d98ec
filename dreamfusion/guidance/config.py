"""The guidance config section: which rule grades the renders, which model predicts the noise, and each one's keys.

Two keys choose the guidance, apart from each other:

    guidance.type         the rule: sds | perp_neg | vsd | clip | sdedit   (rules/: sds, perp_neg, vsd, clip, sdedit)
    guidance.model_type   the noise predictor: stable_diffusion | deepfloyd | prior | mvdream   (models/:
                          stable_diffusion, deepfloyd, prior, mvdream); clip brings its own model (CLIP) and reads
                          no model_type

Each rule owns its section and its checks (``check(self, root)``, called by the loader): Perp-Neg
``guidance.perp_neg.*``, VSD ``guidance.vsd.*``, CLIP ``guidance.clip.*``, SDEdit ``guidance.sdedit.*``; the SDS
keys (guidance_scale, t_*, weighting, grad_clip) sit on ``guidance`` itself, read by sds, perp_neg and vsd alike
(sdedit reads guidance_scale). Each model's loader owns its
section (``MODEL_KEYS``): ``guidance.stable_diffusion.*``, ``guidance.deepfloyd.*``, ``guidance.mvdream.*`` (with
camera.n_views, the group size its attention joins), ``guidance.prior.*`` (with
the camera ranges and background its image set is rendered with), and CLIP's model keys in ``guidance.clip.*``;
those keys' values, and nothing else, make the key of a loaded model (``guidance.build.guidance_model_key``).
(The guidance keys of earlier versions: dreamfusion/migrations.py.)
"""

from __future__ import annotations

from dataclasses import field as dc_field
from typing import Any, List, Optional

from ..errors import ConfigError
from ..settings import choice, get_key, ranged, section

__all__ = ["GuidanceConfig", "PriorConfig", "ClipConfig", "PerpNegConfig", "VSDConfig", "DeepFloydConfig",
           "StableDiffusionConfig", "MVDreamConfig", "SDEditConfig", "RULES", "MODEL_TYPES", "MODEL_KEYS", "LATENT_NEEDS_SD", "model_settings"]

RULES = ("sds", "perp_neg", "vsd", "clip", "sdedit")
"""guidance.type: the rule that turns renders into a loss."""
MODEL_TYPES = ("stable_diffusion", "deepfloyd", "prior", "mvdream")
DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")
"""guidance.model_type: the diffusion model that predicts the noise for sds, perp_neg and vsd."""

MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "stable_diffusion": ("guidance.stable_diffusion",),
    "deepfloyd": ("guidance.deepfloyd",),
    "mvdream": ("guidance.mvdream", "camera.n_views"),
    "prior": ("guidance.prior", "camera.elevation_range", "camera.azimuth_range", "camera.distance_range",
              "camera.fovy_range", "camera.n_views", "render.background"),
    "clip": ("guidance.clip.model", "guidance.clip.revision", "guidance.clip.half_precision"),
}
"""The keys each model's loader reads, a section name standing for all its keys; the loader is handed these and
nothing else (``model_settings``), and the loaded model's key is their values."""

LATENT_NEEDS_SD = "guidance.latent_render renders Stable Diffusion's latents: needs guidance.model_type=stable_diffusion"


class _Settings:
    """The keys one loader reads, by their dotted names (``s["guidance.clip.model"]``); reading any other key fails."""

    def __init__(self, values: dict[str, Any]):
        self._values = values

    def __getitem__(self, dotted: str) -> Any:
        if dotted not in self._values:
            raise KeyError(f"{dotted} is not among the keys this loader declares (MODEL_KEYS)")
        return self._values[dotted]

    def key(self) -> tuple:
        """The values as a hashable tuple (lists as tuples, a section as its keys' values)."""
        return tuple((k, _hashable(v)) for k, v in self._values.items())


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return (type(value).__name__,) + tuple((k, _hashable(getattr(value, k))) for k in value.__dataclass_fields__)
    return value


def model_settings(cfg: Any) -> _Settings:
    """The keys (guidance/config.py ``MODEL_KEYS``) the loader of ``cfg``'s model reads, with their values."""
    kind = cfg.guidance.model_kind
    return _Settings({key: get_key(cfg, key) for key in MODEL_KEYS[kind]})


def _rule_of(root) -> str:
    return root.guidance.type


@section
class PriorConfig:
    """guidance.prior: the embedded offline prior (guidance.model_type=prior)."""

    resolution: int = ranged(32, "[1, inf)")
    """Image resolution of its dataset and of the denoiser."""
    views: int = ranged(256, "[1, inf)")
    """Rendered views per prompt in its image set."""
    view_window: float = ranged(20.0, "(0, 180]")
    """Prompts of one plain object ('a red cube'): keep dataset views within this many degrees of the render camera (other prompts are conditioned on text only: guidance.view_dependent); with camera.n_views > 1 (the multi-view prior) every prompt's dataset groups, view for view."""

    def check(self, root) -> None:
        g, n = root.guidance, root.camera.n_views
        if g.model_kind != "prior" or n == 1 or g.type != "sds":  # perp_neg and vsd refuse n_views > 1 themselves
            return
        if self.views % n:
            raise ConfigError(f"the multi-view prior renders its views in groups of camera.n_views: guidance.prior.views "
                              f"({self.views}) must be a multiple of camera.n_views ({n})")
        if g.view_dependent:
            raise ConfigError("the multi-view prior (camera.n_views > 1) is conditioned on the cameras, not on view "
                              "words: set guidance.view_dependent=false")


@section
class ClipConfig:
    """guidance.clip: Dream Fields' CLIP guidance (guidance.type=clip) and the CLIP model it loads."""

    model: str = "openai/clip-vit-base-patch16"
    """Hub id or local folder of the CLIP model (ViT-B/16, the Dream Fields paper's guidance model)."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of the CLIP model."""
    half_precision: bool = True
    """Run CLIP in fp16 on CUDA (always fp32 on CPU)."""
    crops: int = ranged(4, "[1, inf)")
    """Augmented crops per step."""
    crop_fraction: float = ranged(0.8, "(0, 1]")
    """Fraction of the render side each random crop covers."""


@section
class PerpNegConfig:
    """guidance.perp_neg: Perp-Neg view-dependent negative prompts (guidance.type=perp_neg; guidance/rules/perp_neg.py)."""

    f_fs: List[float] = ranged([4.0, 0.5, -2.426], "(-inf, inf)")
    """(a, b, c) of the weight a exp(-b r) + c of the front negative between front and side (r = 1 front)."""
    f_sf: List[float] = ranged([4.0, 0.5, -2.426], "(-inf, inf)")
    """(a, b, c) of the weight of the side negative between front and side (at 1 - r)."""
    f_sb: List[float] = ranged([1.0, 0.5, -0.606], "(-inf, inf)")
    """(a, b, c) of the weight of the side negative between side and back (r = 1 side)."""
    f_fsb: List[float] = ranged([1.0, 0.5, 0.967], "(-inf, inf)")
    """(a, b, c) of the weight of the front negative between side and back."""

    def check(self, root) -> None:
        for key in ("f_fs", "f_sf", "f_sb", "f_fsb"):
            if len(getattr(self, key)) != 3:
                raise ConfigError(f"guidance.perp_neg.{key} must be three numbers (a, b, c) of a exp(-b r) + c, "
                                  f"got {list(getattr(self, key))}")
        if _rule_of(root) == "perp_neg" and root.camera.n_views > 1:
            raise ConfigError(f"guidance.type=perp_neg grades single views: camera.n_views must be 1, got "
                              f"{root.camera.n_views} (multi-view guidance is guidance.type=sds)")
        if _rule_of(root) == "perp_neg" and not root.guidance.view_dependent:
            raise ConfigError("guidance.type=perp_neg needs guidance.view_dependent=true (its prompts are per view)")


@section
class VSDConfig:
    """guidance.vsd: variational score distillation (guidance.type=vsd; ProlificDreamer; guidance/rules/vsd.py)."""

    lora_rank: int = ranged(4, "[1, inf)")
    """Rank of the LoRA on the UNet's attention projections (to_q, to_k, to_v, to_out)."""
    lr: float = ranged(0.001, "(0, inf)")
    """Adam learning rate of the LoRA and its camera embedding."""
    camera_dropout: float = ranged(0.1, "[0, 1]")
    """Probability of a zero camera condition in the LoRA's training loss (classifier-free training)."""

    def check(self, root) -> None:
        g = root.guidance
        if _rule_of(root) == "vsd" and root.camera.n_views > 1:
            raise ConfigError(f"guidance.type=vsd grades single views: camera.n_views must be 1, got "
                              f"{root.camera.n_views} (multi-view guidance is guidance.type=sds)")
        if _rule_of(root) == "vsd" and g.model_type != "stable_diffusion":
            raise ConfigError(f"guidance.type=vsd trains a LoRA of Stable Diffusion's UNet: needs "
                              f"guidance.model_type=stable_diffusion, got guidance.model_type={g.model_type} "
                              f"(or use guidance.type=sds or perp_neg with {g.model_type})")


@section
class SDEditConfig:
    """guidance.sdedit: an MSE to an SDEdit-refined copy of each render (guidance.type=sdedit; DreamGaussian's stage 2; guidance/rules/sdedit.py)."""

    strength: List[float] = ranged([0.8, 0.95], "[0, 1)")
    """(start, end) share of the DDIM steps skipped before the render is noised and denoised, moving linearly over the run (DreamGaussian main2.py: 0.8 -> 0.95, t ~ 0.18 -> 0.04 of 50 steps)."""
    steps: int = ranged(50, "[2, 1000]")
    """DDIM steps of the whole schedule; the refinement runs the last (1 - strength) share of them (DreamGaussian: 50)."""

    def check(self, root) -> None:
        if len(self.strength) != 2:
            raise ConfigError(f"guidance.sdedit.strength must be two numbers (start, end), got {list(self.strength)}")
        g = root.guidance
        if _rule_of(root) == "sdedit" and g.latent_render:
            raise ConfigError("guidance.type=sdedit compares decoded images with the render: set "
                              "guidance.latent_render=false")


@section
class DeepFloydConfig:
    """guidance.deepfloyd: DeepFloyd IF stage I, a pixel-space prior read by T5 (guidance.model_type=deepfloyd)."""

    model: str = "DeepFloyd/IF-I-XL-v1.0"
    """Hub id or local folder of IF stage I (the 4.3B-parameter XL UNet; IF-I-L-v1.0 / IF-I-M-v1.0 are smaller)."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of the model."""
    half_precision: bool = True
    """Run the frozen UNet in fp16 on CUDA (always fp32 on CPU); read when guidance.deepfloyd.dtype is auto."""
    dtype: str = choice("auto", DTYPE_CHOICES)
    """Precision of the frozen UNet: auto (see half_precision), fp32, fp16 (CUDA only) or bf16."""
    channels_last: bool = False
    """Store the UNet's convolution weights channels-last (NHWC), the layout tensor cores prefer."""
    compile: bool = False
    """Torch.compile the UNet: the first steps are slow while it compiles (needs a C++ compiler on CPU)."""
    max_length: int = ranged(77, "[1, inf)")
    """T5 tokens per text, padded or truncated; IF was trained with 77 (diffusers' IFPipeline)."""
    variant: Optional[str] = None
    """Weight files to load: null = the full-precision ones; fp16 = IF's *.fp16.safetensors (half the download)."""


@section
class StableDiffusionConfig:
    """guidance.stable_diffusion: the Stable Diffusion model and its speed switches (model_type=stable_diffusion)."""

    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    """Hub id or local folder of the Stable Diffusion model."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of the model."""
    half_precision: bool = True
    """Run the frozen model in fp16 on CUDA (always fp32 on CPU); read when guidance.stable_diffusion.dtype is auto."""
    dtype: str = choice("auto", DTYPE_CHOICES)
    """Precision of the frozen UNet and VAE: auto (see half_precision), fp32, fp16 (CUDA only) or bf16."""
    channels_last: bool = False
    """Store the UNet and VAE convolution weights channels-last (NHWC), the layout tensor cores prefer."""
    attention: str = choice("sdpa", ("sdpa", "classic"))
    """Attention kernel of the UNet and VAE: sdpa (fused torch scaled_dot_product_attention) or classic."""
    compile: bool = False
    """Torch.compile the UNet: the first steps are slow while it compiles (needs a C++ compiler on CPU)."""
    vae_resolution: int = ranged(512, "[1, inf)")
    """Renders are resized to this before the VAE encodes them."""


@section
class MVDreamConfig:
    """guidance.mvdream: MVDream, a multi-view Stable Diffusion 2.1 (guidance.model_type=mvdream; models/mvdream.py)."""

    model: str = "MVDream/MVDream"
    """Hub id or local folder: the original checkpoint (MVDream/MVDream) or the diffusers copy (ashawkey/mvdream-sd2.1-diffusers)."""
    checkpoint: str = "sd-v2.1-base-4view.pt"
    """File name of the original checkpoint inside guidance.mvdream.model (bytedance/MVDream model_zoo.py's)."""
    base_model: str = "stabilityai/stable-diffusion-2-1-base"
    """Hub id or local folder of Stable Diffusion 2.1-base (diffusers layout): text encoder, tokenizer, VAE, schedule and UNet shape of the original checkpoint."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of guidance.mvdream.model."""
    half_precision: bool = True
    """Run the frozen model in fp16 on CUDA (always fp32 on CPU); read when guidance.mvdream.dtype is auto."""
    dtype: str = choice("auto", DTYPE_CHOICES)
    """Precision of the frozen UNet and VAE: auto (see half_precision), fp32, fp16 (CUDA only) or bf16."""
    channels_last: bool = False
    """Store the UNet and VAE convolution weights channels-last (NHWC), the layout tensor cores prefer."""
    attention: str = choice("sdpa", ("sdpa", "classic"))
    """Attention kernel of the UNet and VAE: sdpa (fused torch scaled_dot_product_attention) or classic."""
    compile: bool = False
    """Torch.compile the UNet: the first steps are slow while it compiles (needs a C++ compiler on CPU)."""
    vae_resolution: int = ranged(256, "[1, inf)")
    """Renders are resized to this before the VAE encodes them (MVDream's 256: threestudio-mvdream image_size)."""

    def check(self, root) -> None:
        g = root.guidance
        if g.model_kind == "mvdream" and g.type == "perp_neg":
            raise ConfigError("guidance.type=perp_neg reads no cameras, which MVDream's UNet needs: "
                              "use guidance.type=sds with guidance.model_type=mvdream")


@section
class GuidanceConfig:
    """guidance: the rule that grades the renders (type), the model that predicts the noise (model_type), the SDS settings."""

    type: str = choice("sds", RULES)
    """The rule: sds (score distillation), perp_neg (SDS with Perp-Neg view negatives), vsd (ProlificDreamer's variational score distillation, Stable Diffusion only), clip (Dream Fields' CLIP similarity, its own model) or sdedit (an MSE to an SDEdit-refined copy of each render: DreamGaussian's texture stage)."""
    model_type: str = choice("stable_diffusion", MODEL_TYPES)
    """The noise predictor of sds, perp_neg and vsd: stable_diffusion, deepfloyd (DeepFloyd IF stage I, pixel space), prior (the embedded offline prior) or mvdream (multi-view, groups of camera.n_views; sds only); clip does not read it."""
    guidance_scale: float = ranged(100.0, "[0, inf)")
    """Classifier-free guidance scale s in eps_u + s (eps_c - eps_u) (the DreamFusion paper, diffusers); threestudio's s' in eps_c + s' (eps_c - eps_u) is s - 1, so its 100 is 101 here."""
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
    t_min_start: Optional[float] = ranged(None, "(0, 1)")
    """Smallest diffusion time at step 0, moving linearly to t_min (threestudio-mvdream: 0.98); null keeps t_min throughout."""
    t_anneal_fraction: float = ranged(1.0, "(0, 1]")
    """Fraction of the steps after which t_max and t_min_start have reached t_max_end and t_min (threestudio-mvdream: 8000 of 10000 steps, 0.8)."""
    weighting: str = choice("sds", ("sds", "uniform", "fantasia3d"))
    """W(t): sds (1 - abar_t), uniform, or fantasia3d (sqrt(abar_t) (1 - abar_t))."""
    recon_loss: bool = False
    """SDS in MVDream's x0-reconstruction form: grad = x0 - x0_hat of the guided prediction (guidance/rules/sds.py; guidance.type=sds)."""
    cfg_rescale: float = ranged(0.0, "[0, 1]")
    """With recon_loss: blend weight r of x0_hat rescaled to the std of the unguided x0 over each view group (threestudio-mvdream's recon_std_rescale, 0.5)."""
    grad_clip: float = ranged(0.0, "[0, inf)")
    """Clamp each element of the SDS gradient to [-grad_clip, grad_clip]; 0 disables."""
    view_dependent: bool = True
    """Append front/side/back/overhead view to the prompt by camera."""
    latent_render: bool = False
    """Latent-NeRF: the field renders SD's 4 latent channels (albedo only, no lighting) at render.width x height (64 for SD) and SDS skips the VAE; nerf / triplane with guidance.model_type=stable_diffusion."""
    prior: PriorConfig = dc_field(default_factory=PriorConfig)
    clip: ClipConfig = dc_field(default_factory=ClipConfig)
    perp_neg: PerpNegConfig = dc_field(default_factory=PerpNegConfig)
    vsd: VSDConfig = dc_field(default_factory=VSDConfig)
    sdedit: SDEditConfig = dc_field(default_factory=SDEditConfig)
    deepfloyd: DeepFloydConfig = dc_field(default_factory=DeepFloydConfig)
    stable_diffusion: StableDiffusionConfig = dc_field(default_factory=StableDiffusionConfig)
    mvdream: MVDreamConfig = dc_field(default_factory=MVDreamConfig)

    @property
    def model_kind(self) -> str:
        """The model this guidance loads: ``model_type``, or clip for the CLIP rule (its own model)."""
        return "clip" if self.type == "clip" else self.model_type

    def check(self, root) -> None:
        if self.recon_loss and self.type != "sds":
            raise ConfigError(f"guidance.recon_loss is the x0 form of plain SDS: needs guidance.type=sds, got "
                              f"guidance.type={self.type} (or set guidance.recon_loss=false)")
        if self.t_min > self.t_max:
            raise ConfigError(f"need 0 < guidance.t_min <= guidance.t_max < 1, got {self.t_min} and {self.t_max}")
        if self.t_min_start is not None and self.t_min_start > self.t_max:
            raise ConfigError(f"need guidance.t_min_start <= guidance.t_max, got {self.t_min_start} and {self.t_max}")
        if self.latent_render and self.model_kind != "stable_diffusion":
            got = "guidance.type=clip" if self.type == "clip" else f"guidance.model_type={self.model_type}"
            raise ConfigError(f"{LATENT_NEEDS_SD}, got {got}: set guidance.latent_render=false")
