"""Each Stable Diffusion fast path against its plain twin, on the tiny random SD folder (conftest.tiny_sd_dir).

Twins: sdpa <-> classic attention, channels_last <-> contiguous weights, bf16 / fp16 <-> fp32,
torch.compile <-> eager. The oracle is always the twin's output on the same inputs and weights;
exact twins (same maths, other kernels) agree to 1e-5, reduced precision to a stated tolerance.
"""

from __future__ import annotations

import pytest
import torch

from dreamfusion.config import Config, GuidanceConfig, StableDiffusionConfig, load_config
from dreamfusion.errors import ConfigError
from dreamfusion.guidance import SDSGuidance, StableDiffusion, build_guidance
from dreamfusion.guidance.models.fastpaths import resolve_dtype

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def load(tiny_sd_dir, device="cpu", **switches) -> StableDiffusion:
    cfg = StableDiffusionConfig(**switches)
    return StableDiffusion.load(str(tiny_sd_dir), device=device, vae_resolution=32, fast_paths=cfg)


def inputs(device="cpu"):
    """x_t [2, 4, 16, 16], t [2], images [2, 24, 24, 3], from a fixed seed."""
    gen = torch.Generator().manual_seed(7)
    x_t = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([50, 700])
    images = torch.rand(2, 24, 24, 3, generator=gen)
    return x_t.to(device), t.to(device), images.to(device)


def outputs(sd: StableDiffusion, device="cpu") -> dict[str, torch.Tensor]:
    """UNet noise predictions (both branches), VAE latents and d(latents . v)/d images, all fp32 on CPU."""
    x_t, t, images = inputs(device)
    eps_u, eps_c = sd.predict_noise(x_t, t, None, sd.encode_prompt("a red cube", "", view_dependent=False))
    images.requires_grad_(True)
    latents = sd.encode(images).float()
    v = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1)).to(device)
    (latents * v).sum().backward()
    return {"eps": torch.cat([eps_u, eps_c]).float().cpu(), "latents": latents.detach().cpu(),
            "grad": images.grad.float().cpu()}


def rel_error(test: torch.Tensor, reference: torch.Tensor) -> float:
    """||test - reference|| / ||reference|| (L2 over all elements)."""
    return ((test - reference).norm() / reference.norm()).item()


@pytest.fixture(scope="module")
def plain(tiny_sd_dir):
    """fp32, classic attention, contiguous weights, eager: the twin every fast path is compared with."""
    return outputs(load(tiny_sd_dir, attention="classic"))


# --- switches and their errors -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, half, device, expected", [
    ("auto", True, "cpu", torch.float32), ("auto", True, "cuda", torch.float16),
    ("auto", False, "cuda", torch.float32), ("fp32", True, "cuda", torch.float32),
    ("bf16", True, "cpu", torch.bfloat16), ("bf16", False, "cuda", torch.bfloat16),
    ("fp16", False, "cuda", torch.float16)])
def test_resolve_dtype_table(dtype, half, device, expected):
    assert resolve_dtype(dtype, half, device) == expected


def test_fp16_on_cpu_and_unknown_values_are_one_line_config_errors(tiny_sd_dir):
    with pytest.raises(ConfigError, match="guidance.stable_diffusion.dtype=fp16 needs a CUDA device"):
        load(tiny_sd_dir, dtype="fp16")
    with pytest.raises(ConfigError, match="'guidance.stable_diffusion.dtype'"):
        load_config(None, ["guidance.stable_diffusion.dtype=fp8"])
    with pytest.raises(ConfigError, match="'guidance.deepfloyd.dtype'"):
        load_config(None, ["guidance.deepfloyd.dtype=fp8"])
    with pytest.raises(ConfigError, match="'guidance.stable_diffusion.attention'"):
        load_config(None, ["guidance.stable_diffusion.attention=flash"])
    sd = load_config(None, ["guidance.stable_diffusion.dtype=bf16", "guidance.stable_diffusion.channels_last=true",
                            "guidance.stable_diffusion.compile=true"]).guidance.stable_diffusion
    assert (sd.dtype, sd.channels_last, sd.compile) == ("bf16", True, True)


def test_build_guidance_passes_the_switches(tiny_sd_dir):
    from diffusers.models.attention_processor import AttnProcessor

    sd_cfg = StableDiffusionConfig(model=str(tiny_sd_dir), vae_resolution=16, attention="classic", channels_last=True)
    cfg = Config(prompt="a red cube", guidance=GuidanceConfig(view_dependent=False, stable_diffusion=sd_cfg))
    guidance = build_guidance(cfg, "cpu")
    assert isinstance(guidance, SDSGuidance)
    sd = guidance.predictor
    assert all(isinstance(p, AttnProcessor) for p in sd.unet.attn_processors.values())
    assert all(isinstance(p, AttnProcessor) for p in sd.vae.attn_processors.values())
    assert sd.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


# --- exact twins: same maths, other kernels -----------------------------------------------------------

def test_sdpa_matches_classic_attention(tiny_sd_dir, plain):
    from diffusers.models.attention_processor import AttnProcessor2_0

    sd = load(tiny_sd_dir, attention="sdpa")
    assert sd.unet.attn_processors and all(isinstance(p, AttnProcessor2_0) for p in sd.unet.attn_processors.values())
    assert sd.vae.attn_processors and all(isinstance(p, AttnProcessor2_0) for p in sd.vae.attn_processors.values())
    fast = outputs(sd)
    for key in plain:
        assert torch.allclose(fast[key], plain[key], atol=1e-5, rtol=0), key


def test_channels_last_matches_contiguous(tiny_sd_dir, plain):
    sd = load(tiny_sd_dir, attention="classic", channels_last=True)
    convs = [m.weight for m in (*sd.unet.modules(), *sd.vae.modules()) if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs if w.shape[-1] > 1)
    fast = outputs(sd)
    for key in plain:
        assert torch.allclose(fast[key], plain[key], atol=1e-5, rtol=0), key


@pytest.mark.slow  # inductor compiles C++ on CPU: 3 min on the shared 2-core dev machine
def test_compiled_unet_matches_eager(tiny_sd_dir, plain):
    torch._dynamo.reset()
    sd = load(tiny_sd_dir, attention="classic", compile=True)
    fast = outputs(sd)
    assert torch.allclose(fast["eps"], plain["eps"], atol=1e-5, rtol=0)


# --- reduced precision: a stated tolerance ------------------------------------------------------------

# bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 0.2 %) and the rounding compounds layer by
# layer. Measured on the tiny model (rel_error): eps 1.3 %, latents 1.1 %, image gradient 2.5 %.
# The bounds leave about 2x headroom.
BF16_TOLERANCE = {"eps": 0.03, "latents": 0.03, "grad": 0.05}


def test_bf16_on_cpu_is_close_to_fp32(tiny_sd_dir, plain):
    sd = load(tiny_sd_dir, attention="classic", dtype="bf16")
    assert sd.unet.dtype == torch.bfloat16 and sd.vae.dtype == torch.bfloat16
    fast = outputs(sd)
    for key, tol in BF16_TOLERANCE.items():
        assert rel_error(fast[key], plain[key]) < tol, (key, rel_error(fast[key], plain[key]))


def test_bf16_sds_gradient_is_close_to_fp32(tiny_sd_dir):
    """The whole SDS step in bf16 against fp32: same seed, same t and noise, d loss / d images compared."""
    def image_grad(sd):
        images = inputs()[2].requires_grad_(True)
        guidance = SDSGuidance(sd, GuidanceConfig(guidance_scale=7.5, view_dependent=False), "a red cube")
        out = guidance(images, None, 0, 100, torch.Generator().manual_seed(3))
        out["loss_sds"].backward()
        return images.grad

    reference = image_grad(load(tiny_sd_dir))
    test = image_grad(load(tiny_sd_dir, dtype="bf16"))
    # guidance scale 7.5 amplifies the eps error (s (eps_c - eps_u)); measured 4.0 %
    assert rel_error(test, reference) < 0.08


# --- CUDA ----------------------------------------------------------------------------------------------

# fp16 keeps 11 mantissa bits: 8x less rounding than bf16, so the bf16 bounds hold with room.
FP16_TOLERANCE = BF16_TOLERANCE


@pytest.mark.gpu
@cuda
def test_fp16_on_cuda_is_close_to_fp32(tiny_sd_dir):
    reference = outputs(load(tiny_sd_dir, "cuda", dtype="fp32", attention="classic"), "cuda")
    fast = outputs(load(tiny_sd_dir, "cuda", dtype="fp16", attention="sdpa", channels_last=True), "cuda")
    for key, tol in FP16_TOLERANCE.items():
        assert rel_error(fast[key], reference[key]) < tol, (key, rel_error(fast[key], reference[key]))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("switch", [{"attention": "sdpa"}, {"channels_last": True}])
def test_exact_twins_on_cuda_fp32(tiny_sd_dir, switch, monkeypatch):
    # TF32 would make both sides differ from each other by more than 1e-5: compare true fp32.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    reference = outputs(load(tiny_sd_dir, "cuda", dtype="fp32", attention="classic"), "cuda")
    fast = outputs(load(tiny_sd_dir, "cuda", dtype="fp32", **{"attention": "classic", **switch}), "cuda")
    for key in reference:
        assert torch.allclose(fast[key], reference[key], atol=1e-5, rtol=0), key


@pytest.mark.gpu
@cuda
def test_compiled_unet_on_cuda_matches_eager(tiny_sd_dir):
    torch._dynamo.reset()
    reference = outputs(load(tiny_sd_dir, "cuda", dtype="fp16"), "cuda")
    fast = outputs(load(tiny_sd_dir, "cuda", dtype="fp16", compile=True), "cuda")
    assert rel_error(fast["eps"], reference["eps"]) < FP16_TOLERANCE["eps"]
