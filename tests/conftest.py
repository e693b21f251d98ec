"""Shared test fixtures.

``tiny_sd_dir`` is a Stable-Diffusion-shaped folder of tiny, randomly initialised components
(diffusers' ``get_dummy_components`` idea): the same layout as a real checkpoint
(``unet/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json``), loaded back through the same
``from_pretrained`` code users run. ``tiny_if_dir`` is the same for DeepFloyd IF stage I
(IFPipeline's layout, built by ``tiny_if.write_tiny_if``). Nothing here touches the network.

Caches: every cache folder the code or its libraries may use (dreamfusion's silhouettes, the Hugging Face
hub, XDG, torch hub) points into one temporary folder, set here before anything imports huggingface_hub
(it reads its paths once, at import) and removed when the session ends; the user's real caches are never
read or written, so a model sitting in ~/.cache/huggingface cannot change a result.

Oracles: ``require_oracle`` is the one gate for a test whose oracle is an optional tool (nerfacc, gsplat,
fast-simplification, the Khronos glTF validator, Chromium, viser). A developer's run skips with the reason;
CI (``DREAMFUSION_REQUIRE_ORACLES=1``, set by .ci/run) fails instead, so a missing oracle cannot pass silently.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _default_caches() -> dict[str, Path]:
    """The cache folders the code would use without this conftest (for the test that proves they stay untouched)."""
    env = os.environ.get
    xdg = Path(env("XDG_CACHE_HOME") or Path.home() / ".cache")
    hf_home = Path(env("HF_HOME") or xdg / "huggingface")
    return {"dreamfusion": Path(env("DREAMFUSION_CACHE") or xdg / "dreamfusion"),
            "hf_home": hf_home, "hf_hub": Path(env("HF_HUB_CACHE") or hf_home / "hub")}


DEFAULT_CACHES = _default_caches()
SANDBOX = Path(tempfile.mkdtemp(prefix="dreamfusion-tests-"))
SANDBOX_CACHES = {"DREAMFUSION_CACHE": SANDBOX / "dreamfusion", "HF_HOME": SANDBOX / "huggingface",
                  "HF_HUB_CACHE": SANDBOX / "huggingface" / "hub", "XDG_CACHE_HOME": SANDBOX / "xdg-cache",
                  "XDG_CONFIG_HOME": SANDBOX / "xdg-config", "TORCH_HOME": SANDBOX / "torch"}
# Before anything imports huggingface_hub: it reads the offline flag and its cache paths once, at import.
os.environ.update({k: str(v) for k, v in SANDBOX_CACHES.items()})
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Subprocesses (`python -m dreamfusion ...`) import the tree under test, not another installed copy.
ROOT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])

import pytest
import torch


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SANDBOX, ignore_errors=True)


GLTF_INSTALL = "npm ci --prefix tools/gltf-validator (needs node and npm)"
NERFACC_INSTALL = "pip install nerfacc==0.5.3 (the dev extra; its batched functions run on CPU)"


def require_oracle(available: bool, what: str, install_hint: str) -> None:
    """Gate a test on an optional oracle: nothing when ``available``; otherwise skip with the reason, or fail
    when DREAMFUSION_REQUIRE_ORACLES=1 (CI), so that a missing oracle is never a silent pass."""
    if available:
        return
    reason = f"{what} is not available: {install_hint}"
    if os.environ.get("DREAMFUSION_REQUIRE_ORACLES", "0") not in ("", "0"):
        pytest.fail(f"oracle missing with DREAMFUSION_REQUIRE_ORACLES=1: {reason}", pytrace=False)
    pytest.skip(reason)


def import_oracle(module: str, install_hint: str):
    """``import module`` for a test oracle, through ``require_oracle`` (an import that fails for any reason
    counts as missing, and the reason names the exception)."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # not installed, or it needs something this machine lacks
        require_oracle(False, f"{module} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                       install_hint)


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
def tiny_sd_v_dir(tiny_sd_dir, tmp_path_factory):
    """``tiny_sd_dir`` with its scheduler re-saved as v-prediction (Stable Diffusion 2.x at 768 px is one)."""
    from model_folders import with_prediction_type

    return with_prediction_type(tiny_sd_dir, tmp_path_factory.mktemp("v"), "v_prediction")


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


@pytest.fixture(scope="session")
def tiny_if_dir(tmp_path_factory):
    """A tiny random DeepFloyd IF stage I folder (``write_tiny_if``), built once per session."""
    from tiny_if import write_tiny_if

    root = tmp_path_factory.mktemp("tiny-if")
    write_tiny_if(root)
    return root
