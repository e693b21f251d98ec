"""Dream Fields guidance (Jain et al., arXiv 2112.01455): CLIP similarity of augmented renders to the prompt.

    crops_k = crop_k(render composited over a random background)        k = 1 .. clip.crops per view
    loss_clip = - mean_k cos(E_img(normalize(resize(crops_k))), E_txt(prompt))      (Dream Fields eq. 1)

Dream Fields' other term, the transmittance loss (eq. 3), grades the render's opacity, not the image: it is one of
the render regularisers (``dreamfusion.train.losses.transmittance_loss``, weighted by loss.transmittance).

``FrozenCLIP`` wraps a transformers ``CLIPModel`` + ``CLIPTokenizer`` loaded from a hub id or a local
folder (same code path); it is shared with ``dreamfusion.evaluate``. The text embedding is computed
once at construction; each step embeds ``clip.crops`` crops per view (with gradient).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import ClipConfig, GuidanceConfig
from ..errors import ModelNotFoundError, UserError
from .augment import crop, random_crop_boxes
from .base import FrozenGuidance
from .prompts import labels_for, prompt_texts
from .hub import hub_kwargs, load_parts, looks_like_path

__all__ = ["FrozenCLIP", "CLIPGuidance", "DEFAULT_CLIP"]

DEFAULT_CLIP = ClipConfig.model  # ViT-B/16, the Dream Fields paper's guidance model
# OpenAI CLIP's normalisation, used when the model has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# role -> (what the model is called in errors, how to point at a folder, hub id to suggest, mention the demo)
_ROLES = {
    "guidance": ("guidance model", "set guidance.clip.model=", DEFAULT_CLIP, True),
    "evaluation": ("evaluation CLIP", "pass --clip-model ", "openai/clip-vit-base-patch32", False),
}


def _how_to_get(model: str, role: str) -> str:
    _, setting, default, demo = _ROLES[role]
    hub_id = model if not looks_like_path(model) else default
    text = (f"download it with `hf download {hub_id} --local-dir <folder>` and {setting}/path/to/folder "
            f"(a folder holding config.json, the weights and the tokenizer files)")
    return text + (", or run the offline demo: python -m dreamfusion --config demo prompt=\"a red cube\""
                   if demo else "")


def _json(path: Path) -> dict:
    """A JSON object from a file; {} when unreadable (from_pretrained then reports the real problem)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_preprocessor(source: str, local: bool, kwargs: dict) -> dict:
    """preprocessor_config.json of the model as a dict; {} when it has none."""
    if local:
        return _json(Path(source) / "preprocessor_config.json")
    try:
        from huggingface_hub import hf_hub_download

        return _json(Path(hf_hub_download(source, "preprocessor_config.json", **kwargs)))
    except Exception:  # not in the repo / not cached: the standard constants apply
        return {}


class FrozenCLIP:
    """A frozen CLIP: ``embed_text(texts) -> [N, D]``, ``embed_images(x [N, 3, h, w]) -> [N, D]``, unit length."""

    def __init__(self, model, tokenizer, *, device: torch.device, dtype: torch.dtype,
                 mean=CLIP_MEAN, std=CLIP_STD):
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device, self.dtype = device, dtype
        self.input_size = int(model.config.vision_config.image_size)
        self.context_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    @classmethod
    def load(cls, model: str = DEFAULT_CLIP, revision: str | None = None, device: str | torch.device = "cpu",
             half_precision: bool = False, role: str = "guidance") -> "FrozenCLIP":
        """From a hub id or a local folder; fp16 on CUDA when half_precision, fp32 otherwise.

        ``role`` (guidance or evaluation) picks the wording of the one-line errors for a missing model.
        """
        what = _ROLES[role][0]
        how = _how_to_get(model, role)
        path = Path(model).expanduser()
        local = path.is_dir()
        if local:
            if not (path / "config.json").is_file():
                raise ModelNotFoundError(f"{what} folder '{model}' has no config.json (not a CLIP model folder): {how}")
            model_type = _json(path / "config.json").get("model_type")
            if model_type != "clip":
                found = f"holds a '{model_type}' model" if model_type else "has a config.json without model_type"
                raise ModelNotFoundError(f"{what} folder '{model}' {found}, not CLIP (model_type clip): {how}")
            source, kwargs = str(path), {}
        elif looks_like_path(model):
            raise ModelNotFoundError(f"{what} '{model}' is not a folder: {how}")
        else:
            source, kwargs = model, hub_kwargs(model, revision, what, how)
        from transformers import CLIPModel, CLIPTokenizer

        device = torch.device(device)
        dtype = torch.float16 if (half_precision and device.type == "cuda") else torch.float32
        specs = [("tokenizer", CLIPTokenizer, {}, "the CLIP tokenizer"),
                 ("model", CLIPModel, {"dtype": dtype}, "the CLIP model")]
        parts = load_parts(specs, source, kwargs, model=model, local=local, what=what, how=how)
        pre = _read_preprocessor(source, local, kwargs)
        return cls(parts["model"], parts["tokenizer"], device=device, dtype=dtype,
                   mean=tuple(pre.get("image_mean", CLIP_MEAN)), std=tuple(pre.get("image_std", CLIP_STD)))

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> Tensor:
        """texts -> unit embeddings [N, D] (float32); texts longer than the context window are cut."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.context_length, truncation=True,
                                return_tensors="pt")
        out = self.model.get_text_features(input_ids=tokens.input_ids.to(self.device),
                                           attention_mask=tokens.attention_mask.to(self.device))
        return F.normalize(_pooled(out).float(), dim=-1)

    def embed_images(self, images: Tensor) -> Tensor:
        """images [N, 3, h, w] in [0, 1] -> unit embeddings [N, D] (float32), differentiable.

        Bilinear resize (antialiased when shrinking) to the model's input size, then CLIP's mean / std.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FrozenCLIP.embed_images: images must be [N, 3, h, w], got {tuple(images.shape)}")
        x = images.to(device=self.device, dtype=torch.float32)
        size = (self.input_size, self.input_size)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        out = self.model.get_image_features(pixel_values=x.to(self.dtype))
        return F.normalize(_pooled(out).float(), dim=-1)


def _pooled(out: Any) -> Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is projected (5)."""
    return out if torch.is_tensor(out) else out.pooler_output


class CLIPGuidance(FrozenGuidance):
    """Dream Fields' CLIP loss: ``guidance(images, cameras, step, total_steps, generator) -> dict``."""

    def __init__(self, clip: FrozenCLIP, prompt: str, cfg: GuidanceConfig):
        texts = prompt_texts(prompt, "", cfg.view_dependent)
        del texts["uncond"]  # CLIP similarity has no unconditional branch
        if cfg.clip.crops <= 0:
            raise UserError(f"guidance.clip.crops must be positive, got {cfg.clip.crops}")
        if not 0.0 < cfg.clip.crop_fraction <= 1.0:
            raise UserError(f"guidance.clip.crop_fraction must be in (0, 1], got {cfg.clip.crop_fraction}")
        self.clip, self.cfg = clip, cfg
        longest = max(texts.values(), key=len)
        count, limit = len(clip.tokenizer(longest, truncation=False, verbose=False).input_ids), clip.context_length
        if count > limit:  # cut, not an error (as for Stable Diffusion's text encoder)
            print(f"warning: prompt truncated: it is {count} tokens, CLIP reads {limit}; the last "
                  f"{count - limit} are ignored", file=sys.stderr)
        embeddings = clip.embed_text(list(texts.values()))  # [N, D], once
        self.text_embeddings: dict[str, Tensor] = {k: embeddings[i] for i, k in enumerate(texts)}

    def text_for(self, cameras: Any, batch: int) -> Tensor:
        """[B, D]: the prompt embedding per view (with the view suffix when view_dependent)."""
        labels = labels_for(cameras, batch, self.cfg.view_dependent)
        return torch.stack([self.text_embeddings[label] for label in labels])

    def __call__(self, images: Tensor, cameras: Any, step: int, total_steps: int,
                 generator: torch.Generator | None = None) -> dict[str, Tensor | float]:
        """images [B, H, W, 3] in [0, 1] (requires grad; already over random backgrounds).

        Returns loss_clip = -mean over the B * clip.crops crops of cos(image, text) and the plain
        float clip_similarity (that mean cosine) for logging. Crop boxes come from ``generator``.
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"CLIPGuidance: images must be [B, H, W, 3], got {tuple(images.shape)}")
        batch, height, width, _ = images.shape
        n = self.cfg.clip.crops
        boxes = random_crop_boxes(batch * n, height, width, self.cfg.clip.crop_fraction, generator)
        image_emb = self.clip.embed_images(crop(images, boxes, n))  # [B * n, D]; crop i is of view i // n
        text_emb = self.text_for(cameras, batch).to(image_emb.device).repeat_interleave(n, dim=0)  # [B * n, D]
        similarity = (image_emb * text_emb).sum(-1)  # cosines: both unit length
        return {"loss_clip": -similarity.mean(), "clip_similarity": similarity.mean().item()}
