"""Speed switches of the frozen Stable Diffusion, each with a plain twin that tests compare it against.

    guidance.stable_diffusion.dtype          auto | fp32 | fp16 | bf16   weights, activations of the UNet and VAE
    guidance.stable_diffusion.channels_last  bool                        NHWC weights (tensor cores prefer it)
    guidance.stable_diffusion.attention      sdpa | classic              fused SDPA vs softmax(QK^T / sqrt(d)) V
    guidance.stable_diffusion.compile        bool                        torch.compile of the UNet

(DeepFloyd IF reads the same dtype, channels_last and compile from guidance.deepfloyd.*.)

Precision is whole-model (weights cast once at load, as threestudio and stable-dreamfusion run SD),
not ``torch.autocast``: autocast would re-cast the 860M UNet weights on every forward. The SDS rule
itself always runs in fp32 (``SDSGuidance`` upcasts the latents and noise predictions), so only the
network's own rounding differs. fp16 is CUDA-only (CPU fp16 kernels are slow reference code); bf16
runs anywhere but is only fast on CPUs with native bf16 (AVX512-BF16 / AMX): on this project's AVX2
test CPU it is ~25x slower than fp32 (docs/BENCHMARKS.md).

Two things that look like fast paths and are not switches here:
- Text embeddings are computed once per prompt (``StableDiffusion.encode_prompt``): per step there is no
  text encoder call, only a gather of the cached [1, 77, D] rows per camera view label.
- Rendering latents directly (Latent-NeRF) is ``guidance.latent_render`` (render/latent.py): the field
  renders SD's 4 latent channels, so the step skips the resize to 512 and the VAE encode and its backward.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import StableDiffusionConfig
from ...errors import ConfigError

__all__ = ["DTYPES", "resolve_dtype", "set_attention", "apply_fast_paths"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str, half_precision: bool, device: str | torch.device,
                  key: str = "guidance.stable_diffusion.dtype") -> torch.dtype:
    """The torch dtype of the UNet and VAE for ``dtype`` (the config key ``key``) on ``device``.

    auto: fp16 on CUDA when ``half_precision`` (the long-standing default), fp32 otherwise.
    fp32 / fp16 / bf16: that dtype; fp16 raises ConfigError off CUDA.
    """
    device = torch.device(device)
    if dtype == "auto":
        return torch.float16 if (half_precision and device.type == "cuda") else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"bad value '{dtype}' for '{key}': choose one of auto, {', '.join(DTYPES)}")
    if dtype == "fp16" and device.type != "cuda":
        raise ConfigError(f"{key}=fp16 needs a CUDA device, got {device}: use {key}=fp32 "
                          f"(or bf16 on a CPU with native bf16)")
    return DTYPES[dtype]


def set_attention(module: nn.Module, kind: str) -> None:
    """Give every attention layer of a diffusers model the ``sdpa`` or ``classic`` processor (in place).

    sdpa = ``AttnProcessor2_0`` (``F.scaled_dot_product_attention``: flash / memory-efficient kernels on
    CUDA, never materialises the [tokens x tokens] matrix there); classic = ``AttnProcessor``
    (``baddbmm`` + softmax + ``bmm``). Same maths: outputs agree to float rounding.
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processors = {"sdpa": AttnProcessor2_0, "classic": AttnProcessor}
    if kind not in processors:
        raise ConfigError(f"bad value '{kind}' for 'guidance.stable_diffusion.attention': "
                          f"choose one of {', '.join(processors)}")
    if module.attn_processors:  # a model without attention layers has nothing to set
        module.set_attn_processor(processors[kind]())


def apply_fast_paths(unet: nn.Module, vae: nn.Module, cfg: StableDiffusionConfig, device: str | torch.device) -> None:
    """Apply ``cfg``'s attention, memory-format and compile switches to a loaded UNet and VAE, in place.

    The modules must already be on ``device`` in their final dtype (``resolve_dtype`` picks it at load);
    none of the current switches depends on the device, so ``device`` is only part of the contract.
    """
    set_attention(unet, cfg.attention)
    set_attention(vae, cfg.attention)
    if cfg.channels_last:
        # Only 4-D parameters (convolution kernels) change layout; module outputs then come out NHWC,
        # which every later op (chunk, float, arithmetic) accepts. Values are unchanged.
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if cfg.compile:
        # nn.Module.compile compiles in place: `unet` keeps its type, .config and .dtype.
        unet.compile()
