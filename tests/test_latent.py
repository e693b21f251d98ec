"""Latent rendering (guidance.latent_render, Latent-NeRF): the field renders SD latents, SDS skips the VAE.

Oracles: the published linear latent -> RGB map by hand and its least-squares inverse (round trip); the
volume compositing of 4 channels recomputed from the renderer's own weights and the field's outputs; the
SDS gradient on rendered latents replayed independently with the tiny UNet (the same replay as
test_sds.py, minus the VAE); a CLI run that exports through the RGB view.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamfusion.config import FieldConfig, GuidanceConfig, HashGridConfig, TriplaneConfig, load_config
from dreamfusion.errors import ConfigError
from dreamfusion.fields import build_field
from dreamfusion.guidance import SDSGuidance, StableDiffusion
from dreamfusion.renderer import LatentAsRGB, render_views, rgb_view
from render.cameras import orbit_cameras
from render.latent import LATENT_TO_RGB, latent_to_rgb, rgb_to_latent
from render.rays import generate_rays
from render.volume import render_rays

ROOT = Path(__file__).resolve().parents[1]
SMALL = FieldConfig(hashgrid=HashGridConfig(n_levels=4, log2_hashmap_size=10, base_resolution=8), hidden_dim=16)


def test_latent_to_rgb_by_hand_and_round_trip():
    z = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    expected = torch.tensor([[(1 + 0.298) / 2, (1 + 0.207) / 2, (1 + 0.208) / 2],
                             [(1 - 0.184) / 2, (1 - 0.271) / 2, (1 - 0.473) / 2]])
    torch.testing.assert_close(latent_to_rgb(z), expected)
    assert LATENT_TO_RGB.shape == (4, 3)
    rgb = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(latent_to_rgb(rgb_to_latent(rgb)), rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(rgb_to_latent(torch.full((3,), 0.5)), torch.zeros(4))  # gray is the zero latent


@pytest.mark.parametrize("kind", ["nerf", "triplane"])
def test_latent_field_composites_four_channels(kind):
    torch.manual_seed(0)
    cfg = FieldConfig(**{**vars(SMALL), "type": kind, "triplane": TriplaneConfig(resolution=16, channels=4)})
    field = build_field(cfg, "cpu", albedo_channels=4)
    assert field.albedo_channels == 4
    cams = orbit_cameras(2, 20.0, 2.4, 45.0)
    with torch.no_grad():
        out = render_views(field, None, cams, 6, 5, n_samples=24, background_kind="white")
        origins, dirs = generate_rays(cams.c2w, cams.fovy, 6, 5)
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        ref = render_rays(field, o, d, field.bound, 24)
        raw = field((o[:, None] + d[:, None] * ref["t"][..., None]).reshape(-1, 3))["albedo"].reshape(-1, 24, 4)
    albedo = (ref["weights"][..., None] * raw).sum(1).reshape(2, 6, 5, 4)
    assert out["rgb"].shape == (2, 6, 5, 4)
    torch.testing.assert_close(out["albedo"], albedo, atol=1e-5, rtol=1e-5)
    white = rgb_to_latent(torch.ones(3))
    torch.testing.assert_close(out["rgb"], albedo + (1 - out["opacity"]) * white, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="albedo only"):
        render_views(field, None, cams, 6, 5, n_samples=8, shading="lambertian",
                     light_dirs=torch.tensor([[0.0, 1.0, 0.0]] * 2))
    view = rgb_view(field)  # export / video / previews see RGB
    assert isinstance(view, LatentAsRGB) and rgb_view(build_field(SMALL, "cpu")) is not view
    pts = torch.rand(10, 3) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(view(pts)["albedo"], latent_to_rgb(field(pts)["albedo"]))
        torch.testing.assert_close(view.density(pts), field.density(pts))


def test_sds_on_rendered_latents_skips_the_vae_and_matches_replay(tiny_sd_dir, monkeypatch):
    sd = StableDiffusion.load(str(tiny_sd_dir), vae_resolution=16)
    assert sd.latent_size == 8  # the tiny VAE halves: 16 / 2

    def no_vae(*args, **kwargs):
        raise AssertionError("the VAE must not run on rendered latents")
    monkeypatch.setattr(sd.vae, "encode", no_vae)
    latents = torch.randn(1, 8, 8, 4, generator=torch.Generator().manual_seed(5)).requires_grad_()
    cfg = GuidanceConfig(guidance_scale=7.5, view_dependent=False)
    guidance = SDSGuidance(sd, cfg, "a red cube")
    out = guidance(latents, None, 0, 100, torch.Generator().manual_seed(42))
    out["loss_sds"].backward()

    gen = torch.Generator().manual_seed(42)  # replay: t in [20, 980], then eps
    t = torch.randint(20, 981, (1,), generator=gen)
    x0 = latents.detach().permute(0, 3, 1, 2)
    eps = torch.randn(x0.shape, generator=gen)
    abar = sd.alphas_cumprod[t].view(1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    emb = torch.cat([guidance.cond.uncond, guidance.cond.cond["all"]])
    with torch.no_grad():
        eps_u, eps_c = sd.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=emb).sample.chunk(2)
    grad = (1 - abar) * (eps_u + 7.5 * (eps_c - eps_u) - eps)
    torch.testing.assert_close(latents.grad, grad.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-4)

    big = torch.zeros(1, 16, 16, 4)  # other sizes are resized to the latent size
    assert sd.latents_from_render(big).shape == (1, 4, 8, 8)


@pytest.mark.parametrize("overrides, fragment", [
    (["guidance.model_type=prior"], "needs guidance.model_type=stable_diffusion, got guidance.model_type=prior"),
    (["guidance.type=clip"], "needs guidance.model_type=stable_diffusion, got guidance.type=clip"),
    (["field.type=gaussian"], "needs field.type=nerf or triplane"),
])
def test_latent_render_config_errors(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, ["guidance.latent_render=true", *overrides])


def test_cli_latent_run_exports_rgb(tiny_sd_dir, tmp_path):
    """--config triplane with latent rendering on the tiny SD: trains, writes a latent triplane.npz, and a
    mesh + video coloured through latent_to_rgb."""
    cmd = [sys.executable, "-m", "dreamfusion", "--config", "triplane", "prompt=a red cube",
           f"guidance.stable_diffusion.model={tiny_sd_dir}", "guidance.latent_render=true", "guidance.stable_diffusion.vae_resolution=16",
           "render.width=8", "render.height=8", "render.n_samples=16", "field.triplane.resolution=16",
           "steps=3", "device=cpu", f"output_dir={tmp_path}", "export.resolution=32", "export.texture=vertex",
           "export.video_frames=4", "export.video_resolution=32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**__import__("os").environ,
                                                                             "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert (run / "orbit.mp4").stat().st_size > 0 and (run / "mesh" / "model.glb").stat().st_size > 0
    import numpy as np
    with np.load(run / "triplane.npz") as data:
        assert json.loads(str(data["meta"]))["albedo_channels"] == 4
    from dreamfusion.export.planes import load_planes
    field = load_planes(run / "triplane.npz")
    assert field.albedo_channels == 4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and all(np.isfinite(r["loss"]) for r in rows)
