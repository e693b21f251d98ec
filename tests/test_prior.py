"""The embedded prior: closed-form denoiser, its limits, the vocabulary, silhouettes, and convergence."""

import math

import numpy as np
import pytest
import torch

from dreamfusion.config import load_config
from dreamfusion.errors import UserError
from dreamfusion.guidance.models.prior import (EmbeddedPrior, closed_form_eps, dataset_cameras,
                                               scaled_linear_alphas_cumprod)
from dreamfusion.guidance.rules.sds import SDSGuidance
from dreamfusion.world.primitives import COLOURS, SHAPES, inside, parse_prompt, sdf
from dreamfusion.world.renders import render_silhouettes
from render.cameras import sample_cameras


def brute_force_eps(x_t, abar, images):
    """Tweedie for a uniform mixture of Diracs, one image at a time in float64."""
    x_t, images, abar = x_t.double(), images.double(), float(abar)
    log_w = torch.stack([-((x_t - math.sqrt(abar) * x) ** 2).sum() / (2 * (1 - abar)) for x in images])
    w = torch.exp(log_w - log_w.max())
    w = w / w.sum()
    mean = sum(wi * x for wi, x in zip(w, images))
    return (x_t - math.sqrt(abar) * mean) / math.sqrt(1 - abar)


def test_closed_form_eps_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(7, 48, generator=g) * 2 - 1
    abar_all = scaled_linear_alphas_cumprod()
    for t in (20, 300, 700, 980):
        x_t = abar_all[t].sqrt() * images[3] + (1 - abar_all[t]).sqrt() * torch.randn(48, generator=g)
        got = closed_form_eps(x_t, abar_all[t], images)
        torch.testing.assert_close(got.double(), brute_force_eps(x_t, abar_all[t], images), rtol=1e-4, atol=1e-4)


def test_eps_hat_recovers_the_noise_as_t_goes_to_zero():
    # At t = 0 the posterior sits on the image x_t was made from, so eps_hat = eps exactly.
    g = torch.Generator().manual_seed(1)
    images = torch.rand(16, 3 * 8 * 8, generator=g) * 2 - 1
    abar = scaled_linear_alphas_cumprod()[0]
    eps = torch.randn(images.shape[1], generator=g)
    x_t = abar.sqrt() * images[5] + (1 - abar).sqrt() * eps
    torch.testing.assert_close(closed_form_eps(x_t, abar, images), eps, rtol=0, atol=1e-4)


def test_eps_hat_tends_to_x_t_as_t_goes_to_one():
    # abar -> 0: x_t carries no signal, E[x0|x_t] -> the set's mean and eps_hat -> x_t.
    g = torch.Generator().manual_seed(2)
    images = torch.rand(5, 30, generator=g) * 2 - 1
    x_t = torch.randn(30, generator=g)
    abar = torch.tensor(1e-10)
    torch.testing.assert_close(closed_form_eps(x_t, abar, images), x_t, rtol=0, atol=1e-4)
    # the schedule's own last step is close to that limit: |eps_hat - x_t| <= sqrt(abar) max|x_i| / sqrt(1-abar) + ...
    last = scaled_linear_alphas_cumprod()[-1]
    bound = (last.sqrt() * images.abs().max() + (1 - (1 - last).sqrt()) * x_t.abs().max()) / (1 - last).sqrt()
    assert (closed_form_eps(x_t, last, images) - x_t).abs().max() <= bound + 1e-6


def test_single_image_set_gives_the_exact_noise_at_every_t():
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(1, 12, generator=g) * 2 - 1
    eps = torch.randn(12, generator=g)
    for abar in scaled_linear_alphas_cumprod()[::111]:
        x_t = abar.sqrt() * x0[0] + (1 - abar).sqrt() * eps
        torch.testing.assert_close(closed_form_eps(x_t, abar, x0), eps, rtol=1e-4, atol=1e-4)


def test_schedule_is_stable_diffusions_scaled_linear():
    abar = scaled_linear_alphas_cumprod()
    assert abar.shape == (1000,)
    assert float(abar[0]) == pytest.approx(1 - 0.00085, rel=1e-6)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert float(abar[-1]) == pytest.approx(float(torch.prod(1 - betas)), rel=1e-5)


@pytest.mark.parametrize("prompt, expected", [("a red cube", ("cube", "red")), ("An Orange cone", ("cone", "orange")),
                                              ("a purple torus", ("torus", "purple"))])
def test_parse_prompt(prompt, expected):
    assert parse_prompt(prompt) == expected


@pytest.mark.parametrize("prompt", ["a peacock on a surfboard", "a red", "a red blue cube", "a cube"])
def test_prompt_outside_the_vocabulary_is_a_one_line_error_listing_it(prompt):
    with pytest.raises(UserError) as info:
        parse_prompt(prompt)
    msg = str(info.value)
    assert "\n" not in msg and all(s in msg for s in SHAPES) and all(c in msg for c in COLOURS)


def test_sdf_is_zero_on_the_surface_and_negative_exactly_inside():
    pts = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for shape in SHAPES:
        d = sdf(shape, pts)
        assert torch.equal(d < 0, inside(shape, pts) & (d < 0))  # the bound never claims outside points
        far = d.abs() >= 1e-6  # within float error of the surface either answer is right
        assert torch.equal((d <= 0)[far], inside(shape, pts)[far]), shape


def test_sphere_silhouette_coverage_matches_the_projected_disc():
    # A sphere of radius r at distance d fills a disc of radius tan(asin(r/d)) / tan(fovy/2) (image units).
    cams = dataset_cameras(8, [-10, 60], [-180, 180], [2.4, 2.4], [45, 45])
    alpha = render_silhouettes("sphere", cams, 64)
    disc = math.tan(math.asin(0.6 / 2.4)) / math.tan(math.radians(22.5))
    expected = math.pi * disc ** 2 / 4
    assert float(alpha.mean()) == pytest.approx(expected, rel=0.01)


def _prior(prompt="a red cube", **over):
    cfg = load_config("demo", [f"prompt={prompt}", "guidance.prior.views=64", *[f"{k}={v}" for k, v in over.items()]])
    return cfg, EmbeddedPrior(cfg.camera, cfg.guidance.prior, cfg.render.background, "cpu")


def test_view_selection_stays_inside_the_window():
    cfg, prior = _prior(**{"guidance.prior.view_window": 40})
    cams = sample_cameras(6, cfg.camera.elevation_range, cfg.camera.azimuth_range, cfg.camera.distance_range,
                          cfg.camera.fovy_range, generator=torch.Generator().manual_seed(0))
    for b in range(6):
        idx = prior.select_views(cams, b)
        d = torch.nn.functional.normalize(cams.c2w[b, :3, 3], dim=0)
        angles = torch.rad2deg(torch.acos((prior.view_dirs[idx] @ d).clamp(-1, 1)))
        assert len(idx) >= 4 and float(angles.max()) <= 40 + 1e-4


def test_prior_needs_a_solid_background():
    with pytest.raises(UserError, match="render.background"):
        _prior(**{"render.background": "learned"})


def test_sds_gradient_through_the_prior_is_w_t_times_eps_gap():
    # The same SDS rule as Stable Diffusion: d loss / d x0 = w(t) (eps_hat - eps) / B, replayed independently.
    cfg, prior = _prior(**{"guidance.guidance_scale": 3.0})
    guidance = SDSGuidance(prior, cfg.guidance, cfg.prompt)
    cams = sample_cameras(2, cfg.camera.elevation_range, cfg.camera.azimuth_range, cfg.camera.distance_range,
                          cfg.camera.fovy_range, generator=torch.Generator().manual_seed(5))
    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(6), requires_grad=True)
    guidance(images, cams, 0, 100, generator=torch.Generator().manual_seed(7))["loss_sds"].backward()

    g = torch.Generator().manual_seed(7)  # replay: t first, then the noise
    t = torch.randint(round(cfg.guidance.t_min * 1000), round(cfg.guidance.t_max * 1000) + 1, (2,), generator=g)
    eps = torch.randn(2, 3, 32, 32, generator=g)
    abar = prior.alphas_cumprod[t].view(2, 1, 1, 1)
    x0 = images.detach().permute(0, 3, 1, 2) * 2 - 1
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    eps_u, eps_c = prior.predict_noise(x_t, t, cams, prior.encode_prompt(cfg.prompt))
    grad_x0 = (1 - abar) * (eps_u + 3.0 * (eps_c - eps_u) - eps) / 2
    expected = (grad_x0 * 2).permute(0, 2, 3, 1)  # x0 = 2 image - 1
    torch.testing.assert_close(images.grad, expected, rtol=1e-4, atol=1e-5)


def test_sds_on_the_prior_recovers_an_orange_cone(tmp_path, monkeypatch):
    """Convergence (kept short): 150 steps of the demo loop turn the initial blob into the orange cone.

    Measured on 2 cores: init IoU 0.32, after 150 steps 0.69 against the cone and at most 0.30 against each
    other primitive; surface albedo (0.99, 0.53, 0.03) for orange (0.95, 0.50, 0.10). The full demo budget
    reaches more (docs/BENCHMARKS.md). The bars fail if SDS stops moving the field toward the prompt's shape,
    makes a shape the prompt did not ask for, or paints the wrong colour.
    """
    import trimesh

    from dreamfusion.export import extract_mesh
    from dreamfusion.export.texture import vertex_colors
    from dreamfusion.guidance import build_guidance
    from dreamfusion.world.scores import mean_surface_albedo, volumetric_iou
    from dreamfusion.train import Trainer

    monkeypatch.setenv("DREAMFUSION_CACHE", str(tmp_path / "cache"))
    cfg = load_config("demo", ["prompt=an orange cone", "steps=150", "guidance.prior.views=128",
                               "render.n_samples=48", "preview_every=0"])
    trainer = Trainer(cfg, tmp_path, torch.device("cpu"), build_guidance(cfg, "cpu"))
    cone = lambda p: inside("cone", p)
    before = volumetric_iou(*extract_mesh(trainer.field.density, 1.0, 48, device="cpu"), cone, 64)
    trainer.fit()
    vertices, faces = extract_mesh(trainer.field.density, 1.0, 48, device="cpu")
    ious = {shape: volumetric_iou(vertices, faces, lambda p, s=shape: inside(s, p), 64) for shape in SHAPES}
    after = ious["cone"]
    assert after >= 0.55 and after >= before + 0.25, (before, after)
    assert max(ious, key=ious.get) == "cone", ious  # the asked-for shape, not merely a blob that overlaps it
    # colour: the albedo at the surface, area-weighted (the exporter's vertex colours), within 0.12 per channel
    # of the prompt's colour (benchmarks/prior_grid.py's tolerance)
    with torch.no_grad():
        rgb = vertex_colors(vertices, lambda p: trainer.field(p)["albedo"], device="cpu")
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=rgb, process=False)
    albedo = mean_surface_albedo(mesh)
    assert np.abs(albedo - np.array(COLOURS["orange"])).max() <= 0.12, albedo
