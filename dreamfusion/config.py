"""Typed run configuration.

One dataclass per component; the string literal under each field is its documentation and the text
``--help`` prints. YAML files in ``configs/`` only set these fields; an unknown key or a wrong type is
a one-line :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import ast
import difflib
import inspect
from dataclasses import asdict, dataclass, fields, is_dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "dreamfusion"


@dataclass
class FieldConfig:
    type: str = "nerf"
    """The 3D representation: nerf (hash-grid NeRF), triplane, or gaussian."""
    bound: float = 1.0
    """Half side of the scene cube [-bound, bound]^3 that holds the object."""
    backend: str = "auto"
    """Hash-grid implementation: auto (tinycudann on CUDA when installed), torch, or tcnn."""
    n_levels: int = 16
    """Hash grid: number of resolution levels."""
    n_features_per_level: int = 2
    """Hash grid: features stored per level."""
    log2_hashmap_size: int = 19
    """Hash grid: log2 of the table size per level."""
    base_resolution: int = 16
    """Hash grid: resolution of the coarsest level."""
    per_level_scale: float = 1.447
    """Hash grid: growth factor of the resolution from one level to the next."""
    hidden_dim: int = 64
    """Width of the MLP that decodes features to density and albedo."""
    n_hidden_layers: int = 1
    """Hidden layers of that MLP."""
    density_activation: str = "softplus"
    """Density activation: softplus or exp (truncated exponential)."""
    blob_density: float = 10.0
    """Peak of the density bias added at init (0 disables it)."""
    blob_radius: float = 0.5
    """Radius of the density blob: Magic3D blob_density * (1 - |x| / blob_radius)."""
    triplane_resolution: int = 128
    """Tri-plane: side N of each N x N feature plane."""
    triplane_channels: int = 16
    """Tri-plane: feature channels per plane."""
    triplane_aggregation: str = "sum"
    """Tri-plane: how the three plane features combine: sum (EG3D), product or concat."""
    gaussian_count: int = 3000
    """Gaussians: number of Gaussians at init (DreamGaussian: 5000)."""
    gaussian_init_radius: float = 0.8
    """Gaussians: radius of the ball the means are drawn in."""
    gaussian_init_opacity: float = 0.1
    """Gaussians: opacity at init."""
    gaussian_sh_degree: int = 0
    """Gaussians: spherical-harmonics degree of the colour (0 = view independent)."""
    gaussian_init_scale: float = 0.0
    """Gaussians: initial scale (standard deviation); 0 = mean distance to the 3 nearest neighbours."""
    gaussian_rasterizer: str = "auto"
    """Gaussians: rasterizer: auto (gsplat on CUDA when installed), torch, or gsplat."""
    gaussian_densify_every: int = 50
    """Gaussians: clone / split / prune every N steps (0 disables)."""
    gaussian_densify_start: int = 0
    """Gaussians: first step at which densification may run."""
    gaussian_densify_stop: int = 3000
    """Gaussians: last step at which densification may run."""
    gaussian_densify_grad_threshold: float = 0.01
    """Gaussians: mean view-space (NDC) gradient norm of a mean above which it is cloned or split."""
    gaussian_dense_scale: float = 0.005
    """Gaussians: largest scale up to which a Gaussian is cloned; larger ones are split in two."""
    gaussian_prune_opacity: float = 0.05
    """Gaussians: prune Gaussians whose opacity is below this."""
    gaussian_prune_scale: float = 0.1
    """Gaussians: prune Gaussians whose largest scale exceeds this (0 disables)."""
    gaussian_max_count: int = 8000
    """Gaussians: cap on the number of Gaussians densification may reach (0 = no cap)."""


@dataclass
class CameraConfig:
    batch_size: int = 1
    """Views rendered per step."""
    elevation_range: List[float] = dc_field(default_factory=lambda: [-10.0, 45.0])
    """Training elevation range in degrees (min, max)."""
    azimuth_range: List[float] = dc_field(default_factory=lambda: [-180.0, 180.0])
    """Training azimuth range in degrees; 0 is the front (+z)."""
    distance_range: List[float] = dc_field(default_factory=lambda: [1.5, 2.0])
    """Training camera distance range from the origin."""
    fovy_range: List[float] = dc_field(default_factory=lambda: [40.0, 70.0])
    """Training vertical field of view range in degrees."""
    eval_elevation: float = 15.0
    """Elevation of the orbit video and previews, degrees."""
    eval_distance: float = 1.75
    """Distance of the orbit video and previews."""
    eval_fovy: float = 55.0
    """Field of view of the orbit video and previews, degrees."""


@dataclass
class RenderConfig:
    width: int = 64
    """Training render width in pixels."""
    height: int = 64
    """Training render height in pixels."""
    progressive_sizes: List[int] = dc_field(default_factory=list)
    """Progressive resolution: square render sides used in turn, e.g. [128, 256, 512] (DreamGaussian); empty keeps width x height."""
    progressive_milestones: List[int] = dc_field(default_factory=list)
    """Steps at which training moves on to the next of progressive_sizes (one fewer entry than it, increasing)."""
    n_samples: int = 128
    """Stratified samples per ray inside the scene cube."""
    perturb: bool = True
    """Jitter sample positions during training."""
    sampler: str = "auto"
    """Ray sampler: auto (nerfacc occupancy grid on CUDA when installed), torch, or nerfacc."""
    background: str = "learned"
    """Background: learned (MLP of view direction), random (solid colour per view), white, black, gray, white_or_black (either, per view), or augment (Dream Fields random textures)."""
    albedo_warmup_steps: int = 1000
    """Steps that render albedo only before random shading starts (DreamFusion)."""
    albedo_prob: float = 0.2
    """After warm-up: probability of albedo shading."""
    textureless_prob: float = 0.3
    """After warm-up: probability of textureless (white albedo) Lambertian shading; the rest is Lambertian."""
    ambient: float = 0.1
    """Ambient light fraction in Lambertian shading."""


@dataclass
class GuidanceConfig:
    type: str = "sds"
    """Guidance: sds (Stable Diffusion), prior (embedded offline prior) or clip (Dream Fields)."""
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    """Hub id or local folder of the guidance model."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of the model."""
    guidance_scale: float = 100.0
    """Classifier-free guidance scale s in eps_u + s (eps_c - eps_u)."""
    t_min: float = 0.02
    """Smallest diffusion time, as a fraction of the 1000 training steps."""
    t_max: float = 0.98
    """Largest diffusion time at the start of training."""
    t_anneal: str = "none"
    """How t_max moves toward t_max_end: none, linear or sqrt."""
    t_max_end: float = 0.5
    """t_max at the end of training when t_anneal is not none."""
    weighting: str = "sds"
    """w(t): sds (1 - abar_t), uniform, or fantasia3d (sqrt(abar_t) (1 - abar_t))."""
    grad_clip: float = 0.0
    """Clamp each element of the SDS gradient to [-grad_clip, grad_clip]; 0 disables."""
    view_dependent: bool = True
    """Append front/side/back/overhead view to the prompt by camera."""
    half_precision: bool = True
    """Run the frozen model in fp16 on CUDA (always fp32 on CPU); read when guidance.dtype is auto."""
    dtype: str = "auto"
    """Precision of the frozen UNet and VAE: auto (see half_precision), fp32, fp16 (CUDA only) or bf16."""
    channels_last: bool = False
    """Store the UNet and VAE convolution weights channels-last (NHWC), the layout tensor cores prefer."""
    attention: str = "sdpa"
    """Attention kernel of the UNet and VAE: sdpa (fused torch scaled_dot_product_attention) or classic."""
    compile: bool = False
    """torch.compile the UNet: the first steps are slow while it compiles (needs a C++ compiler on CPU)."""
    vae_resolution: int = 512
    """Renders are resized to this before the VAE encodes them."""
    latent_render: bool = False
    """Latent-NeRF: the field renders SD's 4 latent channels (albedo only, no lighting) at render.width x height (64 for SD) and SDS skips the VAE; nerf / triplane with guidance.type=sds."""
    prior_resolution: int = 32
    """Embedded prior: image resolution of its dataset and of the denoiser."""
    prior_views: int = 256
    """Embedded prior: rendered views per prompt in its image set."""
    prior_view_window: float = 20.0
    """Embedded prior: keep dataset views within this many degrees of the render camera."""
    clip_crops: int = 4
    """CLIP: augmented crops per step."""
    clip_crop_fraction: float = 0.8
    """CLIP: fraction of the render side each random crop covers."""


@dataclass
class OptimConfig:
    encoding_lr: float = 0.01
    """Adam learning rate of the grid / plane / Gaussian parameters."""
    network_lr: float = 0.001
    """Adam learning rate of the MLPs."""
    triplane_lr: float = 0.02
    """Adam learning rate of the tri-plane feature planes."""
    background_lr: float = 0.001
    """Adam learning rate of the learned background."""
    gaussian_position_lr: float = 0.005
    """Gaussians: Adam learning rate of the means at step 0."""
    gaussian_position_lr_final: float = 0.0002
    """Gaussians: learning rate of the means after gaussian_position_lr_steps (log-linear decay)."""
    gaussian_position_lr_steps: int = 600
    """Gaussians: steps over which the means' learning rate decays."""
    gaussian_color_lr: float = 0.01
    """Gaussians: learning rate of the SH colour coefficients (higher degrees at 1/20 of it)."""
    gaussian_opacity_lr: float = 0.05
    """Gaussians: learning rate of the opacity logits."""
    gaussian_scale_lr: float = 0.005
    """Gaussians: learning rate of the log-scales."""
    gaussian_rotation_lr: float = 0.005
    """Gaussians: learning rate of the quaternions."""
    lr_warmup_steps: int = 0
    """Linear learning-rate warm-up over this many steps, on top of every other schedule; 0 disables (Dream Fields: 1500)."""
    lr_warmup_start: float = 0.1
    """Fraction of each learning rate at step 0 of the warm-up (Dream Fields: 1e-5 -> 1e-4 is 0.1)."""
    betas: List[float] = dc_field(default_factory=lambda: [0.9, 0.99])
    """Adam betas."""
    eps: float = 1e-15
    """Adam epsilon."""


@dataclass
class LossConfig:
    sds: float = 1.0
    """Weight of the score distillation term."""
    clip: float = 1.0
    """Weight of the CLIP similarity term."""
    transmittance: float = 0.0
    """Weight of the Dream Fields transmittance term (configs/dreamfields.yaml: 0.5)."""
    orientation: float = 0.0
    """Weight of the orientation loss (normals facing away from the camera)."""
    sparsity: float = 0.0
    """Weight of the opacity sparsity loss mean(sqrt(opacity^2 + 0.01))."""
    opacity_entropy: float = 0.0
    """Weight of the binary entropy of the opacity."""
    tv: float = 0.0
    """Weight of the total-variation regulariser of tri-planes."""


@dataclass
class ExportConfig:
    resolution: int = 128
    """Marching-cubes grid resolution per side."""
    threshold: Optional[float] = None
    """Density level of the surface; null = automatic, where the optical depth seen from outside reaches auto_optical_depth."""
    auto_optical_depth: Optional[float] = None
    """Automatic surface: optical depth (min over the six axis directions) at which the mesh surface lies; null = the field's own (0.3 for nerf / triplane, 0.15 for gaussian)."""
    min_component_ratio: float = 0.05
    """Drop mesh pieces with fewer faces than this fraction of the largest piece."""
    decimate_faces: int = 0
    """Target face count for decimation; 0 keeps every face."""
    texture: str = "uv"
    """Colour: uv (xatlas unwrap + baked albedo texture) or vertex (vertex colours)."""
    texture_size: int = 1024
    """Side of the baked albedo texture in pixels."""
    video_frames: int = 120
    """Frames of the orbit video."""
    video_fps: int = 30
    """Frames per second of the orbit video."""
    video_resolution: int = 256
    """Side of each orbit video panel in pixels."""
    video_panels: List[str] = dc_field(default_factory=lambda: ["rgb"])
    """Panels side by side in the orbit video: rgb, normal, depth."""


@dataclass
class Config:
    prompt: str = ""
    """The text prompt."""
    negative_prompt: str = ""
    """Text to steer away from; replaces the empty prompt in classifier-free guidance."""
    seed: int = 0
    """Random seed of cameras, noise and initialisation."""
    steps: int = 10000
    """Total optimization steps (with resume: the step to continue up to)."""
    output_dir: str = "outputs"
    """Folder that receives the run folder."""
    device: str = "auto"
    """auto, cpu or cuda."""
    resume: Optional[str] = None
    """A run folder to continue from its last checkpoint."""
    checkpoint_every: int = 500
    """Write the checkpoint every N steps (and at the end or on interrupt)."""
    preview_every: int = 500
    """Write a preview image every N steps; 0 disables."""
    log_every: int = 10
    """Append a line to metrics.jsonl every N steps."""
    field: FieldConfig = dc_field(default_factory=FieldConfig)
    camera: CameraConfig = dc_field(default_factory=CameraConfig)
    render: RenderConfig = dc_field(default_factory=RenderConfig)
    guidance: GuidanceConfig = dc_field(default_factory=GuidanceConfig)
    optim: OptimConfig = dc_field(default_factory=OptimConfig)
    loss: LossConfig = dc_field(default_factory=LossConfig)
    export: ExportConfig = dc_field(default_factory=ExportConfig)


LATENT_NEEDS_VOLUME = ("guidance.latent_render needs field.type=nerf or triplane (Gaussians carry RGB colours): "
                       "set guidance.latent_render=false")

# Allowed values of the string-valued choice keys; checked after merging.
CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "field.type": ("nerf", "triplane", "gaussian"),
    "field.backend": ("auto", "torch", "tcnn"),
    "field.density_activation": ("softplus", "exp"),
    "field.triplane_aggregation": ("sum", "product", "concat"),
    "field.gaussian_rasterizer": ("auto", "torch", "gsplat"),
    "render.sampler": ("auto", "torch", "nerfacc"),
    "render.background": ("learned", "random", "white", "black", "gray", "white_or_black", "augment"),
    "guidance.type": ("sds", "prior", "clip"),
    "guidance.t_anneal": ("none", "linear", "sqrt"),
    "guidance.weighting": ("sds", "uniform", "fantasia3d"),
    "guidance.dtype": ("auto", "fp32", "fp16", "bf16"),
    "guidance.attention": ("sdpa", "classic"),
    "export.texture": ("uv", "vertex"),
}


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right under each field."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = nxt.value.value
    return docs


def all_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str, object]]:
    """Every dotted key with its doc and default: [(key, doc, default)]."""
    out = []
    docs = field_docs(cls)
    inst = cls()
    for f in fields(cls):
        value = getattr(inst, f.name)
        if is_dataclass(value):
            out.extend(all_keys(type(value), prefix + f.name + "."))
        else:
            out.append((prefix + f.name, docs.get(f.name, ""), value))
    return out


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A config NAME (configs/NAME.yaml) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(
        f"config '{name_or_path}' not found: use one of {', '.join(available_configs())} "
        f"or a path to a .yaml file")


def _unknown_key_message(key: str) -> str:
    keys = [k for k, _, _ in all_keys()]
    keys += sorted({k.split(".")[0] for k in keys if "." in k})  # section names: field, guidance, ...
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close:  # try matching the last component against every key's last component
        leaf = key.split(".")[-1]
        close = [k for k in keys if difflib.get_close_matches(leaf, [k.split(".")[-1]], cutoff=0.75)][:3]
    hint = f"; did you mean {' or '.join(close)}?" if close else "; see --help for the keys"
    return f"unknown config key '{key}'{hint}"


def _omegaconf_error(exc: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    msg = str(exc).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        return ConfigError(_unknown_key_message(key) + f" (in {origin})")
    if key:
        return ConfigError(f"bad value for '{key}' (in {origin}): {msg}")
    return ConfigError(f"bad config (in {origin}): {msg}")


def _load_yaml(path: Path) -> DictConfig:
    """A YAML mapping, or a one-line ConfigError (syntax error, unreadable, not a mapping)."""
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml syntax errors, unreadable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot parse {path}: {first}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"cannot use {path}: its top level must be a mapping of keys (key: value), not a list")
    return loaded


def _merge(base: DictConfig, other, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise _omegaconf_error(exc, origin) from None


def _string_keys(cls: type = Config, prefix: str = "") -> set[str]:
    """Dotted keys whose type is str or Optional[str]: their override values are taken verbatim."""
    out = set()
    for f in fields(cls):
        default = getattr(cls(), f.name)
        if is_dataclass(default):
            out |= _string_keys(type(default), prefix + f.name + ".")
        elif f.type in ("str", "Optional[str]", str, Optional[str]):
            out.add(prefix + f.name)
    return out


def _escape(value: str) -> str:
    """OmegaConf would resolve '${...}' in a value; text from users is never an interpolation."""
    return value.replace("${", "\\${")


def _overrides_config(overrides: list[str]) -> DictConfig:
    """key=value items -> a config. String keys keep their text exactly (a prompt such as 'yes', '007'
    or 'a sign that says: hello' stays as typed; one pair of quotes around the whole value is removed);
    other values are read as YAML (numbers, lists, null)."""
    strings = _string_keys()
    verbatim, parsed = {}, []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"cannot read argument '{item}': overrides are key=value, e.g. prompt=\"a red cube\"")
        key, value = item.split("=", 1)
        if key in strings:
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]  # prompt='a cat' written for a launcher that passes the quotes on
            node = verbatim
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = _escape(value)
        else:
            parsed.append(item)
    try:
        return OmegaConf.merge(OmegaConf.create(verbatim), OmegaConf.from_dotlist(parsed))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot read overrides: {str(exc).splitlines()[0]}") from None


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None,
                base: DictConfig | None = None) -> Config:
    """Defaults <- YAML file <- key=value overrides, checked against the dataclasses."""
    schema = OmegaConf.structured(Config) if base is None else base
    cfg = schema
    if name_or_path is not None or base is None:
        path = resolve_config_path(name_or_path or DEFAULT_CONFIG)
        cfg = _merge(cfg, _load_yaml(path), str(path))
    if overrides:
        cfg = _merge(cfg, _overrides_config(overrides), "command line")
    obj: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(obj)
    return obj


def _get(cfg: Config, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def validate(cfg: Config) -> None:
    """Choice keys hold an allowed value; counts and ranges make sense."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"bad value '{value}' for '{key}': choose one of {', '.join(allowed)}")
    if cfg.steps <= 0:
        raise ConfigError(f"steps must be a positive integer, got {cfg.steps}")
    for key in ("checkpoint_every", "log_every", "render.width", "render.height", "render.n_samples",
                "camera.batch_size", "export.resolution", "export.video_frames", "export.video_fps"):
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {_get(cfg, key)}")
    for key in ("camera.elevation_range", "camera.azimuth_range", "camera.distance_range", "camera.fovy_range"):
        value = _get(cfg, key)
        if len(value) != 2 or value[0] > value[1]:
            raise ConfigError(f"{key} must be [min, max] with min <= max, got {list(value)}")
    for key in ("field.bound", "render.width", "export.texture_size", "export.video_resolution",
                "guidance.vae_resolution", "guidance.prior_resolution", "guidance.prior_views"):
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {_get(cfg, key)}")
    sizes, milestones = list(cfg.render.progressive_sizes), list(cfg.render.progressive_milestones)
    if sizes or milestones:
        if len(milestones) != len(sizes) - 1:
            raise ConfigError(f"render.progressive_milestones needs one entry fewer than render.progressive_sizes "
                              f"(got {len(milestones)} and {len(sizes)}), e.g. sizes [128, 256] milestones [300]")
        if any(s <= 0 for s in sizes):
            raise ConfigError(f"render.progressive_sizes must be positive, got {sizes}")
        if any(b <= a for a, b in zip([0] + milestones, milestones)):
            raise ConfigError(f"render.progressive_milestones must be positive and increasing, got {milestones}")
    if cfg.preview_every < 0:
        raise ConfigError(f"preview_every must be >= 0 (0 disables previews), got {cfg.preview_every}")
    for key in ("render.albedo_prob", "render.textureless_prob", "render.ambient"):
        if not 0.0 <= _get(cfg, key) <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {_get(cfg, key)}")
    if cfg.render.albedo_prob + cfg.render.textureless_prob > 1.0:
        raise ConfigError("render.albedo_prob + render.textureless_prob must be <= 1")
    if cfg.optim.lr_warmup_steps < 0 or not 0.0 < cfg.optim.lr_warmup_start <= 1.0:
        raise ConfigError(f"need optim.lr_warmup_steps >= 0 and 0 < optim.lr_warmup_start <= 1, got "
                          f"{cfg.optim.lr_warmup_steps} and {cfg.optim.lr_warmup_start}")
    betas = cfg.optim.betas
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"optim.betas must be two values in [0, 1), got {list(betas)}")
    if cfg.camera.distance_range[0] <= 0:
        raise ConfigError(f"camera.distance_range must be positive, got {list(cfg.camera.distance_range)}")
    if not (0.0 < cfg.camera.fovy_range[0] and cfg.camera.fovy_range[1] < 180.0):
        raise ConfigError(f"camera.fovy_range must lie in (0, 180) degrees, got {list(cfg.camera.fovy_range)}")
    g = cfg.guidance
    if not 0.0 < g.t_min <= g.t_max < 1.0:
        raise ConfigError(f"need 0 < guidance.t_min <= guidance.t_max < 1, got {g.t_min} and {g.t_max}")
    if g.latent_render and g.type != "sds":
        raise ConfigError(f"guidance.latent_render needs guidance.type=sds (Stable Diffusion latents), got "
                          f"guidance.type={g.type}: set guidance.latent_render=false")
    if g.latent_render and cfg.field.type == "gaussian":
        raise ConfigError(LATENT_NEEDS_VOLUME)
    if cfg.export.auto_optical_depth is not None and cfg.export.auto_optical_depth <= 0:
        raise ConfigError(f"export.auto_optical_depth must be positive (or null for the field's own), "
                          f"got {cfg.export.auto_optical_depth}")
    for panel in cfg.export.video_panels:
        if panel not in ("rgb", "normal", "depth"):
            raise ConfigError(f"bad export.video_panels entry '{panel}': choose from rgb, normal, depth")


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML; text values are escaped so '${' reads back as typed."""
    def escaped(node):
        if isinstance(node, dict):
            return {k: escaped(v) for k, v in node.items()}
        if isinstance(node, list):
            return [escaped(v) for v in node]
        return _escape(node) if isinstance(node, str) else node
    return OmegaConf.to_yaml(OmegaConf.create(escaped(asdict(cfg))))


def load_run_config(path: Path, overrides: list[str] | None = None) -> Config:
    """The resolved config.yaml of a run folder, with optional overrides on top."""
    schema = OmegaConf.structured(Config)
    cfg = _merge(schema, _load_yaml(Path(path)), str(path))
    return load_config(None, overrides, base=cfg)
