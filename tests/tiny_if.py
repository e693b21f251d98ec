"""The tiny random DeepFloyd IF stage I folder of the tests (``tiny_if_dir`` in conftest.py) and of
``benchmarks/sds_step.py --deepfloyd tiny``: a plain function with no side effects on import."""

from __future__ import annotations

import json
import os
import string

import torch

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
