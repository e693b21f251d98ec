"""Shared test fixtures.

``tiny_sd_dir`` is a Stable-Diffusion-shaped folder of tiny, randomly initialised components
(diffusers' ``get_dummy_components`` idea): the same layout as a real checkpoint
(``unet/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json``), loaded back through the same
``from_pretrained`` code users run. ``tiny_if_dir`` is the same for DeepFloyd IF stage I (IFPipeline's
layout, ``write_tiny_if``). Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
import string

# Before anything imports huggingface_hub: it reads the offline flag once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
import torch

# A few byte-pair merges so the tokenizer really merges; every byte is in the vocabulary, so any
# text tokenizes (one token per byte at worst).
_MERGES = ["t h", "th e</w>", "r e", "re d</w>", "c u", "cu b", "cub e</w>", "v i", "vi e", "vie w</w>"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to a printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tiny_clip_tokenizer(folder) -> int:
    """vocab.json + merges.txt + tokenizer_config.json in the byte-level BPE format of CLIP; returns the vocab size."""
    os.makedirs(folder, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
                   "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, f)
    return len(vocab)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny random Stable Diffusion folder (fixed seed), built once per session."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=32)
    unet.save_pretrained(root / "unet")
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32, sample_size=64)
    vae.save_pretrained(root / "vae")
    vocab_size = write_tiny_clip_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, projection_dim=32))
    text_encoder.save_pretrained(root / "text_encoder")
    DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                  beta_schedule="scaled_linear", clip_sample=False).save_pretrained(root / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP folder (2-layer text and vision towers, width 32, 32 px images, 8 px patches, fixed
    seed) in the layout of a hub CLIP checkpoint: config.json + weights, the tokenizer files and
    preprocessor_config.json (OpenAI's mean / std), loaded back with ``from_pretrained``."""
    from transformers import CLIPConfig, CLIPModel

    root = tmp_path_factory.mktemp("tiny-clip")
    vocab_size = write_tiny_clip_tokenizer(root)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                         eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=32)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(root)
    (root / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 32},
        "crop_size": {"height": 32, "width": 32}, "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return root


# Whole words of the tests' prompts (so the tiny T5 tokenizer really segments words), then single characters
# so that any lower-case text tokenizes; anything else is <unk>.
_T5_WORDS = ("a", "an", "the", "red", "blue", "cube", "ball", "peacock", "on", "surfboard", "hamburger", "of",
             "blurry", "front", "side", "back", "overhead", "view", "very", "ornate")


def write_tiny_if(root) -> None:
    """A tiny random DeepFloyd IF stage I folder (fixed seed) in diffusers' IFPipeline layout.

    unet/: the IF block types (ResNet down/up blocks, simple cross-attention with added K/V, T5 projection,
    attention-pooled text in the time embedding), 3 channels in, 6 out (eps + learned variance), 16 px.
    text_encoder/: a 2-layer T5 encoder, d_model 32, gated-GELU (T5 v1.1 like IF's T5-XXL). tokenizer/: a T5
    Unigram tokenizer saved as tokenizer.json (no sentencepiece needed). scheduler/: DDPM with IF's
    squaredcos_cap_v2 schedule and learned_range variance.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    root = os.fspath(root)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0 - 0.01 * i) for i, w in enumerate(_T5_WORDS)]
    vocab += [(c, -6.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=77).save_pretrained(os.path.join(root, "tokenizer"))
    torch.manual_seed(0)
    T5EncoderModel(T5Config(
        vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0)).save_pretrained(os.path.join(root, "text_encoder"))
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=16, layers_per_block=1, block_out_channels=(32, 64), in_channels=3, out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=32, encoder_hid_dim=32, encoder_hid_dim_type="text_proj", attention_head_dim=8,
        addition_embed_type="text", addition_embed_type_num_heads=2, cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift", act_fn="gelu").save_pretrained(os.path.join(root, "unet"))
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", thresholding=True,
                  dynamic_thresholding_ratio=0.95, sample_max_value=1.5, prediction_type="epsilon",
                  variance_type="learned_range").save_pretrained(os.path.join(root, "scheduler"))
    index = {"_class_name": "IFPipeline", "_diffusers_version": "0.42.1", "requires_safety_checker": False,
             "feature_extractor": [None, None], "safety_checker": [None, None], "watermarker": [None, None],
             "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
             "tokenizer": ["transformers", "T5Tokenizer"], "unet": ["diffusers", "UNet2DConditionModel"]}
    with open(os.path.join(root, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)


@pytest.fixture(scope="session")
def tiny_if_dir(tmp_path_factory):
    """A tiny random DeepFloyd IF stage I folder (``write_tiny_if``), built once per session."""
    root = tmp_path_factory.mktemp("tiny-if")
    write_tiny_if(root)
    return root
