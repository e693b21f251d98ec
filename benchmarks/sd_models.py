"""Random-weight Stable Diffusion stacks for the benchmarks: the cost of the real model, no download.

``full``: the UNet, VAE and CLIP text encoder of Stable Diffusion 1.5 built from the published configs
in ``benchmarks/configs/`` (architecture only) with random weights; a forward costs what the real one
costs (same shapes, same kernels). ``tiny``: the 2-block UNet / VAE / 2-layer CLIP of the test fixture
(``tests/conftest.py``, same sizes), for CPU runs. Both are wrapped in ``StableDiffusion``, so encode and
predict_noise are the code training runs. The tokenizer is a byte-level stand-in: text is encoded once
at load time and never timed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import torch

from dreamfusion.config import StableDiffusionConfig
from dreamfusion.guidance import StableDiffusion
from dreamfusion.guidance.models.fastpaths import apply_fast_paths, resolve_dtype

__all__ = ["build_stable_diffusion", "ByteTokenizer", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ByteTokenizer:
    """The slice of CLIPTokenizer that StableDiffusion uses: UTF-8 bytes as ids, 256 = start, 257 = end / pad."""

    model_max_length = 77
    bos, eos = 256, 257

    def __call__(self, texts, padding=None, max_length=None, truncation=False, return_tensors=None, verbose=True):
        single = isinstance(texts, str)
        length = max_length or self.model_max_length
        rows = []
        for text in [texts] if single else texts:
            row = [self.bos, *text.encode("utf-8"), self.eos]
            if truncation:
                row = row[:length]
            if padding == "max_length":
                row += [self.eos] * (length - len(row))
            rows.append(row)
        if return_tensors == "pt":
            return SimpleNamespace(input_ids=torch.tensor(rows))
        return SimpleNamespace(input_ids=rows[0] if single else rows)


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIG_DIR / name).read_text()).items() if not k.startswith("_")}


def _full_components():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel.from_config(_config("sd15_unet.json"))
    vae = AutoencoderKL.from_config(_config("sd15_vae.json"))
    text_encoder = CLIPTextModel(CLIPTextConfig(**_config("sd15_text_encoder.json")))
    return unet, vae, text_encoder


def _tiny_components():
    """The sizes of tests/conftest.py's tiny_sd_dir (its tokenizer aside)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=32)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32, sample_size=64)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=258, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=256, eos_token_id=257, pad_token_id=257, projection_dim=32))
    return unet, vae, text_encoder


def build_stable_diffusion(kind: str, device: torch.device, fast: StableDiffusionConfig, vae_resolution: int = 512,
                           seed: int = 0) -> StableDiffusion:
    """A random-weight ``StableDiffusion`` (``kind`` full | tiny) on ``device`` with ``fast``'s switches applied
    exactly as ``StableDiffusion.load`` applies them."""
    from diffusers import DDPMScheduler

    builders = {"full": _full_components, "tiny": _tiny_components}
    if kind not in builders:
        raise ValueError(f"unknown model '{kind}': choose one of {', '.join(builders)}")
    logging.getLogger("diffusers").setLevel(logging.ERROR)  # the "cast with .to()" notice of random models
    dtype = resolve_dtype(fast.dtype, fast.half_precision, device)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: the full UNet's random init is ~30 s on 2 CPU cores
        unet, vae, text_encoder = builders[kind]()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False)
    sd = StableDiffusion(ByteTokenizer(), text_encoder, unet, vae, scheduler, device=device, dtype=dtype,
                         vae_resolution=vae_resolution)
    apply_fast_paths(sd.unet, sd.vae, fast, device)
    return sd
