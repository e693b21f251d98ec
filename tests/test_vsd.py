"""VSD (guidance/vsd.py) on the tiny Stable Diffusion: the gradient against an independent replay with the
LoRA's own prediction, the LoRA learning (its loss falls), and its state in the trainer's optimizer and
checkpoint, where a resumed run reproduces a straight one."""

from __future__ import annotations

import sys

import pytest
import torch

from dreamfusion.config import Config, load_config
from dreamfusion.errors import ConfigError, UserError
from dreamfusion.guidance import build_guidance
from dreamfusion.guidance.sds import sample_timesteps
from dreamfusion.guidance.vsd import VSDGuidance, camera_features
from dreamfusion.train import Trainer
from render.cameras import orbit_cameras



def vsd_config(tiny_sd_dir, **vsd) -> Config:
    cfg = Config(prompt="a red cube")
    g = cfg.guidance
    g.model, g.vae_resolution, g.view_dependent, g.guidance_scale = str(tiny_sd_dir), 16, False, 7.5
    g.vsd.enabled = True
    for k, v in vsd.items():
        setattr(g.vsd, k, v)
    return cfg


@pytest.fixture()
def vsd(tiny_sd_dir) -> VSDGuidance:
    return build_guidance(vsd_config(tiny_sd_dir), "cpu")


def test_vsd_gradient_is_w_t_times_guided_minus_lora_noise(vsd):
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # a LoRA and camera MLP that have learned something, so eps_lora != the frozen eps
        for p in [*vsd.lora.values(), *vsd.camera_mlp.parameters()]:
            p.normal_(0.0, 0.3, generator=g)
    cams = orbit_cameras(2, 20.0, 2.0, 45.0)
    latents = torch.randn(2, 8, 8, 4, generator=g).requires_grad_()  # rendered latents: no VAE in the way
    out = vsd(latents, cams, 0, 100, torch.Generator().manual_seed(5))
    out["loss_sds"].backward()

    gen = torch.Generator().manual_seed(5)  # replay the SDS draws: t, then eps
    t = sample_timesteps(2, 0.02, 0.98, 1000, gen)
    x0 = latents.detach().permute(0, 3, 1, 2)
    eps = torch.randn(x0.shape, generator=gen)
    abar = vsd.predictor.alphas_cumprod[t].view(2, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    unet, cond = vsd.unet, vsd.cond
    with torch.no_grad():
        unet.disable_adapters()
        eps_u, eps_c = unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                            encoder_hidden_states=torch.cat([cond.uncond, cond.uncond, cond.cond["all"],
                                                             cond.cond["all"]])).sample.chunk(2)
        unet.enable_adapters()
        unet.class_embedding = vsd.camera_mlp
        eps_lora = unet(x_t, t, encoder_hidden_states=cond.cond["all"].expand(2, -1, -1),
                        class_labels=cams.c2w.reshape(2, 16)).sample
        unet.class_embedding = None
        unet.disable_adapters()
    assert (eps_lora - eps_c).abs().max() > 1e-2  # the replay can tell the LoRA from the frozen model
    grad = (1 - abar) * (eps_u + 7.5 * (eps_c - eps_u) - eps_lora)
    torch.testing.assert_close(latents.grad, (grad / 2).permute(0, 2, 3, 1), atol=1e-5, rtol=1e-4)
    assert out["loss_lora"].requires_grad and set(out) >= {"loss_sds", "loss_lora", "grad_norm", "t"}


def test_the_lora_learns_the_renders(vsd):
    """Its denoising loss on fixed renders, noise levels and noise (the same draws every step) falls: the LoRA
    and camera MLP fit what the frozen UNet does not (measured on the tiny model: step 1 1.16 (the frozen
    UNet), step 60 0.68; mean of the first 15 steps 0.99, of the last 15 0.69)."""
    renders = torch.rand(4, 1, 1, 4, generator=torch.Generator().manual_seed(0)).expand(4, 8, 8, 4).contiguous()
    cams = orbit_cameras(4, 20.0, 2.0, 45.0)
    optimizer = torch.optim.Adam(vsd.param_groups()[0]["params"], lr=1e-2)
    losses = []
    for _ in range(60):
        loss = vsd.lora_loss(renders, cams, torch.Generator().manual_seed(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert last < 0.8 * first and losses[-1] < 0.7 * losses[0], (first, last)
    assert vsd.camera_mlp[2].weight.abs().sum() > 0  # the camera embedding trained too (it starts at zero)


SMALL = ["device=cpu", "render.width=8", "render.height=8", "render.n_samples=12", "field.hashgrid.n_levels=2",
         "field.hashgrid.log2_hashmap_size=8", "field.hashgrid.base_resolution=4", "field.hidden_dim=8",
         "preview_every=0", "log_every=1", "checkpoint_every=3", "guidance.vae_resolution=16",
         "guidance.view_dependent=false", "guidance.t_anneal=none", "guidance.vsd.enabled=true",
         "guidance.guidance_scale=7.5", "render.background=white"]


def _fit(tiny_sd_dir, run_dir, steps, resume=False):
    cfg = load_config(None, [*SMALL, f"steps={steps}", f"guidance.model={tiny_sd_dir}", "prompt=a red cube"])
    run_dir.mkdir(exist_ok=True)
    trainer = Trainer(cfg, run_dir, torch.device("cpu"), build_guidance(cfg, "cpu"))
    if resume:
        trainer.resume()
    trainer.fit(progress=False)
    return trainer


def test_lora_state_is_optimized_checkpointed_and_resumed(tiny_sd_dir, tmp_path):
    straight = _fit(tiny_sd_dir, tmp_path / "a", 6)
    assert any(g["name"] == "vsd_lora" for g in straight.optimizer.param_groups)
    lora = straight.guidance.state_dict()
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # Adam moved it from zero
    state = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    assert set(state["guidance"]) == set(lora)
    _fit(tiny_sd_dir, tmp_path / "b", 3)
    resumed = _fit(tiny_sd_dir, tmp_path / "b", 6, resume=True)
    for key, value in lora.items():
        torch.testing.assert_close(resumed.guidance.state_dict()[key], value, rtol=1e-4, atol=1e-6, msg=key)
    for key, value in straight.field.state_dict().items():
        torch.testing.assert_close(resumed.field.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_config_errors_and_a_missing_peft(tiny_sd_dir, monkeypatch):
    with pytest.raises(ConfigError, match="needs guidance.type=sds"):
        load_config("demo", ["guidance.vsd.enabled=true"])
    with pytest.raises(ConfigError, match="do not combine"):
        load_config(None, ["guidance.vsd.enabled=true", "guidance.perp_neg.enabled=true"])
    with pytest.raises(ConfigError, match="guidance.vsd.lora_rank must be >= 1"):
        load_config(None, ["guidance.vsd.lora_rank=0"])
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(UserError, match=r'pip install "dreamfusion\[vsd\]"'):
        build_guidance(vsd_config(tiny_sd_dir), "cpu")
    assert camera_features(orbit_cameras(3, 0.0, 2.0, 40.0), 3, "cpu").shape == (3, 16)
