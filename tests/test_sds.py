"""SDS rule, schedules, prompts and the Stable Diffusion wrapper, on a tiny random SD folder (no network)."""

from __future__ import annotations

import math
import shutil
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from dreamfusion.config import Config, GuidanceConfig, StableDiffusionConfig
from dreamfusion.errors import ConfigError, ModelNotFoundError, UserError
from dreamfusion.settings import replace_key
from dreamfusion.guidance import SDSGuidance, StableDiffusion, build_guidance, view_label, view_prompts
from dreamfusion.guidance.models.prediction import classifier_free_guidance, eps_from_prediction, prediction_target
from dreamfusion.guidance.rules.sds import sample_timesteps, sds_weight, t_range
from model_folders import with_prediction_type

try:
    from render.cameras import Cameras
except ImportError:  # written concurrently; the guidance only reads .elevation and .azimuth
    class Cameras(NamedTuple):
        c2w: torch.Tensor
        fovy: torch.Tensor
        elevation: torch.Tensor
        azimuth: torch.Tensor
        distance: torch.Tensor


def make_cameras(elevation, azimuth) -> Cameras:
    n = len(elevation)
    return Cameras(c2w=torch.eye(4).expand(n, 4, 4).clone(), fovy=torch.full((n,), 0.8),
                   elevation=torch.tensor(elevation, dtype=torch.float32),
                   azimuth=torch.tensor(azimuth, dtype=torch.float32), distance=torch.full((n,), 1.75))


def sd_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion's scaled_linear DDPM schedule in closed form (beta 0.00085 -> 0.012, 1000 steps)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


@pytest.fixture(scope="module")
def tiny_sd(tiny_sd_dir):
    return StableDiffusion.load(str(tiny_sd_dir), vae_resolution=16)


@pytest.fixture(scope="module")
def tiny_cond(tiny_sd):
    return tiny_sd.encode_prompt("a red cube", "blurry")


def eps_closed_form(out, x_t, abar, kind: str):
    """eps from a UNet output: v -> sqrt(abar) v + sqrt(1 - abar) x_t, x0 -> (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    a = abar.view(-1, *[1] * (x_t.dim() - 1))
    if kind == "v_prediction":
        return a.sqrt() * out + (1 - a).sqrt() * x_t
    return (x_t - a.sqrt() * out) / (1 - a).sqrt() if kind == "sample" else out


@pytest.fixture(scope="module")
def tiny_sd_v(tiny_sd_dir, tmp_path_factory):
    """The tiny Stable Diffusion with a v-prediction scheduler (SD 2.x at 768 px is one), loaded as users load it."""
    return StableDiffusion.load(str(with_prediction_type(tiny_sd_dir, tmp_path_factory.mktemp("v"), "v_prediction")),
                                vae_resolution=16)


# --- the rule and its schedules -------------------------------------------------------------------

def test_classifier_free_guidance_hand_values():
    eps_u, eps_c = torch.tensor([1.0, 2.0, -0.5]), torch.tensor([3.0, -2.0, -0.5])
    assert classifier_free_guidance(eps_u, eps_c, 100.0).tolist() == [201.0, -398.0, -0.5]
    assert classifier_free_guidance(eps_u, eps_c, 0.0).tolist() == eps_u.tolist()
    assert classifier_free_guidance(eps_u, eps_c, 1.0).tolist() == eps_c.tolist()
    # threestudio's eps_c + s (eps_c - eps_u) is our scale s + 1
    assert classifier_free_guidance(eps_u, eps_c, 8.5).tolist() == (eps_c + 7.5 * (eps_c - eps_u)).tolist()


@pytest.mark.parametrize("anneal, expected", [
    ("none", [0.98, 0.98, 0.98]),
    ("linear", [0.98, 0.74, 0.5]),
    ("sqrt", [0.98, 0.98 - 0.48 * math.sqrt(0.5), 0.5]),
])
def test_t_range_schedules(anneal, expected):
    for step, hi in zip([0, 500, 1000], expected):
        lo_got, hi_got = t_range(step, 1000, 0.02, 0.98, anneal, 0.5)
        assert lo_got == 0.02
        assert hi_got == pytest.approx(hi, abs=1e-12)
    assert t_range(5000, 1000, 0.02, 0.98, anneal, 0.5)[1] == pytest.approx(expected[-1])  # past the end: held


def test_t_range_never_below_t_min_and_rejects_unknown():
    assert t_range(1000, 1000, 0.3, 0.98, "linear", 0.1) == (0.3, 0.3)
    with pytest.raises(ValueError, match="cosine"):
        t_range(0, 10, 0.02, 0.98, "cosine", 0.5)


def test_sample_timesteps_uniform_integers_in_range():
    gen = torch.Generator().manual_seed(0)
    t = sample_timesteps(20000, 0.02, 0.98, 1000, gen)
    assert t.dtype == torch.long and t.shape == (20000,)
    assert t.min().item() == 20 and t.max().item() == 980  # inclusive ends
    assert torch.equal(t, torch.randint(20, 981, (20000,), generator=torch.Generator().manual_seed(0)))
    assert sample_timesteps(5, 0.5, 0.5, 1000, gen).tolist() == [500] * 5


def test_sds_weight_closed_forms():
    abar = torch.tensor([0.99, 0.5, 0.01])
    assert torch.allclose(sds_weight(abar, "sds"), torch.tensor([0.01, 0.5, 0.99]))
    assert torch.equal(sds_weight(abar, "uniform"), torch.ones(3))
    assert torch.allclose(sds_weight(abar, "fantasia3d"),
                          torch.tensor([0.99 ** 0.5 * 0.01, 0.5 ** 0.5 * 0.5, 0.1 * 0.99]))
    with pytest.raises(ValueError, match="snr"):
        sds_weight(abar, "snr")


class ConstantPredictor:
    """A closed-form stand-in: x0 = the image itself, fixed noise predictions."""

    def __init__(self, eps_u: torch.Tensor, eps_c: torch.Tensor):
        self.alphas_cumprod = sd_alphas_cumprod()
        self.eps_u, self.eps_c = eps_u, eps_c
        self.x0 = None

    def encode(self, images):
        self.x0 = images.permute(0, 3, 1, 2)
        self.x0.retain_grad()
        return self.x0

    def encode_prompt(self, prompt, negative_prompt, view_dependent):
        return None

    def predict_noise(self, x_t, t, cameras, cond):
        return self.eps_u.expand_as(x_t), self.eps_c.expand_as(x_t)


def test_grad_clip_clamps_and_nan_becomes_zero():
    eps_c = torch.full((1, 3, 4, 4), 50.0)
    eps_c[0, 0, 0, 0] = float("nan")
    predictor = ConstantPredictor(torch.zeros(1, 3, 4, 4), eps_c)
    cfg = GuidanceConfig(guidance_scale=1.0, grad_clip=0.25, t_min=0.5, t_max=0.5)
    images = torch.rand(2, 4, 4, 3, requires_grad=True)
    out = SDSGuidance(predictor, cfg, "a red cube")(images, None, 0, 10, torch.Generator().manual_seed(0))
    out["loss_sds"].backward()
    # t = 500 exactly; w = 1 - abar_500 ~ 0.72, |eps| < 6, so w (50 - eps) > 0.25 everywhere: all clipped
    assert out["t"] == 0.5
    grad = predictor.x0.grad * 2  # d loss / d x0 = grad / B
    assert grad[0, 0, 0, 0].item() == 0.0 and grad[1, 0, 0, 0].item() == 0.0  # NaN -> 0
    clipped = torch.ones_like(grad, dtype=torch.bool)
    clipped[:, 0, 0, 0] = False
    assert torch.allclose(grad[clipped], torch.full_like(grad[clipped], 0.25))
    assert out["loss_sds"].item() == pytest.approx(0.5 * 0.25 ** 2 * (2 * 48 - 2) / 2)


def test_sds_gradient_on_x0_matches_rule_with_constant_predictor():
    eps_u, eps_c = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    predictor = ConstantPredictor(eps_u, eps_c)
    cfg = GuidanceConfig(guidance_scale=100.0, weighting="fantasia3d")
    images = torch.rand(3, 4, 4, 3, requires_grad=True)
    out = SDSGuidance(predictor, cfg, "a red cube")(images, None, 0, 10, torch.Generator().manual_seed(7))
    out["loss_sds"].backward()
    gen = torch.Generator().manual_seed(7)
    t = torch.randint(20, 981, (3,), generator=gen)
    eps = torch.randn(3, 3, 4, 4, generator=gen)
    abar = sd_alphas_cumprod()[t].view(3, 1, 1, 1)
    expected = abar.sqrt() * (1 - abar) * (eps_u + 100.0 * (eps_c - eps_u) - eps)
    assert torch.allclose(predictor.x0.grad, expected / 3, atol=1e-5)
    assert torch.allclose(images.grad, (expected / 3).permute(0, 2, 3, 1), atol=1e-5)
    assert out["t"] == pytest.approx(t.float().mean().item() / 1000)
    assert out["grad_norm"] == pytest.approx(expected.flatten(1).norm(dim=1).mean().item(), rel=1e-5)


# --- prompts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("elevation, azimuth, label", [
    (0, 0, "front"), (0, 44.9, "front"), (0, -44.9, "front"), (0, 45, "side"), (0, -45, "side"),
    (0, 90, "side"), (0, -90, "side"), (0, 135, "side"), (0, -135, "side"), (0, 135.1, "back"),
    (0, -180, "back"), (0, 179, "back"), (0, 200, "back"), (60, 0, "front"), (60.1, 0, "overhead"),
    (89, 180, "overhead"), (-10, 30, "front"),
])
def test_view_label_table(elevation, azimuth, label):
    assert view_label([elevation], [azimuth]) == [label]


def test_view_label_batch_and_prompts():
    cams = make_cameras([0.0, 0.0, 70.0], [10.0, -150.0, 90.0])
    assert view_label(cams.elevation, cams.azimuth) == ["front", "back", "overhead"]
    assert view_prompts("a red cube") == {"front": "a red cube, front view", "side": "a red cube, side view",
                                          "back": "a red cube, back view", "overhead": "a red cube, overhead view"}


# --- loading ---------------------------------------------------------------------------------------

def test_missing_folder_is_one_line_model_not_found(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelNotFoundError) as info:
        StableDiffusion.load(missing)
    msg = str(info.value)
    assert "\n" not in msg and missing in msg
    assert "hf download" in msg and "guidance.stable_diffusion.model=" in msg and "--config demo" in msg


def test_unreachable_hub_id_is_one_line_model_not_found():
    with pytest.raises(ModelNotFoundError) as info:  # HF_HUB_OFFLINE=1 (conftest): fails without the network
        StableDiffusion.load("no-such-org/no-such-model")
    msg = str(info.value)
    assert "\n" not in msg and "no-such-org/no-such-model" in msg
    assert "hf download no-such-org/no-such-model --local-dir" in msg


def test_unreachable_hub_falls_back_to_cache_at_once(monkeypatch):
    """HF_HUB_OFFLINE unset but no network: one failed probe, then the cache only (no retry backoff)."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    calls = []

    def no_network(repo_id, **kwargs):
        calls.append(repo_id)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    with pytest.raises(ModelNotFoundError, match="not in the local cache and the hub is unreachable") as info:
        StableDiffusion.load("some-org/some-model")
    assert calls == ["some-org/some-model"] and "\n" not in str(info.value)

    def not_found(repo_id, **kwargs):
        err = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
        Exception.__init__(err, "401 Client Error")
        raise err

    monkeypatch.setattr(huggingface_hub, "model_info", not_found)
    with pytest.raises(ModelNotFoundError, match=r"'some-org/typo' is not on the hub \(misspelt"):
        StableDiffusion.load("some-org/typo")


def test_folder_missing_unet_names_it(tiny_sd_dir, tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(tiny_sd_dir, folder, ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(ModelNotFoundError, match=r"no unet/ subfolder") as info:
        StableDiffusion.load(str(folder))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_user_error(tiny_sd, prompt):
    with pytest.raises(UserError, match=r'prompt is empty: pass prompt="..."'):
        tiny_sd.encode_prompt(prompt)


def test_one_loaded_model_serves_many_prompts(tiny_sd):
    """encode_prompt is independent per prompt: the same model embeds two prompts, each as if it were alone."""
    red, blue = tiny_sd.encode_prompt("a red cube", "", False), tiny_sd.encode_prompt("a blue ball", "", False)
    tok = tiny_sd.tokenizer
    for cond, text in ((red, "a red cube"), (blue, "a blue ball")):
        ids = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        assert torch.equal(cond.cond["all"], tiny_sd.text_encoder(ids)[0])
    assert not torch.equal(red.cond["all"], blue.cond["all"])


def test_long_prompt_warns_once_and_loads(tiny_sd, capsys):
    sd = tiny_sd
    cond = sd.encode_prompt("cube " * 100)
    err = capsys.readouterr().err
    assert err.count("truncated") == 1
    # "cube" is one token, plus start/end tokens; the longest text is the one with ", overhead view"
    n = len(sd.tokenizer("cube " * 100 + ", overhead view").input_ids)
    assert f"it is {n} tokens" in err and f"the last {n - 77} are ignored" in err
    assert cond.cond["front"].shape == (1, 77, 32)


def test_text_embeddings_are_the_text_encoder_outputs(tiny_sd, tiny_cond):
    tok = tiny_sd.tokenizer
    for key, text in [("front", "a red cube, front view"), ("overhead", "a red cube, overhead view")]:
        ids = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        assert torch.allclose(tiny_cond.cond[key], tiny_sd.text_encoder(ids)[0])
    ids = tok("blurry", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.allclose(tiny_cond.uncond, tiny_sd.text_encoder(ids)[0])
    assert not any(p.requires_grad for p in tiny_sd.unet.parameters())
    assert torch.allclose(tiny_sd.alphas_cumprod, sd_alphas_cumprod(), atol=1e-6)


def test_encode_shape_and_gradient(tiny_sd_dir):
    sd = StableDiffusion.load(str(tiny_sd_dir), vae_resolution=32)
    sd.vae.double()  # float64 so that central differences are an exact enough oracle
    sd.dtype = torch.float64
    images = torch.rand(2, 12, 12, 3, dtype=torch.float64, requires_grad=True)
    latents = sd.encode(images)
    assert latents.shape == (2, 4, 16, 16)  # the 2-block VAE downsamples 2x
    # oracle: the same VAE called directly on the resized image
    x = F.interpolate(images.detach().permute(0, 3, 1, 2), size=(32, 32), mode="bilinear", align_corners=False)
    direct = sd.vae.encode(2 * x - 1).latent_dist.mean * sd.vae.config.scaling_factor
    assert torch.allclose(latents, direct, atol=1e-12)
    v = torch.randn_like(latents)
    (latents * v).sum().backward()
    # directional derivative check against central differences
    u = torch.randn_like(images)
    h = 1e-4
    with torch.no_grad():
        fd = ((sd.encode(images + h * u) - sd.encode(images - h * u)) * v).sum() / (2 * h)
    assert (images.grad * u).sum().item() == pytest.approx(fd.item(), rel=1e-5)


# --- the rule on the tiny Stable Diffusion -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_sds_gradient_on_tiny_sd_matches_independent_computation(kind, request):
    """Epsilon and v-prediction (whose v the replay converts to eps in closed form: SDS needs the noise)."""
    tiny_sd = request.getfixturevalue("tiny_sd" if kind == "epsilon" else "tiny_sd_v")

    class Recording:  # the same predictor, keeping x0 to read its gradient
        alphas_cumprod = tiny_sd.alphas_cumprod
        predict_noise = staticmethod(tiny_sd.predict_noise)
        encode_prompt = staticmethod(tiny_sd.encode_prompt)

        def encode(self, images):
            self.x0 = tiny_sd.encode(images)
            self.x0.retain_grad()
            return self.x0

    predictor = Recording()
    cfg = GuidanceConfig(guidance_scale=7.5, t_anneal="linear", t_max_end=0.5)
    cameras = make_cameras([10.0, 5.0], [20.0, 170.0])  # front, back
    images = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(3)).requires_grad_()
    guidance = SDSGuidance(predictor, cfg, "a red cube", "blurry")
    out = guidance(images, cameras, 300, 1000, torch.Generator().manual_seed(1234))
    out["loss_sds"].backward()

    # independently: t in [20, round(1000 (0.98 - 0.48 * 0.3))] = [20, 836], then eps, from the same seed
    gen = torch.Generator().manual_seed(1234)
    t = torch.randint(20, 837, (2,), generator=gen)
    x0 = tiny_sd.vae.encode(images.detach().permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean * 0.18215
    eps = torch.randn(x0.shape, generator=gen)
    abar = sd_alphas_cumprod()[t].view(2, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    cond = guidance.cond
    emb = torch.cat([cond.uncond, cond.uncond, cond.cond["front"], cond.cond["back"]])
    with torch.no_grad():
        raw = tiny_sd.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=emb).sample
    eps_u, eps_c = eps_closed_form(raw, torch.cat([x_t, x_t]), torch.cat([abar, abar]), kind).chunk(2)
    grad = (1 - abar) * (eps_u + 7.5 * (eps_c - eps_u) - eps)

    assert torch.allclose(predictor.x0.grad, grad / 2, atol=1e-5, rtol=1e-4)  # d loss / d x0 = grad / B
    assert out["loss_sds"].item() == pytest.approx(0.5 * (grad ** 2).sum().item() / 2, rel=1e-5)
    assert out["t"] == pytest.approx(t.float().mean().item() / 1000)
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_prediction_conversion_inverts_diffusers_forward_process():
    """Round trip through diffusers' own DDPMScheduler: x_t = add_noise(x0, eps, t), v = get_velocity(x0, eps, t);
    eps comes back from v (or from x0), and the training targets are eps, v, x0."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 4, 3, 3, generator=g), torch.randn(4, 4, 3, 3, generator=g)
    t = torch.tensor([0, 1, 500, 999])
    x_t, v = scheduler.add_noise(x0, eps, t), scheduler.get_velocity(x0, eps, t)
    abar = scheduler.alphas_cumprod[t]
    torch.testing.assert_close(eps_from_prediction(v, x_t, abar, "v_prediction"), eps, atol=1e-5, rtol=1e-5)
    # x0 -> eps divides by sqrt(1 - abar_0) = 0.029 at t = 0, so float32 rounding grows ~34x there
    torch.testing.assert_close(eps_from_prediction(x0, x_t, abar, "sample"), eps, atol=2e-4, rtol=1e-4)
    assert eps_from_prediction(eps, x_t, abar, "epsilon") is eps
    for kind, want in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
        torch.testing.assert_close(prediction_target(x0, eps, abar, kind), want, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="flow"):
        eps_from_prediction(v, x_t, abar, "flow")


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_predict_eps_converts_a_v_or_x0_unet_to_noise(tiny_sd_dir, tmp_path, kind):
    """A tiny UNet whose scheduler says it predicts v (or x0), loaded through StableDiffusion.load: predict_eps and
    predict_noise (what SDS, Perp-Neg, VSD and the 2D preview call) give eps, the UNet's raw output converted in
    closed form; at c5a276d they returned the raw output."""
    sd = StableDiffusion.load(str(with_prediction_type(tiny_sd_dir, tmp_path, kind)), vae_resolution=16)
    cond = sd.encode_prompt("a red cube", "blurry", view_dependent=False)
    g = torch.Generator().manual_seed(2)
    x_t, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([30, 800])
    emb = torch.stack([cond.uncond.expand(2, -1, -1), cond.cond["all"].expand(2, -1, -1)])  # [2, B, 77, 32]
    with torch.no_grad():
        raw = torch.stack([sd.unet(x_t, t, encoder_hidden_states=e).sample for e in emb])
    abar = sd_alphas_cumprod()[t]
    want = torch.stack([eps_closed_form(r, x_t, abar, kind) for r in raw])
    assert (want - raw).abs().max() > 0.1  # the conversion is not a no-op here
    torch.testing.assert_close(sd.predict_eps(x_t, t, emb), want, atol=1e-5, rtol=1e-4)
    eps_u, eps_c = sd.predict_noise(x_t, t, None, cond)
    torch.testing.assert_close(torch.stack([eps_u, eps_c]), want, atol=1e-5, rtol=1e-4)
    assert sd.prediction_type == kind


def test_unknown_prediction_type_is_one_line(tiny_sd_dir, tmp_path):
    folder = with_prediction_type(tiny_sd_dir, tmp_path, "flow_prediction")
    with pytest.raises(ModelNotFoundError, match="has prediction_type 'flow_prediction': dreamfusion reads epsilon, "
                                                 "v_prediction, sample models") as info:
        StableDiffusion.load(str(folder), vae_resolution=16)
    assert "\n" not in str(info.value)


def test_build_guidance_from_config(tiny_sd_dir):
    cfg = Config(prompt="a red cube", guidance=GuidanceConfig(stable_diffusion=StableDiffusionConfig(model=str(tiny_sd_dir), vae_resolution=16),
                                                              view_dependent=False))
    guidance = build_guidance(cfg, "cpu")
    assert isinstance(guidance, SDSGuidance) and set(guidance.cond.cond) == {"all"}
    out = guidance(torch.rand(1, 8, 8, 3, requires_grad=True), None, 0, 100, torch.Generator().manual_seed(0))
    assert set(out) == {"loss_sds", "grad_norm", "t"} and out["loss_sds"].requires_grad
    cfg = replace_key(cfg, "guidance.type", "nope")
    with pytest.raises(ConfigError, match="nope"):
        build_guidance(cfg, "cpu")


# --- the text window and parts that do not fit together -------------------------------------------------

def _variant(tiny_sd_dir, tmp_path, name, *, drop_tokenizer_keys=(), tokenizer_keys=None, text_encoder=None):
    """A copy of the tiny SD folder with keys dropped from or set in tokenizer_config.json, or another text encoder."""
    import json

    folder = tmp_path / name
    shutil.copytree(tiny_sd_dir, folder)
    config_path = folder / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for key in drop_tokenizer_keys:
        config.pop(key)
    config.update(tokenizer_keys or {})
    config_path.write_text(json.dumps(config))
    if text_encoder is not None:
        shutil.rmtree(folder / "text_encoder")
        text_encoder.save_pretrained(folder / "text_encoder")
    return folder


def _text_encoder(vocab_size, hidden_size=32):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                        pad_token_id=vocab_size - 1, projection_dim=32))


def test_tokenizer_without_model_max_length_uses_the_text_encoders_window(tiny_sd_dir, tmp_path):
    """A tokenizer_config.json without model_max_length reports ~1e30 tokens; padding to it overflowed. The text
    encoder's 77 position embeddings decide instead, and the embeddings are those of the complete folder."""
    from transformers import CLIPTokenizer

    folder = _variant(tiny_sd_dir, tmp_path, "no-max-length", drop_tokenizer_keys=["model_max_length"])
    assert CLIPTokenizer.from_pretrained(folder / "tokenizer").model_max_length > 10 ** 20  # the crash's cause
    sd = StableDiffusion.load(str(folder), vae_resolution=16)
    reference = StableDiffusion.load(str(tiny_sd_dir), vae_resolution=16)
    assert sd.context_length == reference.context_length == 77
    got, want = sd.encode_prompt("a red cube", "blurry"), reference.encode_prompt("a red cube", "blurry")
    assert got.cond.keys() == want.cond.keys()
    for key in want.cond:
        torch.testing.assert_close(got.cond[key], want.cond[key], atol=0, rtol=0)
    torch.testing.assert_close(got.uncond, want.uncond, atol=0, rtol=0)


def test_long_prompt_warning_reads_the_text_encoders_window(tiny_sd_dir, tmp_path, capsys):
    folder = _variant(tiny_sd_dir, tmp_path, "no-max-length", drop_tokenizer_keys=["model_max_length"])
    sd = StableDiffusion.load(str(folder), vae_resolution=16)
    sd.encode_prompt("cube " * 100)
    n = len(sd.tokenizer("cube " * 100 + ", overhead view").input_ids)
    assert f"it is {n} tokens (with the ', overhead view' suffix), the text encoder reads 77; the last {n - 77} " \
           f"are ignored" in capsys.readouterr().err


def test_text_parts_that_do_not_fit_together_are_one_line(tiny_sd_dir, tmp_path):
    from transformers import CLIPTokenizer

    vocab = len(CLIPTokenizer.from_pretrained(tiny_sd_dir / "tokenizer"))
    cases = {
        "small-vocab": (dict(text_encoder=_text_encoder(vocab - 100)),
                        f"tokenizer has {vocab} tokens but its text encoder embeds {vocab - 100}"),
        "narrow-encoder": (dict(text_encoder=_text_encoder(vocab, hidden_size=16)),
                           "text encoder gives 16-wide embeddings but its UNet attends to 32"),
        "no-pad-token": (dict(tokenizer_keys={"pad_token": None}), "tokenizer cannot pad prompts to 77 tokens"),
    }
    for name, (change, needle) in cases.items():
        folder = _variant(tiny_sd_dir, tmp_path, name, **change)
        with pytest.raises(ModelNotFoundError) as info:  # at load, or at the first prompt (the padding)
            StableDiffusion.load(str(folder), vae_resolution=16).encode_prompt("a red cube")
        message = str(info.value)
        assert needle in message and "\n" not in message, (name, message)


def test_no_window_anywhere_is_one_line(tiny_sd_dir):
    """A tokenizer without model_max_length and a text encoder without max_position_embeddings (duck-typed parts
    passed to the constructor): nothing says how long a prompt may be."""
    from transformers import CLIPTokenizer

    sd = StableDiffusion.load(str(tiny_sd_dir), vae_resolution=16)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_dir / "tokenizer", model_max_length=int(1e30))
    sd.text_encoder.config = type("Config", (), {"hidden_size": 32})()  # no max_position_embeddings
    with pytest.raises(ModelNotFoundError, match=r"tokenizer has no model_max_length and its text encoder no "
                                                 r"max_position_embeddings: add \"model_max_length\": 77") as info:
        StableDiffusion(tokenizer, sd.text_encoder, sd.unet, sd.vae, sd.scheduler, device=torch.device("cpu"),
                        dtype=torch.float32, vae_resolution=16)
    assert "\n" not in str(info.value)


def test_the_guidance_scale_convention_is_stated_where_users_set_it():
    """eps_u + s (eps_c - eps_u) (DreamFusion, diffusers); threestudio's eps_c + s' (eps_c - eps_u) is s' = s - 1:
    its 100 is 101 here. The README and the key's help say so."""
    from pathlib import Path

    from dreamfusion.cli.parser import help_text

    g = torch.Generator().manual_seed(0)
    eps_u, eps_c = torch.randn(2, 4, 8, 8, generator=g)
    threestudio = eps_c + 100.0 * (eps_c - eps_u)
    torch.testing.assert_close(classifier_free_guidance(eps_u, eps_c, 101.0), threestudio)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "`eps_u + s (eps_c - eps_u)`" in readme and "`guidance.guidance_scale=101` here" in readme
    assert "eps_u + s (eps_c - eps_u)" in help_text("run") and "its 100 is 101 here" in help_text("run")


def test_multi_view_predictor_gets_one_t_per_group():
    """A predictor with n_views = 4 (MVDream, the multi-view prior) denoises each group of four views at one t:
    the rule draws batch / 4 times and repeats each four times; the noise stays per view."""
    eps_u, eps_c = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    predictor = ConstantPredictor(eps_u, eps_c)
    predictor.n_views, seen = 4, []
    predictor.predict_noise = lambda x_t, t, cameras, cond: (seen.append(t) or (eps_u.expand_as(x_t),) * 2)
    images = torch.rand(8, 4, 4, 3, requires_grad=True)
    out = SDSGuidance(predictor, GuidanceConfig(guidance_scale=1.0, weighting="uniform"), "a red cube")(
        images, None, 0, 10, torch.Generator().manual_seed(3))
    out["loss_sds"].backward()
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(20, 981, (2,), generator=gen)
    eps = torch.randn(8, 3, 4, 4, generator=gen)
    assert torch.equal(seen[0], t.repeat_interleave(4))  # views 0-3 at t[0], views 4-7 at t[1]
    assert torch.allclose(predictor.x0.grad, -eps / 8, atol=1e-6)  # grad = 0 - eps, per view
