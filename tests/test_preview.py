"""The 2D preview (DDIM from the guidance model), against oracles that broken samplers fail:

- a Gaussian-data predictor (data ~ N(mu, s^2 I), different for the conditional and unconditional branch) whose
  noise prediction is closed form: without clipping DDIM is an affine map per pixel whose factor is a product of
  scalars; with clipping, a float64 per-pixel reference written from the equations;
- the embedded prior (the exact denoiser of a finite image set): every view of the preview of several colours and
  shapes is one of the prompt's own images at that camera's selected views;
- the CLI's PNG: four labelled views, each the sample enlarged by a whole factor to >= 128 px.

``broken_samplers.BROKEN`` keeps the broken samplers these oracles must catch (c5a276d's loop, a sampler that stops
after its first step, guidance sign-flipped or ignored, no clipping, clipping that keeps the model's noise); the
``*_catches`` tests assert that each one fails the oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import dreamfusion.preview as preview
from broken_samplers import BROKEN
from dreamfusion.cli import main
from dreamfusion.config import load_config
from dreamfusion.errors import UserError
from dreamfusion.guidance.models.ddim import ddim_sample, ddim_timesteps
from dreamfusion.preview import LABEL_PX, VIEW_LABELS, preview_image, sample_preview
from dreamfusion.renderer import preview_cameras

T = 1000


def test_ddim_timesteps_closed_form():
    assert ddim_timesteps(1) == [999] and ddim_timesteps(2) == [999, 0] and ddim_timesteps(4) == [999, 666, 333, 0]
    assert ddim_timesteps(50) == [int(v) for v in np.linspace(0, 999, 50).round()[::-1]]
    assert ddim_timesteps(1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError):
        ddim_timesteps(0)


# --- oracle 1: Gaussian data, closed-form noise prediction -----------------------------------------------

def _abar64() -> np.ndarray:
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=np.float64) ** 2  # SD's scaled_linear
    return np.cumprod(1.0 - betas)


class GaussianPredictor:
    """Data ~ N(mu, s^2 I), per branch. With x_t = sqrt(a) x0 + sqrt(1 - a) eps the exact noise prediction is
    E[eps | x_t] = Cov(eps, x_t) / Var(x_t) (x_t - E x_t) = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a)."""

    sample_shape = (3, 4, 4)

    def __init__(self, mu_u, mu_c, s_u, s_c, clip_denoised):
        self.alphas_cumprod = torch.tensor(_abar64(), dtype=torch.float32)
        self.mu_u, self.mu_c, self.s_u, self.s_c = mu_u, mu_c, s_u, s_c
        self.clip_denoised = clip_denoised

    @staticmethod
    def eps(x_t, a, mu, s):
        return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * s ** 2 + 1 - a)

    def predict_noise(self, x_t, t, cameras, cond):
        a = self.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1)
        return self.eps(x_t, a, self.mu_u, self.s_u), self.eps(x_t, a, self.mu_c, self.s_c)


def _gaussian(clip: bool):
    g = torch.Generator().manual_seed(3)
    mu_u, mu_c = (torch.rand(GaussianPredictor.sample_shape, generator=g) * 1.6 - 0.8 for _ in range(2))
    return GaussianPredictor(mu_u, mu_c, 0.5, 0.5 if not clip else 0.3, clip)


def _run(sampler, predictor, scale, steps, seed=0):
    cams = preview_cameras(load_config("demo").camera)
    g = torch.Generator().manual_seed(seed)
    return sampler(predictor, None, cams, scale, steps, g), torch.randn((4, *predictor.sample_shape),
                                                                        generator=torch.Generator().manual_seed(seed))


def _affine_error(sampler, scale=3.0, steps=25) -> float:
    """Max |x_end - closed form| without clipping, s_u = s_c = s: the guided noise is that of N(mu_g, s^2) with
    mu_g = mu_u + w (mu_c - mu_u), and one DDIM step maps d = x - sqrt(a) mu_g to c d with
    c = (sqrt(a a') s^2 + sqrt((1 - a)(1 - a'))) / (a s^2 + 1 - a); so x_end = mu_g + prod(c) (x_T - sqrt(a_T) mu_g)."""
    p = _gaussian(clip=False)
    x_end, x_start = _run(sampler, p, scale, steps)
    abar, s = _abar64(), p.s_u
    ts = [int(v) for v in np.linspace(0, T - 1, steps).round()[::-1]]
    a_seq = [abar[t] for t in ts] + [1.0]
    k = np.prod([(np.sqrt(a * b) * s ** 2 + np.sqrt((1 - a) * (1 - b))) / (a * s ** 2 + 1 - a)
                 for a, b in zip(a_seq[:-1], a_seq[1:])])
    mu_g = (p.mu_u + scale * (p.mu_c - p.mu_u)).double()
    expected = mu_g + k * (x_start.double() - np.sqrt(abar[ts[0]]) * mu_g)
    return (x_end.double() - expected.expand_as(x_end)).abs().max().item()


def _clipped_error(sampler, scale=3.0, steps=25) -> float:
    """Max |x_end - reference| with clipping on, s_u != s_c: the reference is DDIM per pixel in float64 numpy."""
    p = _gaussian(clip=True)
    x_end, x_start = _run(sampler, p, scale, steps)
    abar = _abar64()
    ts = [int(v) for v in np.linspace(0, T - 1, steps).round()[::-1]]
    mu_u, mu_c = p.mu_u.double().numpy(), p.mu_c.double().numpy()
    x = x_start.double().numpy()
    for i, t in enumerate(ts):
        a, b = abar[t], (abar[ts[i + 1]] if i + 1 < steps else 1.0)
        e_u = np.sqrt(1 - a) * (x - np.sqrt(a) * mu_u) / (a * p.s_u ** 2 + 1 - a)
        e_c = np.sqrt(1 - a) * (x - np.sqrt(a) * mu_c) / (a * p.s_c ** 2 + 1 - a)
        e = e_u + scale * (e_c - e_u)
        x0 = np.clip((x - np.sqrt(1 - a) * e) / np.sqrt(a), -1, 1)
        x = np.sqrt(b) * x0 + np.sqrt(1 - b) * (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
    return float(np.abs(x_end.double().numpy() - x).max())


def test_ddim_on_gaussian_data_ends_where_the_closed_form_says():
    assert _affine_error(ddim_sample) < 1e-4
    # and with many steps DDIM approaches the probability-flow ODE, whose map for N(mu, s^2) is
    # x_0 - mu = (x_T - sqrt(a_T) mu) s / sigma_T: measured factor 0.985 of it at 200 steps (0.451 / 0.501 at 25)
    p = _gaussian(clip=False)
    p.mu_c = p.mu_u
    x_end, x_start = _run(ddim_sample, p, 1.0, 200)
    a_T = _abar64()[-1]
    ode = (x_start - np.sqrt(a_T) * p.mu_u) * 0.5 / np.sqrt(a_T * 0.25 + 1 - a_T)
    ratio = ((x_end - p.mu_u) * ode).sum() / (ode ** 2).sum()
    assert 0.98 < ratio.item() < 1.0


def test_ddim_with_clipping_ends_where_the_reference_says():
    p = _gaussian(clip=True)
    x_end, _ = _run(ddim_sample, p, 3.0, 25)
    assert 0 < (x_end.abs() == 1).float().mean() < 0.5  # the clip binds on some pixels, not all
    assert _clipped_error(ddim_sample) < 1e-4


@pytest.mark.parametrize("name", list(BROKEN))
def test_the_gaussian_oracles_catch(name):
    errors = _affine_error(BROKEN[name]), _clipped_error(BROKEN[name])
    assert max(errors) > 0.05, errors


class _DeviceChecking(GaussianPredictor):
    """The Gaussian predictor on PyTorch's meta device (shapes without data): a .cpu() inside the sampler raises,
    and so does every input not on the model's device, as a CUDA model's would; decode hands back CPU images."""

    def __init__(self):
        p = _gaussian(clip=True)
        super().__init__(p.mu_u.to("meta"), p.mu_c.to("meta"), p.s_u, p.s_c, True)
        self.alphas_cumprod = self.alphas_cumprod.to("meta")
        self.seen = 0

    def predict_noise(self, x_t, t, cameras, cond):
        for name, v in (("x_t", x_t), ("t", t), ("cameras", cameras.c2w)):
            assert v.device.type == "meta", f"{name} on {v.device}"
        self.seen += 1
        return super().predict_noise(x_t, t, cameras, cond)

    def encode_prompt(self, prompt, negative_prompt="", view_dependent=True):
        return None

    def decode(self, x):
        assert x.device.type == "meta", x.device
        return torch.zeros(x.shape[0], *x.shape[2:], 3)


def test_the_sampler_keeps_every_tensor_on_the_models_device():
    model = _DeviceChecking()
    x = ddim_sample(model, None, preview_cameras(load_config("demo").camera, "meta"), 7.5, 5,
                    torch.Generator().manual_seed(0))
    assert x.device.type == "meta" and x.shape == (4, 3, 4, 4) and model.seen == 5
    images = sample_preview(load_config("demo", ["prompt=a red cube"]), 3, model=model)  # cameras on its device
    assert images.shape == (4, 4, 4, 3) and model.seen == 8


# --- oracle 2: the embedded prior gives back its own images ----------------------------------------------

SMALL_PRIOR = ["guidance.prior.views=24", "guidance.prior.resolution=8"]  # the demo's prior, small (as test_scenes)


@pytest.fixture(scope="module")
def demo_prior():
    from dreamfusion.guidance import load_guidance_model

    return load_guidance_model(load_config("demo", SMALL_PRIOR), "cpu")


def _prior_error(prior, prompt: str, steps: int = 20) -> list[float]:
    """Per view: the smallest max-pixel distance between the preview and one of the prompt's prior images at
    the views the prior selects for that camera."""
    cfg = load_config("demo", [f"prompt={prompt}", *SMALL_PRIOR])
    images = sample_preview(cfg, steps, model=prior)  # [4, R, R, 3]
    cams, own = preview_cameras(cfg.camera), prior.encode_prompt(prompt).images
    errors = []
    for b in range(4):
        candidates = prior.decode(own[prior.select_views(cams, b)].reshape(-1, *prior.sample_shape))
        errors.append((candidates - images[b]).abs().flatten(1).max(1).values.min().item())
    return errors


PROMPTS = ["a green cone", "a red cube", "a blue torus", "a white cylinder", "a black sphere"]  # every shape


def test_every_view_is_one_of_the_prompts_own_images(demo_prior):
    for prompt in PROMPTS:
        assert max(_prior_error(demo_prior, prompt)) < 0.02, prompt


@pytest.mark.parametrize("name", ["c5a276d", "clip keeps the model's noise", "stops after the first step",
                                  "guidance sign-flipped"])
def test_the_prior_oracle_catches(name, demo_prior, monkeypatch):
    # Not caught here, caught by the Gaussian oracles: guidance ignored (scale 1: the conditional denoiser alone
    # also gives back the prompt's images) and no clipping (measured: the same images, error 0.000)
    monkeypatch.setattr(preview, "ddim_sample", BROKEN[name])
    assert max(_prior_error(demo_prior, "a green cone")) > 0.1


# --- oracle 3: Stable Diffusion, replayed on direct UNet and VAE calls -----------------------------------

def test_stable_diffusion_preview_is_ddim_on_direct_unet_calls(tiny_sd_dir, monkeypatch):
    """Latents are not clipped; each view's conditional embedding by its label (front, right = side, back, left =
    side), CFG at guidance.preview_scale, the VAE's decode at the end; float64 DDIM from the folder's scheduler."""
    from diffusers import DDPMScheduler

    from dreamfusion.guidance import StableDiffusion

    sd = StableDiffusion.load(str(tiny_sd_dir), vae_resolution=16)
    cfg = load_config("dreamfusion", [f"guidance.stable_diffusion.model={tiny_sd_dir}", "prompt=a red cube", "device=cpu",
                                      "guidance.preview_scale=4"])
    abar = DDPMScheduler.from_pretrained(tiny_sd_dir, subfolder="scheduler").alphas_cumprod.double()
    cond = sd.encode_prompt(cfg.prompt, "", True)
    conds = torch.cat([cond.cond[label] for label in ("front", "side", "back", "side")])
    x = torch.randn((4, *sd.sample_shape), generator=torch.Generator().manual_seed(cfg.seed)).double()
    ts = [999, 666, 333, 0]
    for i, t in enumerate(ts):
        with torch.no_grad():
            e_u, e_c = (sd.unet(x.float(), torch.full((4,), t), encoder_hidden_states=e).sample.double()
                        for e in (cond.uncond.expand(4, -1, -1), conds))
        eps = e_u + 4.0 * (e_c - e_u)
        a, b = abar[t], (abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64))
        x = b.sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt() + (1 - b).sqrt() * eps
    with torch.no_grad():
        reference = ((sd.vae.decode(x.float() / sd.scaling_factor).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert (sample_preview(cfg, 4, model=sd) - reference).abs().max().item() < 1e-4
    for name in ("stops after the first step", "guidance sign-flipped", "guidance ignored"):
        monkeypatch.setattr(preview, "ddim_sample", BROKEN[name])
        assert (sample_preview(cfg, 4, model=sd) - reference).abs().max().item() > 0.01, name  # measured 0.04-0.21


# --- the PNG a person reads ------------------------------------------------------------------------------

def test_preview_image_enlarges_each_view_by_a_whole_factor_under_its_label():
    images = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    row = preview_image(images)
    assert row.shape == (LABEL_PX + 128, 4 * 128, 3) and row.dtype == np.uint8
    expected = (images * 255).round().to(torch.uint8).repeat_interleave(4, 1).repeat_interleave(4, 2)
    assert np.array_equal(row[LABEL_PX:], np.concatenate(list(expected.numpy()), axis=1))
    for i in range(4):  # black text on each view's own white band, and only there
        band = row[:LABEL_PX, i * 128:(i + 1) * 128]
        assert (band < 128).any() and (band[:, :8] == 255).all() and (band[:, -8:] == 255).all()
    assert preview_image(torch.rand(4, 512, 512, 3)).shape == (LABEL_PX + 512, 2048, 3)  # no shrinking
    assert preview_image(torch.rand(4, 100, 100, 3)).shape == (LABEL_PX + 200, 800, 3)


def test_cli_preview_of_a_red_cube_shows_its_own_images_labelled(tmp_path, capsys, demo_prior):
    rc = main(["preview", "--config", "demo", "prompt=a red cube", f"output_dir={tmp_path}", "--steps", "20",
               *SMALL_PRIOR])
    assert rc == 0
    out, err = capsys.readouterr()
    assert "guidance scale 7.5 (guidance.preview_scale)" in err
    row = np.asarray(Image.open(out.strip().splitlines()[-1]))  # [20 + 128, 512, 3]: 8 px views enlarged 16 times
    assert row.shape == (LABEL_PX + 128, 512, 3)
    views = torch.tensor(row[LABEL_PX::16, ::16] / 255.0).reshape(8, 4, 8, 3).permute(1, 0, 2, 3)  # 1 pixel of 16x16
    cfg, cams = load_config("demo"), preview_cameras(load_config("demo").camera)
    own = demo_prior.encode_prompt("a red cube").images
    for b, label in enumerate(VIEW_LABELS):
        candidates = demo_prior.decode(own[demo_prior.select_views(cams, b)].reshape(-1, 3, 8, 8)).double()
        assert (candidates - views[b]).abs().flatten(1).max(1).values.min().item() < 0.02, label
    assert cfg.guidance.preview_scale == 7.5 and cfg.guidance.guidance_scale == 5.0  # its own setting


def test_preview_refuses_clip_and_empty_prompts():
    cfg = load_config("dreamfields", ["prompt=x"])
    with pytest.raises(UserError, match="CLIP .* cannot draw images"):
        sample_preview(cfg)
    cfg = load_config("demo", ["prompt= "])
    with pytest.raises(UserError, match="prompt is empty"):
        sample_preview(cfg)
    assert main(["preview", "--steps", "0", "prompt=a red cube"]) == 2
