"""DeepFloyd IF stage I as a frozen pixel-space noise predictor for SDS (see base.NoisePredictor).

IF (DeepFloyd / Stability AI, 2023) is the open analogue of Imagen, the prior DreamFusion used: pixel-space
diffusion UNets conditioned on a frozen T5-XXL text encoder. Stage I denoises 64 x 64 RGB images, so SDS
needs no VAE: x0 = 2 x - 1 of the render resized to the UNet's sample size, and the SDS gradient reaches the
render through that resize alone.

A model is a hub id or a local folder in diffusers' IFPipeline layout, one code path for both: ``unet/``
(3 channels in; 6 out = eps, then the learned-range variance, which SDS does not use), ``scheduler/`` (DDPM,
squaredcos_cap_v2), ``text_encoder/`` (T5EncoderModel), ``tokenizer/`` (T5). safety_checker/, watermarker/
and feature_extractor/ are not read.

Text follows IFPipeline.encode_prompt with clean_caption off: lower-cased and stripped, tokenized with the end
token, padded / truncated to 77 tokens, T5 run with the attention mask, its last hidden state used whole
(padding rows included). The T5 encoder (4.7B parameters for IF-I-XL) is not needed on every run: each
text's embedding is kept on disk under ``$DREAMFUSION_CACHE/t5/`` (default ``~/.cache/dreamfusion/t5/``),
keyed by the model, revision, variant, max length, T5 dtype and the text; the tokenizer and T5 are loaded
only when a text is missing there, and freed as soon as the missing texts are embedded.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import DeepFloydConfig
from ...errors import ConfigError, ModelNotFoundError, UserError
from ...io import atomic_write
from .fastpaths import resolve_dtype
from .hub import first_line, hub_kwargs, load_parts, looks_like_path, resolve_model
from .prediction import TextUNetPredictor, prediction_type
from ...runfolder import slugify
from ..prompts import TextConditioning, prompt_texts, warn_if_truncated

__all__ = ["DeepFloydIF", "DEFAULT_MODEL", "t5_cache_dir"]

DEFAULT_MODEL = DeepFloydConfig.model
MAX_LENGTH = 77  # IFPipeline.encode_prompt: "the text encoder was trained with a max length of 77 for IF"
CACHE_VERSION = 1
SUBFOLDERS = ("unet", "scheduler", "text_encoder", "tokenizer")


def t5_cache_dir() -> Path:
    """Where T5 embeddings are kept: ``t5/`` beside the embedded prior's cache ($DREAMFUSION_CACHE or
    ~/.cache/dreamfusion)."""
    from .prior import cache_dir

    return cache_dir().parent / "t5"


def _how_to_get(model: str) -> str:
    hub_id = model if not looks_like_path(model) else DEFAULT_MODEL
    return (f"accept the DeepFloyd IF license on huggingface.co/{hub_id}, log in (`hf auth login`), download it "
            f"with `hf download {hub_id} --local-dir <folder>` and set guidance.deepfloyd.model=/path/to/folder "
            f"(a folder holding {' '.join(s + '/' for s in SUBFOLDERS)})")


def _has_sentencepiece() -> bool:
    return importlib.util.find_spec("sentencepiece") is not None


def _preprocess(text: str) -> str:
    """IFPipeline._text_preprocessing without clean_caption."""
    return text.lower().strip()


class _T5Embeddings:
    """The T5 half of IF: each text's embedding [L, D] from the disk cache, else from T5 loaded for the
    missing texts and freed after. ``load()`` returns (tokenizer, text_encoder); ``folder`` None = no cache."""

    def __init__(self, load: Callable[[], tuple[Any, Any]], folder: Path | None, max_length: int,
                 device: torch.device, dtype: torch.dtype):
        self.load, self.folder, self.max_length = load, folder, max_length
        self.device, self.dtype = device, dtype

    def _path(self, text: str) -> Path:
        return self.folder / f"{hashlib.sha256(text.encode('utf-8')).hexdigest()[:32]}.pt"

    def _read(self, text: str) -> tuple[Tensor, int] | None:
        if self.folder is None or not self._path(text).is_file():
            return None
        try:
            entry = torch.load(self._path(text), map_location="cpu", weights_only=True)
            if entry["text"] == text:  # a hash collision or a foreign file is a miss, not a wrong embedding
                return entry["embedding"], int(entry["tokens"])
        except Exception:  # a truncated or unreadable entry: embed the text again and overwrite it
            pass
        return None

    def _write(self, text: str, embedding: Tensor, tokens: int) -> None:
        if self.folder is None:
            return
        entry = {"text": text, "tokens": tokens, "embedding": embedding.detach().cpu().clone()}
        try:
            atomic_write(self._path(text), lambda fh: torch.save(entry, fh))
        except UserError as exc:  # a cache that cannot be written costs time next run, not this run
            print(f"warning: T5 embedding not cached ({exc})", file=sys.stderr)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> tuple[Tensor, list[int]]:
        """texts -> (embeddings [N, L, D] on the device in the model dtype, untruncated token counts [N])."""
        texts = [_preprocess(t) for t in texts]
        found = {t: self._read(t) for t in dict.fromkeys(texts)}
        missing = [t for t, hit in found.items() if hit is None]
        if missing:
            tokenizer, encoder = self.load()
            try:
                for text, row in zip(missing, self._run(tokenizer, encoder, missing)):
                    found[text] = row
                    self._write(text, *row)
            finally:  # the T5 weights are the largest part of IF: free them now, the UNet stays
                del tokenizer, encoder
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        embeddings = torch.stack([found[t][0] for t in texts]).to(device=self.device, dtype=self.dtype)
        return embeddings, [found[t][1] for t in texts]

    def _run(self, tokenizer, encoder, texts: list[str]) -> list[tuple[Tensor, int]]:
        try:
            tokens = tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                               add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
            counts = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False).input_ids]
        except (ValueError, OverflowError, TypeError) as exc:
            raise UserError(f"the guidance model's tokenizer cannot read the prompt ({first_line(exc)}): "
                            f"check its tokenizer/ folder") from None
        device = encoder.device
        hidden = encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]
        return [(hidden[i], counts[i]) for i in range(len(texts))]


class DeepFloydIF(TextUNetPredictor):
    """Frozen IF stage I: ``encode`` renders to x0 in [-1, 1], ``predict_noise`` with classifier-free branches
    (``predict_eps`` / ``predict_noise``: prediction.TextUNetPredictor, shared with Stable Diffusion)."""

    def __init__(self, unet, scheduler, text: _T5Embeddings, *, device: torch.device, dtype: torch.dtype):
        self.unet, self.scheduler, self.text = unet, scheduler, text
        self.device, self.dtype = device, dtype
        unet.to(device)
        if unet.dtype != dtype:
            unet.to(dtype)
        unet.eval().requires_grad_(False)
        self.alphas_cumprod: Tensor = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)  # [T]
        self.prediction_type = prediction_type(scheduler)  # epsilon for IF stage I
        self.channels = int(unet.config.in_channels)  # 3; the UNet's further output channels are the variance
        self.eps_channels = self.channels
        self.sample_size = int(unet.config.sample_size)  # 64 for IF stage I

    @classmethod
    def load(cls, model: str = DEFAULT_MODEL, revision: str | None = None, device: str | torch.device = "cpu",
             half_precision: bool = True, max_length: int = MAX_LENGTH, variant: str | None = None,
             fast_paths: DeepFloydConfig | None = None, cache: bool = True) -> "DeepFloydIF":
        """Load the UNet and scheduler from a hub id or a local folder; fp16 on CUDA when half_precision.

        The tokenizer and T5 are loaded later, only for texts not in the T5 cache (``cache=False``: always).
        ``fast_paths`` (the run's guidance.deepfloyd section) sets dtype, channels_last and compile of the UNet;
        IF's UNet keeps diffusers' own attention (added-KV, SDPA): guidance.stable_diffusion.attention has no twin.
        """
        fast = fast_paths if fast_paths is not None else DeepFloydConfig()
        # before any file or hub access
        dtype = resolve_dtype(fast.dtype, half_precision, device, "guidance.deepfloyd.dtype")
        if max_length <= 0:
            raise ConfigError(f"guidance.deepfloyd.max_length must be positive, got {max_length}")
        how = _how_to_get(model)
        source, local = resolve_model(model, SUBFOLDERS, "DeepFloyd IF", how)
        kwargs = {} if local else hub_kwargs(model, revision, "guidance model", how)
        from diffusers import DDPMScheduler, UNet2DConditionModel

        device = torch.device(device)
        weights = {"torch_dtype": dtype, **({"variant": variant} if variant else {})}
        specs = [("unet", UNet2DConditionModel, {"subfolder": "unet", **weights}, "unet/"),
                 ("scheduler", DDPMScheduler, {"subfolder": "scheduler"}, "scheduler/")]
        parts = load_parts(specs, source, kwargs, model=model, local=local, what="guidance model", how=how)
        unet = parts["unet"]
        if unet.config.in_channels != 3 or unet.config.out_channels not in (3, 6):
            raise ModelNotFoundError(
                f"guidance model '{model}' is not a DeepFloyd IF stage I model: its unet/ maps "
                f"{unet.config.in_channels} to {unet.config.out_channels} channels (stage I: 3 RGB in, 6 out): "
                f"use {DEFAULT_MODEL} (or IF-I-L-v1.0 / IF-I-M-v1.0), or guidance.model_type=stable_diffusion for Stable Diffusion")

        def load_t5():
            return _load_t5(source, kwargs, model=model, local=local, how=how, dtype=dtype, device=device,
                            variant=variant)

        folder = _cache_folder(source, local, revision, variant, max_length, dtype) if cache else None
        text = _T5Embeddings(load_t5, folder, max_length, device, dtype)
        deepfloyd = cls(unet, parts["scheduler"], text, device=device, dtype=dtype)
        if fast.channels_last:
            deepfloyd.unet.to(memory_format=torch.channels_last)
        if fast.compile:
            deepfloyd.unet.compile()
        return deepfloyd

    def encode_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> TextConditioning:
        """The T5 embeddings [1, L, D] of the prompt (one per view label when view_dependent) and of the negative
        prompt ('' when none), which is the unconditional branch of classifier-free guidance."""
        texts = prompt_texts(prompt, negative_prompt, view_dependent)
        embeddings, counts = self.text.embed(list(texts.values()))  # [N, L, D]
        warn_if_truncated(dict(zip(texts, counts)), self.text.max_length, "T5 text encoder")
        rows = {k: embeddings[i:i + 1] for i, k in enumerate(texts)}
        return TextConditioning(uncond=rows.pop("uncond"), cond=rows)

    def encode(self, images: Tensor) -> Tensor:
        """images [B, H, W, 3] in [0, 1] -> x0 [B, 3, S, S] in [-1, 1] (S = the UNet's sample size, 64), fp32.

        Bilinear resize (antialiased when shrinking) to S, then 2 x - 1 (IF's pixel range). Differentiable.
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"DeepFloydIF.encode: images must be [B, H, W, 3], got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).to(device=self.device, dtype=torch.float32)  # [B, 3, H, W]
        size = (self.sample_size, self.sample_size)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x * 2.0 - 1.0

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the space the UNet denoises: RGB pixels in [-1, 1] at its sample size (3, 64, 64 for IF)."""
        return (self.channels, self.sample_size, self.sample_size)

    clip_denoised = True  # pixels live in [-1, 1]: DDIM (ddim.py) clips its x0 estimates there

    def decode(self, x: Tensor) -> Tensor:
        """x [B, 3, S, S] in [-1, 1] -> images [B, S, S, 3] in [0, 1] (previews); undoes ``encode`` at size S."""
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)


def _load_t5(source: str, kwargs: dict, *, model: str, local: bool, how: str, dtype: torch.dtype,
             device: torch.device, variant: str | None) -> tuple[Any, Any]:
    """(tokenizer, T5 encoder on ``device``) from the model's tokenizer/ and text_encoder/."""
    from transformers import AutoTokenizer, T5EncoderModel

    spm_only = local and not (Path(source) / "tokenizer" / "tokenizer.json").is_file()
    if spm_only and not _has_sentencepiece():
        raise UserError(f"reading the tokenizer/ of '{model}' (a sentencepiece model) needs the sentencepiece "
                        f"package: pip install 'dreamfusion[deepfloyd]'")
    weights = {"torch_dtype": dtype, **({"variant": variant} if variant else {})}
    specs = [("tokenizer", AutoTokenizer, {"subfolder": "tokenizer"}, "tokenizer/"),
             ("text_encoder", T5EncoderModel, {"subfolder": "text_encoder", **weights}, "text_encoder/")]
    try:
        parts = load_parts(specs, source, kwargs, model=model, local=local, what="guidance model", how=how)
    except ModelNotFoundError as exc:
        if _has_sentencepiece():
            raise
        raise ModelNotFoundError(f"{exc} (IF's tokenizer needs sentencepiece: pip install "
                                 f"'dreamfusion[deepfloyd]')") from exc
    encoder = parts["text_encoder"].to(device).eval().requires_grad_(False)
    return parts["tokenizer"], encoder


def _cache_folder(source: str, local: bool, revision: str | None, variant: str | None, max_length: int,
                  dtype: torch.dtype) -> Path:
    """t5_cache_dir() / '<model slug>-<hash of everything the embedding depends on but the text>'.

    A local folder is named by its absolute path and the size and modification time of every file under
    text_encoder/ and tokenizer/, so replacing its T5 invalidates its entries."""
    identity = [f"v{CACHE_VERSION}", source, revision or "main", variant or "", str(max_length), str(dtype)]
    if local:
        for sub in ("text_encoder", "tokenizer"):
            folder = Path(source) / sub
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            identity += [f"{p.relative_to(source)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    digest = hashlib.sha256("\n".join(identity).encode("utf-8")).hexdigest()[:16]
    return t5_cache_dir() / f"{slugify(Path(source).name if local else source, 40)}-{digest}"
