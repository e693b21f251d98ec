"""The 2D preview (DDIM from the guidance model): the sampler against closed forms, and under the embedded prior
the preview of "a red cube" against the cube's own silhouettes (IoU >= 0.8) and colour, through the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dreamfusion.cli import main
from dreamfusion.config import load_config
from dreamfusion.errors import UserError
from dreamfusion.guidance.primitives import COLOURS
from dreamfusion.guidance.prior import render_silhouettes
from dreamfusion.preview import ddim_sample, ddim_timesteps, preview_cameras, sample_preview


def test_ddim_timesteps_closed_form():
    assert ddim_timesteps(50) == list(range(980, -1, -20))
    assert ddim_timesteps(1) == [0] and ddim_timesteps(4, 1000) == [750, 500, 250, 0]
    with pytest.raises(ValueError):
        ddim_timesteps(0)


class DiracPredictor:
    """The data is one point x*: the exact noise prediction is (x_t - sqrt(abar) x*) / sqrt(1 - abar), so a
    deterministic DDIM lands on x* whatever the noise it starts from."""

    sample_shape = (3, 4, 4)
    clip_denoised = False

    def __init__(self):
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()
        self.target = torch.linspace(-0.7, 0.9, 48).view(3, 4, 4)

    def predict_noise(self, x_t, t, cameras, cond):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * self.target) / (1 - a).sqrt()
        return eps, eps


def test_ddim_lands_on_the_data_point_of_a_dirac_prior():
    cams = preview_cameras(load_config("demo").camera)
    x0 = ddim_sample(DiracPredictor(), None, cams, guidance_scale=7.5, steps=25,
                     generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x0, DiracPredictor().target.expand(4, 3, 4, 4), atol=1e-4, rtol=0)


def test_preview_of_a_red_cube_is_a_red_cube_under_the_prior(tmp_path, capsys):
    rc = main(["preview", "--config", "demo", "prompt=a red cube", f"output_dir={tmp_path}", "--steps", "50"])
    assert rc == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    image = np.asarray(Image.open(path), dtype=np.float64) / 255.0  # [32, 128, 3]: front, right, back, left
    cfg = load_config("demo")
    views = image.reshape(32, 4, 32, 3).transpose(1, 0, 2, 3)
    silhouettes = render_silhouettes("cube", preview_cameras(cfg.camera), cfg.guidance.prior.resolution).numpy()
    for view, alpha in zip(views, silhouettes):
        drawn = np.abs(view - 0.5).max(-1) > 0.2  # not the gray background
        truth = alpha > 0.5
        iou = (drawn & truth).sum() / (drawn | truth).sum()
        assert iou >= 0.8, iou
        red = np.median(view[drawn & truth], axis=0)
        assert red[0] > 0.5 and max(red[1], red[2]) < 0.25 and abs(red - COLOURS["red"]).max() < 0.45, red


def test_preview_refuses_clip_and_empty_prompts():
    cfg = load_config("dreamfields", ["prompt=x"])
    with pytest.raises(UserError, match="CLIP .* cannot draw images"):
        sample_preview(cfg)
    cfg = load_config("demo", ["prompt= "])
    with pytest.raises(UserError, match="prompt is empty"):
        sample_preview(cfg)
    assert main(["preview", "--steps", "0", "prompt=a red cube"]) == 2
