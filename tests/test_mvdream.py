"""MVDream (guidance.model_type=mvdream): cameras in its frame, views joined in self-attention, its two checkpoint
layouts, and the x0-reconstruction form of SDS.

Oracles: MVDream's own camera formula (bytedance/MVDream mvdream/camera_utils.py: create_camera_to_world_matrix,
convert_opengl_to_blender, normalize_camera, get_camera) and threestudio's camera formula, written out here in numpy
from their definitions; the stock diffusers attention processor on the views' tokens concatenated by hand; view
permutation equivariance; diffusers' own ldm -> diffusers UNet key conversion (convert_ldm_unet_checkpoint) and the
round trip back; the tiny model's weights after loading each layout from disk through the users' loader; the SDS
gradient's closed forms; one-line errors; a 2-step run of `python -m dreamfusion --config mvdream` on a tiny model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamfusion.config import load_config
from dreamfusion.errors import ModelNotFoundError
from dreamfusion.guidance import load_guidance_model
from dreamfusion.guidance.config import GuidanceConfig, MVDreamConfig
from dreamfusion.guidance.models.mvdream import MVDream
from dreamfusion.guidance.models.mvdream_unet import (JoinedViews, diffusers_to_original, diffusers_unet_config,
                                                      join_views, mvdream_cameras, original_to_diffusers)
from dreamfusion.guidance.rules.sds import SDSGuidance, t_range
from dreamfusion.settings import replace_key
from render.cameras import group_cameras, sample_cameras

# MultiViewUNetModel's arguments (MVDream's configs/sd-v2-base.yaml keys), shrunk; the same shape as conftest's
# tiny Stable Diffusion UNet (32 and 64 channels, attention on the second level, 2 and 4 heads, 32-wide text).
TINY = {"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 2],
        "attention_resolutions": [2], "num_res_blocks": 1, "num_head_channels": 16, "context_dim": 32,
        "transformer_depth": 1, "camera_dim": 16}
# SD 2.1's shape (three attention levels, two resnets per level), narrow.
SD_LIKE = {**TINY, "channel_mult": [1, 2, 2, 2], "attention_resolutions": [4, 2, 1], "num_res_blocks": 2}


def tiny_unet(mv: dict = TINY, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**diffusers_unet_config(mv), norm_num_groups=32)
    with torch.no_grad():  # diffusers zero-inits conv_out and proj_out: random weights make every path matter
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def one_line(fn, error=ModelNotFoundError) -> str:
    with pytest.raises(error) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


# -- cameras -----------------------------------------------------------------------------------------------

def look_at_np(position: np.ndarray, up: list[float]) -> np.ndarray:
    """The c2w both codebases build: forward = -position / |position|, right = forward x up, up' = right x forward,
    columns (right, up', -forward, position)."""
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    new_up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, new_up / np.linalg.norm(new_up), -forward], axis=1)
    c2w[:3, 3] = position
    return c2w


def mvdream_get_camera(num_frames: int, elevation: float, azimuth_start: float) -> np.ndarray:
    """bytedance/MVDream camera_utils.get_camera (blender_coord=True) then normalize_camera, from its formulas:
    a y-up look-at camera at (cos e sin a, sin e, cos e cos a), left-multiplied by [[1,0,0],[0,0,-1],[0,1,0]],
    translation / (|t| + 1e-8), flattened row by row."""
    out = []
    for azimuth in np.arange(azimuth_start, 360 + azimuth_start, 360 / num_frames):
        e, a = np.radians(elevation), np.radians(azimuth)
        c2w = look_at_np(np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)]), [0.0, 1.0, 0.0])
        c2w = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]) @ c2w
        c2w[:3, 3] /= np.linalg.norm(c2w[:3, 3]) + 1e-8
        out.append(c2w.reshape(16))
    return np.stack(out)


def threestudio_c2w(elevation: float, azimuths, distance: float) -> np.ndarray:
    """threestudio's z-up cameras (threestudio-mvdream data/uncond_multiview.py): a z-up look-at camera at
    d (cos e cos a, cos e sin a, sin e), normalised as threestudio-mvdream's get_camera_cond does."""
    out = []
    for azimuth in azimuths:
        e, a = np.radians(elevation), np.radians(azimuth)
        position = distance * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        c2w = look_at_np(position, [0.0, 0.0, 1.0])
        c2w[:3, 3] /= np.linalg.norm(c2w[:3, 3]) + 1e-8
        out.append(c2w.reshape(16))
    return np.stack(out)


def group_at(elevation: float, azimuth: float, distance: float, n_views: int = 4):
    one = sample_cameras(1, [elevation, elevation], [azimuth, azimuth], [distance, distance], [40.0, 40.0])
    return group_cameras(one, n_views)


@pytest.mark.parametrize("elevation", [15.0, 0.0, 30.0])
def test_the_four_views_are_mvdreams_own_cameras_and_threestudios(elevation):
    cams = group_at(elevation, 0.0, 2.7)  # this project's front (azimuth 0, +z) and the views 90 degrees on
    ours = mvdream_cameras(cams.c2w).double().numpy()
    # MVDream's sampling script starts at azimuth 90 (scripts/t2i.py --camera_azim), threestudio-mvdream's front
    np.testing.assert_allclose(ours, mvdream_get_camera(4, elevation, 90.0), atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours, threestudio_c2w(elevation, [0, 90, 180, 270], 2.7), atol=1e-6, rtol=0)


# -- the UNet ----------------------------------------------------------------------------------------------

def run_unet(unet, x, t, cameras, context):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=context, class_labels=cameras).sample


def unet_inputs(batch: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.full((batch,), 500)
    context = torch.randn(batch, 5, 32, generator=g)
    cams = mvdream_cameras(group_at(20.0, 30.0, 2.5, batch).c2w)
    return x, t, cams, context


def test_joined_attention_is_stock_attention_over_each_groups_tokens_side_by_side():
    from diffusers.models.attention_processor import Attention, AttnProcessor

    attn = tiny_unet().down_blocks[1].attentions[0].transformer_blocks[0].attn1
    tokens = torch.randn(6, 16, 64)  # 3 groups of 2 views, 16 tokens each
    joined = JoinedViews(AttnProcessor(), 2)(attn, tokens)
    for g in range(3):  # views 2g and 2g + 1: their tokens concatenated, attended, split
        both = torch.cat([tokens[2 * g], tokens[2 * g + 1]])[None]
        expected = AttnProcessor()(attn, both)[0]
        torch.testing.assert_close(joined[2 * g], expected[:16], atol=1e-6, rtol=0)
        torch.testing.assert_close(joined[2 * g + 1], expected[16:], atol=1e-6, rtol=0)
    assert isinstance(attn, Attention)


def test_with_one_view_the_joined_unet_is_the_stock_unet():
    unet = tiny_unet()
    x, t, cams, context = unet_inputs(4)
    stock = run_unet(unet, x, t, cams, context)
    join_views(unet, 1)
    assert all(isinstance(p, JoinedViews) == (".attn1." in n) for n, p in unet.attn_processors.items())
    assert torch.equal(run_unet(unet, x, t, cams, context), stock)


def test_permuting_the_views_of_each_group_permutes_the_outputs():
    unet = tiny_unet()
    join_views(unet, 4)
    x, t, cams, context = unet_inputs(8)
    out = run_unet(unet, x, t, cams, context)
    order = torch.tensor([2, 0, 3, 1, 7, 4, 6, 5])  # within each group of 4
    torch.testing.assert_close(run_unet(unet, x[order], t, cams[order], context[order]), out[order],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_views", [4, 1])
def test_a_view_changes_another_views_output_only_when_they_are_joined(n_views):
    unet = tiny_unet()
    join_views(unet, n_views)
    x, t, cams, context = unet_inputs(8)
    before = run_unet(unet, x, t, cams, context)
    x2 = x.clone()
    x2[0] += 1.0
    after = run_unet(unet, x2, t, cams, context)
    assert torch.equal(after[4:], before[4:])  # the other group never sees view 0
    if n_views == 1:
        assert torch.equal(after[1:4], before[1:4])
    else:
        assert (after[1:4] - before[1:4]).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_the_camera_enters_through_a_projection_added_to_the_timestep_embedding():
    unet = tiny_unet()
    emb = unet.class_embedding  # MVDream's camera_embed: Linear(16 -> 4 * model_channels), SiLU, Linear
    assert (emb.linear_1.in_features, emb.linear_1.out_features) == (16, 128)
    assert type(emb.act).__name__ == "SiLU" and emb.linear_2.out_features == 128


# -- key names ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [TINY, SD_LIKE], ids=["tiny", "sd-like"])
def test_key_conversion_agrees_with_diffusers_and_round_trips(shape):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = tiny_unet(shape)
    state = unet.state_dict()
    original = diffusers_to_original(state, unet.config)
    assert all(k.startswith("model.diffusion_model.") for k in original)
    assert {k for k in original if "camera_embed" in k} == {
        f"model.diffusion_model.camera_embed.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    back = original_to_diffusers(original, unet.config)
    assert back.keys() == state.keys() and all(back[k] is state[k] for k in state)
    # diffusers' converter of ldm UNets (no camera: it names a class embedding label_emb) as the independent oracle
    config = {k: v for k, v in unet.config.items() if k != "class_embed_type"}
    theirs = convert_ldm_unet_checkpoint({k: v for k, v in original.items() if "camera_embed" not in k}, config)
    assert theirs.keys() == {k for k in state if not k.startswith("class_embedding.")}
    assert all(theirs[k] is state[k] for k in theirs)
    again = diffusers_to_original(original_to_diffusers(original, unet.config), unet.config)
    assert again.keys() == original.keys() and all(again[k] is original[k] for k in original)
    if shape is SD_LIKE:  # SD 2.1's resamplers, where ldm's UNet appends them (openaimodel.py: after the attention)
        names = {k.removeprefix("model.diffusion_model.").rsplit(".", 1)[0] for k in original}
        assert {n for n in names if n.endswith((".op", ".conv")) and "blocks" in n} == {
            "input_blocks.3.0.op", "input_blocks.6.0.op", "input_blocks.9.0.op",
            "output_blocks.2.1.conv", "output_blocks.5.2.conv", "output_blocks.8.2.conv"}


# -- the two layouts on disk -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source_unet():
    return tiny_unet(seed=3)


@pytest.fixture(scope="module")
def original_dir(tmp_path_factory, source_unet):
    """The original layout: sd-v2.1-base-4view.pt, a whole-model state dict (the UNet under model.diffusion_model.,
    beside the VAE's and the text encoder's tensors, which are not read)."""
    folder = tmp_path_factory.mktemp("mvdream-original")
    state = diffusers_to_original(source_unet.state_dict(), source_unet.config)
    state.update({"first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3),
                  "cond_stage_model.model.positional_embedding": torch.zeros(77, 8)})
    torch.save(state, folder / "sd-v2.1-base-4view.pt")
    return folder


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory, tiny_sd_dir, source_unet):
    """The diffusers layout of ashawkey/mvdream-sd2.1-diffusers: unet/ holds MultiViewUNetModel's config and the
    ldm-named tensors without the model.diffusion_model. prefix; the scheduler is a DDIMScheduler."""
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("mvdream-diffusers")
    for part in ("tokenizer", "text_encoder", "vae"):
        shutil.copytree(tiny_sd_dir / part, folder / part)
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(folder / "scheduler")
    (folder / "unet").mkdir()
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "MultiViewUNetModel", **TINY}))
    state = diffusers_to_original(source_unet.state_dict(), source_unet.config, prefix="")
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "unet" / "diffusion_pytorch_model.safetensors")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "MVDreamPipeline",
                                                         "unet": ["mv_unet", "MultiViewUNetModel"]}))
    return folder


def settings(**keys) -> MVDreamConfig:
    return MVDreamConfig(**{"vae_resolution": 16, **keys})


def test_both_layouts_load_the_same_weights_and_predict_the_same_noise(original_dir, diffusers_dir, tiny_sd_dir,
                                                                        source_unet, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a local folder must not reach the hub")

    monkeypatch.setattr("dreamfusion.guidance.models.hub._hub_status", no_network)
    monkeypatch.setattr("huggingface_hub.snapshot_download", no_network)
    a = MVDream.load(settings(model=str(original_dir), base_model=str(tiny_sd_dir)), n_views=4)
    b = MVDream.load(settings(model=str(diffusers_dir)), n_views=4)
    expected = source_unet.state_dict()
    for model in (a, b):
        assert model.n_views == 4
        loaded = model.unet.state_dict()
        assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    cams = group_at(10.0, 0.0, 2.0, 4)
    x, t = torch.randn(4, 4, 8, 8), torch.full((4,), 400)
    eps_a = a.predict_noise(x, t, cams, a.encode_prompt("a red cube", "", False))
    eps_b = b.predict_noise(x, t, cams, b.encode_prompt("a red cube", "", False))
    for u, v in zip(eps_a, eps_b):
        torch.testing.assert_close(u, v, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.alphas_cumprod, b.alphas_cumprod)
    # the cameras the UNet reads are MVDream's own four views (elevation 10, from azimuth 90 in its formula)
    text = a.encode_prompt("a red cube", "", False)
    hidden = torch.cat([text.uncond.expand(4, -1, -1), text.cond["all"].expand(4, -1, -1)])
    labels = torch.from_numpy(mvdream_get_camera(4, 10.0, 90.0)).float().repeat(2, 1)
    expected = run_unet(a.unet, x.repeat(2, 1, 1, 1), t.repeat(2), labels, hidden)
    torch.testing.assert_close(torch.cat(eps_a), expected, atol=1e-5, rtol=1e-5)


def test_the_config_loads_it_with_camera_n_views(diffusers_dir):
    cfg = load_config("mvdream", ["prompt=a red cube", f"guidance.mvdream.model={diffusers_dir}",
                                  "guidance.mvdream.vae_resolution=16", "camera.n_views=2", "camera.batch_size=2"])
    model = load_guidance_model(cfg, "cpu")
    assert type(model) is MVDream and model.n_views == 2
    assert {p.n_views for p in model.unet.attn_processors.values() if isinstance(p, JoinedViews)} == {2}


def test_missing_or_wrong_folders_are_one_line(tmp_path, original_dir, diffusers_dir, tiny_sd_dir):
    assert "is not a folder" in one_line(lambda: MVDream.load(settings(model=str(tmp_path / "nope"))))
    (tmp_path / "empty").mkdir()
    message = one_line(lambda: MVDream.load(settings(model=str(tmp_path / "empty"))))
    assert "holds neither sd-v2.1-base-4view.pt" in message and "unet/" in message
    broken = tmp_path / "no-vae"
    shutil.copytree(diffusers_dir, broken)
    shutil.rmtree(broken / "vae")
    assert "has no vae/ subfolder" in one_line(lambda: MVDream.load(settings(model=str(broken))))
    no_base = settings(model=str(original_dir), base_model=str(tmp_path / "empty"))
    assert "MVDream base model folder" in one_line(lambda: MVDream.load(no_base))
    wrong = tmp_path / "wrong"  # an SD 1.x-shaped UNet config beside MVDream's tensors
    shutil.copytree(diffusers_dir, wrong)
    (wrong / "unet" / "config.json").write_text(json.dumps({**TINY, "channel_mult": [1, 2, 2]}))
    assert "has no place" in one_line(lambda: MVDream.load(settings(model=str(wrong))))
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "sd-v2.1-base-4view.pt").write_bytes(b"not a checkpoint")
    assert "cannot read MVDream weights" in one_line(
        lambda: MVDream.load(settings(model=str(garbage), base_model=str(tiny_sd_dir))))


def test_perp_neg_on_mvdream_is_refused_in_one_line():
    from dreamfusion.errors import ConfigError

    message = one_line(lambda: load_config("mvdream", ["guidance.type=perp_neg", "guidance.recon_loss=false",
                                                       "guidance.view_dependent=true"]), ConfigError)
    assert "camera.n_views must be 1" in message  # the view groups first (perp_neg grades single views)
    message = one_line(lambda: load_config("mvdream", ["guidance.type=perp_neg", "guidance.recon_loss=false",
                                                       "guidance.view_dependent=true", "camera.n_views=1",
                                                       "camera.batch_size=1"]), ConfigError)
    assert "guidance.type=sds with guidance.model_type=mvdream" in message


# -- the x0-reconstruction form of SDS ------------------------------------------------------------------------

class StubPredictor:
    """encode = the identity on [B, H, W, C]; fixed eps_u, eps_c whatever the input."""

    def __init__(self, eps_u, eps_c, n_views):
        self.alphas_cumprod = torch.linspace(0.999, 0.01, 1000)
        self.eps_u, self.eps_c, self.n_views = eps_u, eps_c, n_views

    def encode(self, images):
        return images.permute(0, 3, 1, 2)

    def encode_prompt(self, prompt, negative_prompt, view_dependent):
        return None

    def predict_noise(self, x_t, t, cameras, cond):
        return self.eps_u, self.eps_c


@pytest.mark.parametrize("rescale", [0.0, 0.5, 1.0])
def test_recon_loss_gradient_is_its_closed_form(rescale):
    g = torch.Generator().manual_seed(0)
    batch, n = 8, 4
    eps_u, eps_c = torch.randn(batch, 3, 4, 4, generator=g), torch.randn(batch, 3, 4, 4, generator=g)
    cfg = replace_key(replace_key(replace_key(GuidanceConfig(), "recon_loss", True), "cfg_rescale", rescale),
                      "guidance_scale", 50.0)
    rule = SDSGuidance(StubPredictor(eps_u, eps_c, n), cfg, "a cube")
    images = torch.rand(batch, 4, 4, 3, requires_grad=True)
    rule(images, None, 0, 10, torch.Generator().manual_seed(5))["loss_sds"].backward()

    draw = torch.Generator().manual_seed(5)  # the rule's draws, in its order: one t per group, then the noise
    t = torch.randint(20, 981, (batch // n,), generator=draw).repeat_interleave(n)
    eps = torch.randn(batch, 3, 4, 4, generator=draw)
    abar = StubPredictor(eps_u, eps_c, n).alphas_cumprod[t].view(-1, 1, 1, 1).double()
    x0 = images.detach().permute(0, 3, 1, 2).double()
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps.double()
    eps_hat = eps_u.double() + 50.0 * (eps_c.double() - eps_u.double())
    x0_hat = (x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
    if rescale == 0.0:  # then x0 - x0_hat = sqrt((1 - abar) / abar) (eps_hat - eps): SDS with that weight
        expected = ((1 - abar) / abar).sqrt() * (eps_hat - eps.double())
    else:
        x0_c = (x_t - (1 - abar).sqrt() * eps_c.double()) / abar.sqrt()
        rescaled = []
        for k in range(batch // n):
            views = slice(k * n, (k + 1) * n)
            factor = (np.std(x0_c[views].numpy(), ddof=1) + 1e-8) / (np.std(x0_hat[views].numpy(), ddof=1) + 1e-8)
            rescaled.append(rescale * factor * x0_hat[views] + (1 - rescale) * x0_hat[views])
        expected = x0 - torch.cat(rescaled)
    torch.testing.assert_close(images.grad.permute(0, 3, 1, 2).double(), expected / batch, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("step", [0, 2000, 4000, 7999, 8000, 9999])
def test_the_t_schedule_is_threestudio_mvdreams(step):
    """configs/mvdream-sd21.yaml: min/max_step_percent [0, 0.98, 0.02 / 0.50, 8000], read by threestudio's C():
    start + (end - start) * clamp((step - 0) / (8000 - 0), 0, 1)."""
    cfg = load_config("mvdream").guidance
    lo, hi = t_range(step, 10000, cfg.t_min, cfg.t_max, cfg.t_anneal, cfg.t_max_end, cfg.t_min_start,
                     cfg.t_anneal_fraction)
    f = min(step / 8000, 1.0)
    assert (lo, hi) == (pytest.approx(0.98 + (0.02 - 0.98) * f), pytest.approx(0.98 + (0.50 - 0.98) * f))


def test_recon_loss_needs_plain_sds():
    from dreamfusion.errors import ConfigError

    message = one_line(lambda: load_config("demo", ["guidance.type=perp_neg", "guidance.recon_loss=true"]), ConfigError)
    assert message.startswith("guidance.recon_loss is the x0 form of plain SDS: needs guidance.type=sds")


# -- end to end --------------------------------------------------------------------------------------------

def test_python_m_dreamfusion_config_mvdream_runs_two_steps(tmp_path, diffusers_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    argv = ["prompt=a red cube", f"guidance.mvdream.model={diffusers_dir}", "guidance.mvdream.vae_resolution=16",
            f"output_dir={tmp_path}", "device=cpu", "steps=2", "log_every=1", "render.width=16", "render.height=16",
            "render.progressive_sizes=[]", "render.progressive_milestones=[]", "render.n_samples=16",
            "field.hashgrid.n_levels=2", "field.hashgrid.log2_hashmap_size=10", "field.hashgrid.base_resolution=4",
            "field.hidden_dim=8", "export.resolution=16", "export.texture=vertex", "export.video_frames=2",
            "export.video_resolution=16", "render.eval_grid=16"]
    run = subprocess.run([sys.executable, "-m", "dreamfusion", "--config", "mvdream", *argv], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = Path(run.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss_sds" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss_sds"]) for r in steps)
    assert json.loads((folder / "run.json").read_text())["guidance"] == "sds/mvdream"
