"""Dream Fields guidance (Jain et al., arXiv 2112.01455): CLIP similarity of augmented renders to the prompt.

    crops_k = crop_k(render composited over a random background)        k = 1 .. clip.crops per view
    loss_clip = - mean_k cos(E_img(normalize(resize(crops_k))), E_txt(prompt))      (Dream Fields eq. 1)

Dream Fields' other term, the transmittance loss (eq. 3), grades the render's opacity, not the image: it is one of
the render regularisers (``dreamfusion.train.transmittance_loss``, weighted by loss.transmittance).

The CLIP model is ``FrozenCLIP`` (guidance/models/clip.py). The text embedding is computed once at construction;
each step embeds ``clip.crops`` crops per view (augment.py, with gradient).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor

from ..config import GuidanceConfig
from ...errors import UserError
from .augment import crop, random_crop_boxes
from ..base import FrozenGuidance
from ..models.clip import FrozenCLIP
from ..prompts import labels_for, prompt_texts

__all__ = ["CLIPGuidance"]


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
