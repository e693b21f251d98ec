"""MVDream as a frozen multi-view noise predictor for SDS (guidance.model_type=mvdream; see base.NoisePredictor).

MVDream (Shi et al. 2023, arXiv 2308.16512) denoises ``n_views`` views of one object at once: Stable Diffusion
2.1-base's UNet with a camera embedding and self-attention over the tokens of all the views (mvdream_unet.py). The
SDS rule grades each group of ``camera.n_views`` consecutive renders at one t (guidance/rules/sds.py); MVDream was
trained on groups of 4 views 90 degrees apart (bytedance/MVDream README: "sd-v2.1-base-4view ... 4x256x256").

``guidance.mvdream.model`` is a hub id or a local folder in either published layout, told apart by what it holds:

    original    ``sd-v2.1-base-4view.pt`` (guidance.mvdream.checkpoint): MVDream/MVDream on the hub, the file
                bytedance/MVDream's ``mvdream/model_zoo.py`` downloads (``PRETRAINED_MODELS``). It is a whole
                LatentDiffusionInterface state dict; only its UNet (``model.diffusion_model.*``) is read. Its text
                encoder is OpenCLIP ViT-H-14 (laion2b_s32b_b79k), penultimate layer (``configs/sd-v2-base.yaml``
                cond_stage_config, ``ldm/modules/encoders/modules.py`` FrozenOpenCLIPEmbedder), frozen: Stable
                Diffusion 2.1's own text encoder, which diffusers ships as a 23-layer CLIPTextModel. So the
                tokenizer, text encoder, VAE, noise schedule and the UNet's shape (unet/config.json, no weights)
                come from ``guidance.mvdream.base_model``, stabilityai/stable-diffusion-2-1-base in diffusers'
                layout -- as ashawkey's conversion takes tokenizer and text encoder from SD 2.1
                (``convert_mvdream_to_diffusers.py``). MVDream's schedule is SD's: linear_start 0.00085,
                linear_end 0.012, 1000 steps, ldm's "linear" = linspace of square roots (``ldm/modules/
                diffusionmodules/util.py`` make_beta_schedule), diffusers' scaled_linear; eps-prediction.
                The checkpoint's own VAE (``first_stage_model.*``) is not read: taken to be SD 2.1's, which
                ldm's latent-diffusion training keeps frozen (assumed, not compared with the file).
    diffusers   ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``: ashawkey/mvdream-sd2.1-diffusers (its
                model_index.json names the unet ``["mv_unet", "MultiViewUNetModel"]``, its own class, whose
                config.json holds MVDream's arguments, camera_dim 16, and whose tensors keep the original names
                without the ``model.diffusion_model.`` prefix; VAE and scheduler converted, text encoder and
                tokenizer from SD 2.1). Its mv_unet.py is never run: the tensors are renamed into diffusers'
                UNet2DConditionModel (mvdream_unet.py).

A hub id is fetched once (only the files above) and read as a local folder; a local folder never touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import MVDreamConfig
from ...errors import ModelNotFoundError
from .fastpaths import apply_fast_paths, resolve_dtype
from .hub import first_line, hub_kwargs, load_parts, looks_like_path, resolve_model
from .mvdream_unet import diffusers_unet_config, join_views, mvdream_cameras, original_to_diffusers
from .stable_diffusion import StableDiffusion

__all__ = ["MVDream", "DEFAULT_MODEL"]

DEFAULT_MODEL = MVDreamConfig.model
PARTS = ("tokenizer", "text_encoder", "vae", "scheduler")
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _how_to_get(s: MVDreamConfig) -> str:
    return (f"download MVDream with `hf download {DEFAULT_MODEL} {s.checkpoint} --local-dir <folder>` (and "
            f"Stable Diffusion 2.1-base for guidance.mvdream.base_model) or the diffusers copy with `hf download "
            f"ashawkey/mvdream-sd2.1-diffusers --local-dir <folder>`, and set guidance.mvdream.model=/path/to/folder")


def _model_folder(s: MVDreamConfig, how: str) -> Path:
    """guidance.mvdream.model as a local folder: the folder itself, or the hub repository's files of either layout
    fetched into the hub cache (from the cache alone when the hub is unreachable)."""
    path = Path(s.model).expanduser()
    if path.is_dir():
        return path.resolve()
    if looks_like_path(s.model):
        raise ModelNotFoundError(f"MVDream model '{s.model}' is not a folder: {how}")
    kwargs = hub_kwargs(s.model, s.revision, "MVDream model", how)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(s.model, revision=s.revision, local_files_only=kwargs["local_files_only"],
                                      allow_patterns=[s.checkpoint, *(f"{p}/*" for p in ("unet",) + PARTS)]))
    except Exception as exc:  # huggingface_hub's errors: offline and not cached, HTTP, disk
        raise ModelNotFoundError(f"cannot fetch MVDream model '{s.model}' from the hub: {first_line(exc)}; "
                                 f"{how}") from exc


def _read_state(path: Path) -> dict:
    """The tensors of a .safetensors file, or of a torch-saved state dict (weights only: no code is run)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download, a pickle with code in it, not a checkpoint at all
        raise ModelNotFoundError(f"cannot read MVDream weights '{path}': {first_line(exc)}") from exc
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ModelNotFoundError(f"MVDream weights '{path}' hold no state dict (got {type(state).__name__})")
    return state


def _diffusers_layout(folder: Path, how: str) -> tuple[dict, dict, str, dict]:
    """(UNet2DConditionModel config, its tensors, where the other parts load from, from_pretrained kwargs)."""
    resolve_model(str(folder), ("unet",) + PARTS, "MVDream model", how)
    try:
        mv_config = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read unet/config.json of MVDream folder '{folder}': {first_line(exc)}; "
                                 f"{how}") from None
    weights = next((folder / "unet" / w for w in WEIGHTS if (folder / "unet" / w).is_file()), None)
    if weights is None:
        raise ModelNotFoundError(f"MVDream folder '{folder}' has no unet/{WEIGHTS[0]}: {how}")
    config = diffusers_unet_config(mv_config)
    return config, original_to_diffusers(_read_state(weights), config, prefix=""), str(folder), {}


def _original_layout(s: MVDreamConfig, checkpoint: Path, how: str) -> tuple[dict, dict, str, dict]:
    """As _diffusers_layout, for the original checkpoint beside guidance.mvdream.base_model's parts."""
    from diffusers import UNet2DConditionModel

    base_how = (f"guidance.mvdream.base_model must be Stable Diffusion 2.1-base in diffusers' layout (a hub id or "
                f"a folder holding {' '.join(p + '/' for p in ('unet',) + PARTS)}), e.g. `hf download "
                f"{MVDreamConfig.base_model} --local-dir <folder>`")
    source, local = resolve_model(s.base_model, ("unet",) + PARTS, "MVDream base model", base_how)
    kwargs = {} if local else hub_kwargs(s.base_model, None, "MVDream base model", base_how)
    try:
        base = dict(UNet2DConditionModel.load_config(source, subfolder="unet", **kwargs))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read unet/config.json of MVDream base model '{s.base_model}': "
                                 f"{first_line(exc)}; {base_how}") from None
    config = {k: v for k, v in base.items() if not k.startswith("_")}
    # MVDream's UNet is SD 2.1-base's (configs/sd-v2-base.yaml: use_linear_in_transformer: True) plus the camera:
    config.update(use_linear_projection=True, class_embed_type="projection", projection_class_embeddings_input_dim=16)
    return config, original_to_diffusers(_read_state(checkpoint), config), source, kwargs


class MVDream(StableDiffusion):
    """Frozen MVDream: Stable Diffusion's ``encode`` / ``encode_prompt`` / ``decode``, and a noise prediction that
    reads each view's camera and joins the views of each group of ``n_views`` in self-attention."""

    def __init__(self, tokenizer, text_encoder, unet, vae, scheduler, *, device: torch.device, dtype: torch.dtype,
                 vae_resolution: int = 256, n_views: int = 4):
        super().__init__(tokenizer, text_encoder, unet, vae, scheduler, device=device, dtype=dtype,
                         vae_resolution=vae_resolution)
        if n_views < 1:
            raise ValueError(f"MVDream: n_views must be positive, got {n_views}")
        self.n_views = n_views
        join_views(self.unet, n_views)

    @classmethod
    def load(cls, settings: MVDreamConfig | None = None, device: str | torch.device = "cpu",
             n_views: int = 4) -> "MVDream":
        """Load ``settings`` (the run's guidance.mvdream section; None: its defaults) on ``device``, grading groups
        of ``n_views`` (camera.n_views). Either layout (module docstring); one ModelNotFoundError line when the
        folder is neither."""
        s = settings if settings is not None else MVDreamConfig()
        dtype = resolve_dtype(s.dtype, s.half_precision, device, key="guidance.mvdream.dtype")  # before any file
        how = _how_to_get(s)
        folder = _model_folder(s, how)
        if (folder / "unet").is_dir():
            config, state, source, kwargs = _diffusers_layout(folder, how)
        elif (folder / s.checkpoint).is_file():
            config, state, source, kwargs = _original_layout(s, folder / s.checkpoint, how)
        else:
            raise ModelNotFoundError(f"MVDream folder '{s.model}' holds neither {s.checkpoint} (the original "
                                     f"checkpoint, guidance.mvdream.checkpoint) nor unet/ (the diffusers layout): {how}")
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        unet = UNet2DConditionModel.from_config(config)
        try:
            unet.load_state_dict(state)
        except RuntimeError as exc:  # missing or unexpected tensors, or shapes that differ
            raise ModelNotFoundError(f"the MVDream UNet weights do not fit its config: "
                                     f"{first_line(exc)}") from None
        unet.to(dtype)
        specs = [(sub, loader, {"subfolder": sub, **extra}, f"{sub}/")
                 for sub, loader, extra in (("tokenizer", CLIPTokenizer, {}), ("text_encoder", CLIPTextModel, {}),
                                            ("vae", AutoencoderKL, {"torch_dtype": dtype}),
                                            ("scheduler", DDPMScheduler, {}))]
        local = not kwargs
        parts = load_parts(specs, source, kwargs, model=source, local=local, what="MVDream model", how=how)
        mv = cls(parts["tokenizer"], parts["text_encoder"], unet, parts["vae"], parts["scheduler"],
                 device=torch.device(device), dtype=dtype, vae_resolution=s.vae_resolution, n_views=n_views)
        apply_fast_paths(mv.unet, mv.vae, s, device)  # sets every attention processor: join the views again after
        join_views(mv.unet, n_views)
        return mv

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, embeddings: Tensor, **unet_kwargs) -> Tensor:
        """As TextUNetPredictor.predict_eps; ``class_labels`` [B, 16] (``mvdream_cameras``) is each view's camera,
        repeated for the K conditions. Without it the UNet cannot run: a rule that reads no cameras cannot use MVDream."""
        cameras = unet_kwargs.pop("class_labels", None)
        if cameras is None:
            raise ValueError("MVDream needs each view's camera (class_labels): use guidance.type=sds")
        k, batch = embeddings.shape[:2]
        if batch % self.n_views:
            raise ValueError(f"MVDream grades views in groups of n_views={self.n_views}, got a batch of {batch}")
        labels = cameras.to(device=self.device, dtype=self.dtype).repeat(k, 1)  # [K B, 16]
        return super().predict_eps(x_t, t, embeddings, class_labels=labels, **unet_kwargs)

    def predict_noise(self, x_t: Tensor, t: Tensor, cameras: Any, cond: Any) -> tuple[Tensor, Tensor]:
        """x_t [B, C, h, w] (B = groups x n_views, group by group), t [B], the cameras of the B views -> (eps_uncond,
        eps_cond) [B, C, h, w] from one UNet forward at batch 2B."""
        uncond, conds = cond.for_cameras(cameras, x_t.shape[0])
        eps = self.predict_eps(x_t, t, torch.stack([uncond, conds]), class_labels=mvdream_cameras(cameras.c2w))
        return eps[0], eps[1]
