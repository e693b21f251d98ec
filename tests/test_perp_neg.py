"""Perp-Neg (guidance/rules/perp_neg.py) against closed forms: the perpendicular component, the per-view prompts and
weights at hand-picked azimuths, and the guided noise of a hand-built predictor whose noise prediction is its
text embedding, replayed with numpy from the paper's formula; then through the tiny Stable Diffusion (epsilon and
v-prediction), whose one batched UNet call is compared with four separate direct UNet calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dreamfusion.config import Config, GuidanceConfig, PerpNegConfig, StableDiffusionConfig, load_config
from dreamfusion.errors import ConfigError
from dreamfusion.guidance import build_guidance
from dreamfusion.guidance.rules.perp_neg import (PerpNegGuidance, perp_neg_noise, perp_neg_prompts,
                                           perpendicular_component, weight_curve)
from dreamfusion.guidance.prompts import TextConditioning
from render.cameras import Cameras, camera_position, look_at

DEFAULTS = PerpNegConfig()


def cameras(elevations, azimuths) -> Cameras:
    el, az = torch.tensor(elevations, dtype=torch.float32), torch.tensor(azimuths, dtype=torch.float32)
    dist = torch.full_like(el, 2.0)
    return Cameras(look_at(camera_position(el, az, dist)), torch.full_like(el, 0.8), el, az, dist)


def test_perpendicular_component_is_orthogonal_and_completes_the_projection():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    perp = perpendicular_component(a, b)
    assert torch.allclose((perp * b).flatten(1).sum(1), torch.zeros(3), atol=1e-4)  # per view, over all entries
    proj = a - perp
    ratio = proj.flatten(1) / b.flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4)  # the rest is parallel to b
    assert torch.equal(perpendicular_component(a, torch.zeros_like(b)), a)


def test_view_weights_at_the_anchor_azimuths():
    f = lambda abc, r: abc[0] * math.exp(-abc[1] * r) + abc[2]  # noqa: E731
    e = {k: torch.full((1, 2, 3), float(i)) for i, k in enumerate(("front", "side", "back", "overhead"))}
    cond = TextConditioning(uncond=torch.zeros(1, 2, 3), cond=e)
    pos, neg, w = perp_neg_prompts(cond, cameras([0, 0, 10, 10, 10, 70], [0, 45, 90, 135, 180, -90]), DEFAULTS)
    # front: pure front, pushed from side by f_sf(0) = 4 - 2.426; from front by f_fs(1) = 4 e^-0.5 - 2.426 ~ 0
    assert torch.equal(pos[0], e["front"][0]) and w[0].tolist() == pytest.approx([f((4, .5, -2.426), 1), 1.574])
    assert abs(w[0, 0]) < 1e-3
    assert torch.allclose(pos[1], 0.5 * e["front"][0] + 0.5 * e["side"][0])  # 45 degrees: halfway
    assert w[1].tolist() == pytest.approx([f((4, .5, -2.426), 0.5), f((4, .5, -2.426), 0.5)])
    # side (90): the side-back branch at r = 1: side ~ 0, front f_fsb(1) = e^-0.5 + 0.967
    assert torch.equal(pos[2], e["side"][0]) and w[2].tolist() == pytest.approx([math.exp(-.5) - .606,
                                                                               math.exp(-.5) + .967], abs=1e-6)
    assert torch.allclose(pos[3], 0.5 * e["side"][0] + 0.5 * e["back"][0])  # 135
    assert torch.equal(pos[4], e["back"][0]) and w[4].tolist() == pytest.approx([1 - .606, 1 + .967], abs=1e-6)
    assert torch.equal(neg[4, 0], e["side"][0]) and torch.equal(neg[4, 1], e["front"][0])
    assert torch.equal(pos[5], e["overhead"][0]) and w[5].tolist() == [0.0, 0.0]  # overhead: no negatives
    assert weight_curve((4, 0.5, -2.426), 1.0) == pytest.approx(0.0, abs=2e-4)


class EmbeddingIsNoise:
    """A hand-built text-conditioned predictor: eps(x_t, t, e) = e[0, :] as a [4, 1, 1] latent (linear in e)."""

    alphas_cumprod = torch.linspace(0.999, 0.01, 1000)

    def __init__(self, cond: TextConditioning):
        self.cond = cond

    def encode(self, images):
        return images.permute(0, 3, 1, 2)

    def encode_prompt(self, prompt, negative_prompt, view_dependent):
        return self.cond

    def predict_eps(self, x_t, t, embeddings):  # [K, B, L, D] -> [K, B, 4, 1, 1]
        return embeddings[:, :, 0, :4, None, None].clone()

    def predict_noise(self, x_t, t, cameras, cond):
        raise AssertionError("Perp-Neg must not fall back to plain classifier-free guidance")


def test_guided_noise_equals_the_closed_form_on_a_hand_built_predictor():
    rng = np.random.default_rng(3)
    vec = {k: rng.normal(size=4) for k in ("uncond", "front", "side", "back", "overhead")}
    as_emb = lambda v: torch.tensor(v, dtype=torch.float32).view(1, 1, 4)  # noqa: E731
    cond = TextConditioning(uncond=as_emb(vec["uncond"]), cond={k: as_emb(vec[k]) for k in
                                                                ("front", "side", "back", "overhead")})
    cfg = GuidanceConfig(type="perp_neg", guidance_scale=7.5)
    guidance = PerpNegGuidance(EmbeddingIsNoise(cond), cfg, "a hamburger")
    cams = cameras([10.0, 20.0], [30.0, -150.0])
    got = guidance.guided_noise(torch.zeros(2, 4, 1, 1), torch.tensor([500, 500]), cams)[:, :, 0, 0].numpy()

    def perp(a, b):
        return a - (a @ b) / (b @ b) * b

    u = vec["uncond"]
    f = lambda a, b, c, r: a * math.exp(-b * r) + c  # noqa: E731
    r = 1 - 30 / 90  # front-side, 2/3 front
    d_pos = r * vec["front"] + (1 - r) * vec["side"] - u
    want0 = u + 7.5 * (d_pos - f(4, .5, -2.426, r) * perp(vec["front"] - u, d_pos)
                       - f(4, .5, -2.426, 1 - r) * perp(vec["side"] - u, d_pos))
    r = 2 - 150 / 90  # side-back, 1/3 side
    d_pos = r * vec["side"] + (1 - r) * vec["back"] - u
    want1 = u + 7.5 * (d_pos - f(1, .5, -.606, r) * perp(vec["side"] - u, d_pos)
                       - f(1, .5, .967, r) * perp(vec["front"] - u, d_pos))
    np.testing.assert_allclose(got, np.stack([want0, want1]), rtol=1e-5, atol=1e-5)


def test_config_and_builder(tiny_sd_dir):
    with pytest.raises(ConfigError, match="view_dependent=true"):
        load_config(None, ["guidance.type=perp_neg", "guidance.view_dependent=false"])
    with pytest.raises(ConfigError, match="three numbers"):
        load_config(None, ["guidance.perp_neg.f_fs=[1,2]"])
    cfg = Config(prompt="a corgi", guidance=GuidanceConfig(type="perp_neg", stable_diffusion=StableDiffusionConfig(model=str(tiny_sd_dir), vae_resolution=16)))
    guidance = build_guidance(cfg, "cpu")
    assert isinstance(guidance, PerpNegGuidance)
    images = torch.rand(2, 8, 8, 3, requires_grad=True)
    out = guidance(images, cameras([10.0, 70.0], [100.0, 0.0]), 0, 100, torch.Generator().manual_seed(0))
    out["loss_sds"].backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_perp_neg_on_sd_matches_the_rule_on_direct_unet_calls(kind, request):
    """guided_noise's one UNet forward at batch 4B against the rule on four separate direct UNet calls (uncond,
    positive, each negative), a v output converted in closed form: eps = sqrt(abar) v + sqrt(1 - abar) x_t."""
    model = request.getfixturevalue("tiny_sd_dir" if kind == "epsilon" else "tiny_sd_v_dir")
    cfg = Config(prompt="a red cube", negative_prompt="blurry",
                 guidance=GuidanceConfig(type="perp_neg", stable_diffusion=StableDiffusionConfig(model=str(model), vae_resolution=16)))
    g = cfg.guidance
    guidance = build_guidance(cfg, "cpu")
    assert isinstance(guidance, PerpNegGuidance)
    unet, views = guidance.predictor.unet, cameras([0.0, 10.0, 70.0], [30.0, 150.0, 0.0])  # front-side, back, top
    x_t, t = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([100, 500, 900])
    abar = guidance.predictor.alphas_cumprod[t].view(3, 1, 1, 1)
    positive, negatives, weights = perp_neg_prompts(guidance.cond, views, g.perp_neg)
    eps = []
    with torch.no_grad():
        for e in (guidance.cond.uncond.expand(3, -1, -1), positive, negatives[:, 0], negatives[:, 1]):
            out = unet(x_t, t, encoder_hidden_states=e).sample
            eps.append(abar.sqrt() * out + (1 - abar).sqrt() * x_t if kind == "v_prediction" else out)
    expected = perp_neg_noise(eps[0], eps[1], torch.stack(eps[2:], 1), weights, g.guidance_scale)
    got = guidance.guided_noise(x_t, t, views)
    # batch 12 vs 4 x batch 3: float rounding of the UNet (~1e-6) times the guidance scale 100 and the projections;
    # measured 2.7e-4 (epsilon) and 1.5e-4 (v) of |eps_hat| up to 19; 7.0 with the negatives swapped, 226 with
    # predict_eps's batch laid out B-major (repeat_interleave) against the K-major embeddings
    assert (got - expected).abs().max().item() < 1e-3
