"""guidance.type=sdedit (guidance/rules/sdedit.py): an MSE to SDEdit-refined copies of the renders.

Oracles: a predictor whose data is one image y has the exact noise prediction (x_t - sqrt(a) y) / sqrt(1 - a), so
DDIM from any x_t ends at y (with guidance scale s between an unconditional y_u and a conditional y_c: at
y_u + s (y_c - y_u)); the start time against DreamGaussian's; the first denoiser call against the forward
process drawn from the same generator; the loss's gradient against 2 (render - refined) / N.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dreamfusion.config import load_config
from dreamfusion.errors import ConfigError
from dreamfusion.guidance import build_guidance, load_guidance_model
from dreamfusion.guidance.models.ddim import ddim_timesteps
from dreamfusion.guidance.models.prior import scaled_linear_alphas_cumprod
from dreamfusion.guidance.rules.sdedit import SDEditGuidance, sdedit_start
from render.cameras import orbit_cameras

R = 4  # the fake model's resolution


class OneImage:
    """Pixel-space predictor whose data is the single image y_c (conditional) or y_u (unconditional)."""

    clip_denoised = True

    def __init__(self, y_u, y_c):
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        self.y_u, self.y_c = y_u, y_c
        self.calls = []

    def encode_prompt(self, prompt, negative_prompt, view_dependent):
        return None

    def encode(self, images):  # [B, H, W, 3] in [0, 1] -> [B, 3, R, R] in [-1, 1]
        return F.interpolate(images.permute(0, 3, 1, 2), size=(R, R), mode="area") * 2 - 1

    def decode(self, x):
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    def predict_noise(self, x_t, t, cameras, cond):
        self.calls.append((x_t.clone(), t.clone()))
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return ((x_t - a.sqrt() * y) / (1 - a).sqrt() for y in (self.y_u, self.y_c))


def _rule(predictor, scale=1.0, strength=(0.8, 0.95), steps=50):
    cfg = load_config("demo", ["guidance.type=sdedit", f"guidance.guidance_scale={scale}",
                               f"guidance.sdedit.strength=[{strength[0]},{strength[1]}]",
                               f"guidance.sdedit.steps={steps}"]).guidance
    return SDEditGuidance(predictor, cfg, "a red cube")


def _images(seed=0, size=8):
    return torch.rand(2, size, size, 3, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def _targets(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 3, R, R, generator=g) * 0.8 - 0.4 for _ in range(2))


def test_the_refined_copy_is_the_models_image_resized_and_the_gradient_pulls_toward_it():
    y_u, y_c = _targets()
    rule = _rule(OneImage(y_u, y_c), scale=1.0)
    images = _images()
    out = rule(images, orbit_cameras(2, 15.0, 2.4, 45.0), 0, 10, torch.Generator().manual_seed(0))
    expected = F.interpolate(((y_c + 1) / 2).expand(2, -1, -1, -1), size=(8, 8), mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(out["loss_sdedit"], ((images - expected) ** 2).mean(), atol=1e-6)
    out["loss_sdedit"].backward()
    assert torch.allclose(images.grad, 2 * (images - expected).detach() / images.numel(), atol=1e-8)


def test_the_guidance_scale_extrapolates_from_the_unconditional_image():
    y_u, y_c = _targets()
    rule = _rule(OneImage(y_u, y_c), scale=2.0)
    refined, _ = rule.refine(_images(size=R), None, 0, 10, torch.Generator().manual_seed(0))
    expected = ((y_u + 2 * (y_c - y_u)).clamp(-1, 1) + 1) / 2  # clip_denoised: x0 estimates kept in [-1, 1]
    assert torch.allclose(refined, expected.permute(0, 2, 3, 1).expand(2, -1, -1, -1), atol=1e-5)


def test_the_start_time_follows_dreamgaussians_strength_schedule():
    """0.8 -> 0.95 of 50 DDIM steps: t = 183 at the start (DreamGaussian, diffusers' 'leading' steps: 181) and
    41 at the end (41), linear in between; a strength of 1 still runs one step."""
    steps = ddim_timesteps(50)
    assert steps[sdedit_start(0, 100, (0.8, 0.95), 50)] == 183
    assert steps[sdedit_start(100, 100, (0.8, 0.95), 50)] == 41
    assert sdedit_start(50, 100, (0.8, 0.95), 50) == int(50 * 0.875)
    assert sdedit_start(0, 10, (0.999, 0.999), 50) == 49


def test_the_render_is_noised_to_the_start_time_with_the_generators_noise():
    y_u, y_c = _targets()
    predictor = OneImage(y_u, y_c)
    rule = _rule(predictor, strength=(0.5, 0.5), steps=10)
    images = _images(size=R)
    rule(images, None, 3, 10, torch.Generator().manual_seed(7))
    timesteps = ddim_timesteps(10)
    x_first, t_first = predictor.calls[0]
    assert [int(t[0]) for _, t in predictor.calls] == timesteps[5:]
    a = predictor.alphas_cumprod[timesteps[5]]
    eps = torch.randn(2, 3, R, R, generator=torch.Generator().manual_seed(7))
    expected = a.sqrt() * (images.detach().permute(0, 3, 1, 2) * 2 - 1) + (1 - a).sqrt() * eps
    assert torch.allclose(x_first, expected, atol=1e-6)


@pytest.mark.parametrize("model_type", ["prior", "stable_diffusion", "deepfloyd"])
def test_sdedit_builds_on_each_model_and_its_gradient_is_the_mse_to_the_refined_copy(model_type, request):
    fixture = {"stable_diffusion": "tiny_sd_dir", "deepfloyd": "tiny_if_dir"}.get(model_type)
    model = [f"guidance.{model_type}.model={request.getfixturevalue(fixture)}"] if fixture else []
    cfg = load_config("demo", ["prompt=a red cube", "guidance.type=sdedit", f"guidance.model_type={model_type}",
                               "guidance.stable_diffusion.vae_resolution=16", "guidance.prior.resolution=16",
                               "guidance.prior.views=16", "guidance.sdedit.steps=10", *model])
    guidance = build_guidance(cfg, "cpu", load_guidance_model(cfg, "cpu"))
    assert type(guidance) is SDEditGuidance
    images = _images(size=16)
    cams = orbit_cameras(2, 15.0, 2.4, 45.0)
    refined, _ = guidance.refine(images, cams, 0, 10, torch.Generator().manual_seed(0))
    out = guidance(images, cams, 0, 10, torch.Generator().manual_seed(0))
    assert refined.shape == images.shape and 0 <= float(refined.min()) and float(refined.max()) <= 1
    out["loss_sdedit"].backward()
    assert torch.allclose(images.grad, 2 * (images - refined).detach() / images.numel(), atol=1e-7)


def test_sdedit_on_the_prior_moves_a_wrong_colour_toward_the_prompts():
    """The embedded prior's refined copy of a green render of the red cube's silhouette is red: the texture stage
    fixes colour (configs/demo-gaussian-refine.yaml)."""
    from dreamfusion.world.renders import render_silhouettes

    cfg = load_config("demo", ["prompt=a red cube", "guidance.type=sdedit", "guidance.prior.resolution=16",
                               "guidance.prior.views=16", "render.background=gray"])
    guidance = build_guidance(cfg, "cpu", load_guidance_model(cfg, "cpu"))
    cams = orbit_cameras(2, 15.0, 2.4, 45.0)
    alpha = render_silhouettes("cube", cams, 16)[..., None]
    green, gray = torch.tensor([0.1, 0.8, 0.1]), torch.tensor([0.5, 0.5, 0.5])
    render = alpha * green + (1 - alpha) * gray
    refined, _ = guidance.refine(render, cams, 0, 10, torch.Generator().manual_seed(0))
    inside = alpha[..., 0] > 0.99
    mean = refined[inside].mean(0)
    assert mean[0] > 0.6 and mean[1] < 0.3, mean


@pytest.mark.parametrize("setting, fragment", [
    (["guidance.latent_render=true", "guidance.model_type=stable_diffusion", "field.type=nerf"],
     "guidance.latent_render=false"),
    (["guidance.sdedit.strength=[0.8,0.9,0.95]"], "two numbers"),
])
def test_bad_sdedit_settings_are_one_line(setting, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("demo", ["guidance.type=sdedit", *setting])
    assert "\n" not in str(info.value) and fragment in str(info.value)
