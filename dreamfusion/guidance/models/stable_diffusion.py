"""Stable Diffusion as a frozen noise predictor for SDS (a latent-diffusion prior; see base.NoisePredictor).

Loads the tokenizer, CLIP text encoder, UNet, VAE and DDPM scheduler of a diffusers-format checkpoint
with ``from_pretrained(model, subfolder=...)``; ``model`` is a hub id or a local folder, same code path.
Loading knows no prompt: ``encode_prompt`` turns a prompt into its text embeddings (once per prompt), so one
loaded model serves many prompts in one process. The per-step work is one VAE encode (with gradient) and one
UNet forward on the batch [uncond x B, cond x B].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import StableDiffusionConfig
from ...errors import ModelNotFoundError
from .fastpaths import apply_fast_paths, resolve_dtype
from .hub import first_line, hub_kwargs, load_parts, looks_like_path, resolve_model
from .prediction import TextUNetPredictor, prediction_type
from ..prompts import TextConditioning, prompt_texts, warn_if_truncated

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DEFAULT_MODEL = StableDiffusionConfig.model


def _how_to_get(model: str) -> str:
    hub_id = model if not looks_like_path(model) else DEFAULT_MODEL
    return (f"download it with `hf download {hub_id} --local-dir <folder>` and set "
            f"guidance.stable_diffusion.model=/path/to/folder "
            f"(a folder holding {' '.join(s + '/' for s in SUBFOLDERS)}), "
            f"or run the offline demo: python -m dreamfusion --config demo prompt=\"a red cube\"")


def _text_window(tokenizer, text_encoder, unet) -> int:
    """Tokens per prompt: the tokenizer's limit capped by the text encoder's position embeddings (as in
    FrozenCLIP.context_length); a tokenizer_config.json without model_max_length reports ~1e30 (transformers'
    VERY_LARGE_INTEGER), which padding cannot reach. Parts that do not fit together are one line."""
    where = "the guidance model's"
    limits = [n for n in (tokenizer.model_max_length, getattr(text_encoder.config, "max_position_embeddings", None))
              if isinstance(n, int) and 0 < n < 1_000_000]
    if not limits:
        raise ModelNotFoundError(f"{where} tokenizer has no model_max_length and its text encoder no "
                                 f"max_position_embeddings: add \"model_max_length\": 77 to tokenizer/tokenizer_config.json")
    vocab = getattr(text_encoder.config, "vocab_size", None)
    if vocab is not None and hasattr(tokenizer, "__len__") and len(tokenizer) > vocab:
        raise ModelNotFoundError(f"{where} tokenizer has {len(tokenizer)} tokens but its text encoder embeds {vocab}: "
                                 f"tokenizer/ and text_encoder/ come from different models")
    width, cross = text_encoder.config.hidden_size, getattr(unet.config, "cross_attention_dim", None)
    if cross is not None and width != cross:
        raise ModelNotFoundError(f"{where} text encoder gives {width}-wide embeddings but its UNet attends to "
                                 f"{cross}: text_encoder/ and unet/ come from different models")
    return min(limits)


class StableDiffusion(TextUNetPredictor):
    """Frozen Stable Diffusion: ``encode`` images to latents, ``predict_noise`` with classifier-free branches
    (``predict_eps`` / ``predict_noise``: prediction.TextUNetPredictor, shared with DeepFloyd IF)."""

    def __init__(self, tokenizer, text_encoder, unet, vae, scheduler, *, device: torch.device,
                 dtype: torch.dtype, vae_resolution: int = 512):
        self.tokenizer, self.text_encoder, self.unet, self.vae = tokenizer, text_encoder, unet, vae
        self.scheduler = scheduler
        self.device, self.dtype = device, dtype
        self.vae_resolution = vae_resolution
        for module in (text_encoder, unet, vae):
            module.to(device)
            if module.dtype != dtype:  # load() already asks diffusers for `dtype`; this covers direct use
                module.to(dtype)
            module.eval().requires_grad_(False)
        self.alphas_cumprod: Tensor = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)  # [T]
        self.prediction_type = prediction_type(scheduler)  # epsilon, v_prediction (SD 2.x 768 px) or sample
        self.eps_channels = int(unet.config.out_channels)  # the latent channels, 4
        self.scaling_factor = float(vae.config.scaling_factor)
        self.latent_factor = 2 ** (len(vae.config.block_out_channels) - 1)  # 8 for SD; 2 for the test's tiny VAE
        self.latent_size = vae_resolution // self.latent_factor
        self.context_length = _text_window(tokenizer, text_encoder, unet)  # tokens per prompt

    @classmethod
    def load(cls, model: str = DEFAULT_MODEL, revision: str | None = None, device: str | torch.device = "cpu",
             half_precision: bool = True, vae_resolution: int = 512,
             fast_paths: StableDiffusionConfig | None = None) -> "StableDiffusion":
        """Load from a hub id or a local folder; fp16 on CUDA when half_precision, fp32 otherwise.

        ``fast_paths`` (the run's guidance.stable_diffusion section) sets dtype, channels_last, attention and compile
        (fastpaths.py); None keeps the defaults (dtype auto, sdpa attention).
        """
        fast = fast_paths if fast_paths is not None else StableDiffusionConfig()
        dtype = resolve_dtype(fast.dtype, half_precision, device)  # before any file or hub access
        how = _how_to_get(model)
        source, local = resolve_model(model, SUBFOLDERS, "guidance model", how)
        kwargs = {} if local else hub_kwargs(model, revision, "guidance model", how)
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        device = torch.device(device)
        specs = [(sub, loader, {"subfolder": sub, **extra}, f"{sub}/")
                 for sub, loader, extra in (("tokenizer", CLIPTokenizer, {}), ("text_encoder", CLIPTextModel, {}),
                                            ("unet", UNet2DConditionModel, {"torch_dtype": dtype}),
                                            ("vae", AutoencoderKL, {"torch_dtype": dtype}),
                                            ("scheduler", DDPMScheduler, {}))]
        parts = load_parts(specs, source, kwargs, model=model, local=local, what="guidance model", how=how)
        sd = cls(parts["tokenizer"], parts["text_encoder"], parts["unet"], parts["vae"], parts["scheduler"],
                 device=device, dtype=dtype, vae_resolution=vae_resolution)
        apply_fast_paths(sd.unet, sd.vae, fast, device)
        return sd

    def encode_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> TextConditioning:
        """The text embeddings [1, L, D] of the prompt (one per view label when view_dependent) and of the
        negative prompt ('' when none), which is the unconditional branch of classifier-free guidance."""
        texts = prompt_texts(prompt, negative_prompt, view_dependent)
        self._warn_if_truncated(texts)
        embeddings = self._embed(list(texts.values()))  # [N, L, D]
        rows = {k: embeddings[i:i + 1] for i, k in enumerate(texts)}
        return TextConditioning(uncond=rows.pop("uncond"), cond=rows)

    def _warn_if_truncated(self, texts: dict[str, str]) -> None:
        """prompts.warn_if_truncated with this tokenizer's counts and the text encoder's window."""
        counts = {k: len(self.tokenizer(v, truncation=False, verbose=False).input_ids) for k, v in texts.items()}
        warn_if_truncated(counts, self.context_length)

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> Tensor:
        try:
            tokens = self.tokenizer(texts, padding="max_length", max_length=self.context_length,
                                    truncation=True, return_tensors="pt")
        except ValueError as exc:  # e.g. a tokenizer_config.json without a pad_token
            raise ModelNotFoundError(f"the guidance model's tokenizer cannot pad prompts to {self.context_length} "
                                     f"tokens ({first_line(exc)}): check tokenizer/tokenizer_config.json") from None
        return self.text_encoder(tokens.input_ids.to(self.device))[0]  # last hidden state [N, L, D]

    def encode(self, images: Tensor) -> Tensor:
        """images [B, H, W, 3] in [0, 1] -> latents [B, 4, R/8, R/8] (R = vae_resolution; R/2 for a 2-block VAE).

        Bilinear resize to R, scale to [-1, 1], VAE posterior *mean* (deterministic: the same render
        gives the same latent) times ``scaling_factor`` (0.18215 for SD 1.x/2.x). Differentiable.
        """
        if images.ndim == 4 and images.shape[-1] == self.vae.config.latent_channels:
            return self.latents_from_render(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"StableDiffusion.encode: images must be [B, H, W, 3] (or [B, h, w, "
                             f"{self.vae.config.latent_channels}] latents), got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).to(device=self.device, dtype=self.dtype)  # [B, 3, H, W]
        if x.shape[-2:] != (self.vae_resolution, self.vae_resolution):
            x = F.interpolate(x, size=(self.vae_resolution, self.vae_resolution), mode="bilinear",
                              align_corners=False)
        posterior = self.vae.encode(x * 2.0 - 1.0).latent_dist
        return posterior.mean * self.scaling_factor

    def latents_from_render(self, latents: Tensor) -> Tensor:
        """Latent rendering (guidance.latent_render): rendered latents [B, h, w, 4] -> [B, 4, s, s] as they are,
        bilinearly resized only when h, w differ from the latent size s = vae_resolution / 8 (64 for SD at
        512). No VAE: the gradient flows straight into the render."""
        x = latents.permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.latent_size, self.latent_size):
            x = F.interpolate(x, size=(self.latent_size, self.latent_size), mode="bilinear", align_corners=False)
        return x

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the space the UNet denoises: SD's latents at the VAE resolution."""
        return (int(self.vae.config.latent_channels), self.latent_size, self.latent_size)

    clip_denoised = False  # latents are not bounded: DDIM (ddim.py) leaves its x0 estimates alone

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """latents [B, 4, h, w] -> images [B, H, W, 3] in [0, 1] (debugging / previews)."""
        x = self.vae.decode(latents.to(self.dtype) / self.scaling_factor).sample
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)
