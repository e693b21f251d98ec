"""DeepFloyd IF stage I as the SDS prior, on the tiny random IF folder of conftest.py (no network).

Oracles: the folder's own parts loaded directly with ``from_pretrained`` (UNet, T5, tokenizer), IF's cosine
schedule in closed form, an independent replay of the SDS step (same seed: t, eps, x_t, the UNet called
directly, CFG, w(t)) and of the 2D preview's DDIM, the T5 cache round trip (identical tensors with T5
unloadable), and the run folder of an end-to-end ``python -m dreamfusion --config deepfloyd`` run.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import shutil
import weakref
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from dreamfusion.config import GuidanceConfig, load_config
from dreamfusion.errors import ConfigError, ModelNotFoundError, UserError
from dreamfusion.guidance import (DeepFloydIF, SDSGuidance, build_guidance, guidance_model_key,
                                  load_guidance_model)
from dreamfusion.guidance.models import deepfloyd as deepfloyd_module

FIELD = ["field.hashgrid.n_levels=4", "field.hashgrid.log2_hashmap_size=12", "field.hashgrid.base_resolution=8",
         "field.hidden_dim=16"]
CHEAP_EXPORT = ["export.resolution=24", "export.texture=vertex", "export.video_frames=2", "export.video_resolution=16"]


@pytest.fixture(autouse=True)
def t5_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache root, so no test sees another's T5 embeddings (or ~/.cache)."""
    monkeypatch.setenv("DREAMFUSION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "t5"


@pytest.fixture
def tiny_if(tiny_if_dir):
    return DeepFloydIF.load(str(tiny_if_dir))


class Views(NamedTuple):  # what view-dependent prompts read of the cameras
    elevation: torch.Tensor
    azimuth: torch.Tensor


def cosine_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """IF's squaredcos_cap_v2 schedule (Nichol & Dhariwal 2021, eq. 17): abar(s) = cos^2((s/T + 0.008) / 1.008
    pi/2), beta_t = min(1 - abar(t+1) / abar(t), 0.999), abar_t = prod (1 - beta)."""
    f = [math.cos((s / steps + 0.008) / 1.008 * math.pi / 2) ** 2 for s in range(steps + 1)]
    betas = torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(steps)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def t5_direct(folder: Path, texts: list[str]) -> torch.Tensor:
    """The T5 encoder's last hidden state, computed here from the folder's own tokenizer and encoder."""
    from transformers import T5EncoderModel, T5Tokenizer

    tokenizer = T5Tokenizer.from_pretrained(folder / "tokenizer")
    encoder = T5EncoderModel.from_pretrained(folder / "text_encoder").eval()
    tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state


def forbid_t5(monkeypatch) -> None:
    """Loading the tokenizer or T5 fails the test from here on."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("T5 or its tokenizer was loaded")

    for cls in (transformers.T5EncoderModel, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


# --- loading ---------------------------------------------------------------------------------------

def test_load_reads_the_folder_and_leaves_t5_on_disk(tiny_if_dir, monkeypatch):
    from diffusers import UNet2DConditionModel

    forbid_t5(monkeypatch)  # loading IF needs only the UNet and the scheduler
    model = DeepFloydIF.load(str(tiny_if_dir))
    direct = UNet2DConditionModel.from_pretrained(tiny_if_dir / "unet")
    loaded = model.unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in direct.state_dict().items())
    assert not any(p.requires_grad for p in model.unet.parameters())
    assert (model.channels, model.sample_size, model.dtype) == (3, 16, torch.float32)
    assert torch.allclose(model.alphas_cumprod, cosine_alphas_cumprod(), rtol=1e-5, atol=1e-9)


def test_missing_folder_is_one_line_model_not_found(tmp_path):
    missing = str(tmp_path / "no-such-if")
    with pytest.raises(ModelNotFoundError) as info:
        DeepFloydIF.load(missing)
    msg = str(info.value)
    assert "\n" not in msg and f"'{missing}' is not a folder" in msg
    assert "hf download DeepFloyd/IF-I-XL-v1.0 --local-dir" in msg and "guidance.deepfloyd.model=" in msg and "license" in msg


@pytest.mark.parametrize("part", ["unet", "scheduler", "text_encoder", "tokenizer"])
def test_partial_folder_names_the_missing_part(tiny_if_dir, tmp_path, part):
    folder = tmp_path / "partial"
    shutil.copytree(tiny_if_dir, folder, ignore=shutil.ignore_patterns(part))
    with pytest.raises(ModelNotFoundError, match=rf"DeepFloyd IF folder '{folder}' has no {part}/ subfolder") as info:
        DeepFloydIF.load(str(folder))
    assert "\n" not in str(info.value)


def test_unreadable_part_names_it(tiny_if_dir, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_if_dir, folder)
    (folder / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ModelNotFoundError, match=rf"cannot load unet/ of guidance model folder '{folder}'") as info:
        DeepFloydIF.load(str(folder))
    assert "\n" not in str(info.value)


def test_unreachable_hub_id_is_one_line_model_not_found():
    with pytest.raises(ModelNotFoundError) as info:  # HF_HUB_OFFLINE=1 (conftest): fails without the network
        DeepFloydIF.load("no-such-org/no-such-if")
    msg = str(info.value)
    assert "\n" not in msg and "'no-such-org/no-such-if' is not in the local cache and the hub is unreachable" in msg
    assert "hf download no-such-org/no-such-if --local-dir" in msg


def test_a_stable_diffusion_folder_is_refused(tiny_sd_dir):
    with pytest.raises(ModelNotFoundError, match="is not a DeepFloyd IF stage I model: its unet/ maps 4 to 4 "
                                                 "channels") as info:
        DeepFloydIF.load(str(tiny_sd_dir))
    assert "guidance.model_type=stable_diffusion" in str(info.value) and "\n" not in str(info.value)


def test_sentencepiece_tokenizer_without_the_package_says_what_to_install(tiny_if_dir, tmp_path, monkeypatch):
    folder = tmp_path / "spm"
    shutil.copytree(tiny_if_dir, folder)
    (folder / "tokenizer" / "tokenizer.json").unlink()
    (folder / "tokenizer" / "spiece.model").write_bytes(b"")  # IF's own tokenizer/ is a sentencepiece model
    monkeypatch.setattr(deepfloyd_module, "_has_sentencepiece", lambda: False)
    model = DeepFloydIF.load(str(folder))  # T5 is not needed until a text is embedded
    with pytest.raises(UserError, match=r"needs the sentencepiece package: pip install 'dreamfusion\[deepfloyd\]'"):
        model.encode_prompt("a red cube")


def test_config_choice_key_and_latent_render_refused(tiny_if_dir):
    cfg = load_config("deepfloyd", [f"guidance.deepfloyd.model={tiny_if_dir}", "prompt=a red cube"])
    assert (cfg.guidance.type, cfg.guidance.model_type, cfg.guidance.deepfloyd.model, cfg.guidance.guidance_scale) == \
        ("sds", "deepfloyd", str(tiny_if_dir), 21.0)
    assert (cfg.render.width, cfg.render.height, cfg.guidance.deepfloyd.max_length) == (64, 64, 77)
    kind, (section, values) = guidance_model_key(cfg)  # the loader's own section and nothing else
    assert (kind, section) == ("deepfloyd", "guidance.deepfloyd") and ("model", str(tiny_if_dir)) in values
    other = load_config("deepfloyd", [f"guidance.deepfloyd.model={tiny_if_dir}", "prompt=a blue ball", "seed=3"])
    assert guidance_model_key(other) == guidance_model_key(cfg)  # a batch worker may share the loaded model
    longer = load_config("deepfloyd", [f"guidance.deepfloyd.model={tiny_if_dir}", "guidance.deepfloyd.max_length=128"])
    assert guidance_model_key(longer) != guidance_model_key(cfg)
    assert isinstance(load_guidance_model(cfg, "cpu"), DeepFloydIF)
    with pytest.raises(ConfigError) as info:
        load_config("deepfloyd", ["guidance.latent_render=true"])
    assert str(info.value) == ("guidance.latent_render renders Stable Diffusion's latents: needs "
                               "guidance.model_type=stable_diffusion, got guidance.model_type=deepfloyd: "
                               "set guidance.latent_render=false")


# --- text ------------------------------------------------------------------------------------------

def test_embeddings_are_the_t5_encoder_outputs(tiny_if, tiny_if_dir):
    cond = tiny_if.encode_prompt("  A Red Cube", "Blurry ")  # IFPipeline lower-cases and strips each text
    labels = ["front", "side", "back", "overhead"]
    expected = t5_direct(tiny_if_dir, ["blurry"] + [f"a red cube, {label} view" for label in labels])
    assert cond.uncond.shape == (1, 77, 32)
    assert torch.allclose(cond.uncond[0], expected[0], atol=1e-6)
    for i, label in enumerate(labels):
        assert torch.allclose(cond.cond[label][0], expected[i + 1], atol=1e-6), label
    plain = tiny_if.encode_prompt("a red cube", "", view_dependent=False)
    assert set(plain.cond) == {"all"}
    assert torch.allclose(torch.cat([plain.uncond, plain.cond["all"]]), t5_direct(tiny_if_dir, ["", "a red cube"]),
                          atol=1e-6)


def test_t5_cache_round_trip_without_t5(tiny_if_dir, t5_cache, monkeypatch):
    import transformers

    loaded = []
    real = transformers.T5EncoderModel.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        model = real(cls, *args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", classmethod(recording))
    first = DeepFloydIF.load(str(tiny_if_dir)).encode_prompt("a red cube", "blurry")
    gc.collect()
    assert len(loaded) == 1 and loaded[0]() is None  # T5 was loaded once, for the misses, then freed
    (folder,) = t5_cache.iterdir()
    assert folder.name.startswith("tiny-if") and len(list(folder.glob("*.pt"))) == 5  # 4 views + the negative

    forbid_t5(monkeypatch)
    again = DeepFloydIF.load(str(tiny_if_dir)).encode_prompt("a red cube", "blurry")
    assert torch.equal(again.uncond, first.uncond)
    assert all(torch.equal(again.cond[k], first.cond[k]) for k in first.cond)
    with pytest.raises(AssertionError, match="T5 or its tokenizer was loaded"):  # a new text needs T5
        DeepFloydIF.load(str(tiny_if_dir)).encode_prompt("a blue ball", "blurry")


def test_t5_cache_entry_that_is_corrupt_is_recomputed(tiny_if_dir, t5_cache):
    first = DeepFloydIF.load(str(tiny_if_dir)).encode_prompt("a red cube", view_dependent=False)
    for entry in next(t5_cache.iterdir()).glob("*.pt"):
        entry.write_bytes(entry.read_bytes()[:40])  # cut short, as by a full disk
    again = DeepFloydIF.load(str(tiny_if_dir)).encode_prompt("a red cube", view_dependent=False)
    assert torch.equal(again.cond["all"], first.cond["all"]) and torch.equal(again.uncond, first.uncond)
    third = DeepFloydIF.load(str(tiny_if_dir)).encode_prompt("a red cube", view_dependent=False)  # rewritten
    assert torch.equal(third.cond["all"], first.cond["all"])


def test_long_prompt_warns_with_and_without_the_cache(tiny_if_dir, capsys):
    prompt = "a very ornate peacock on a surfboard " * 12  # 7 words a time, each one piece, then </s>
    n = 7 * 12 + 1
    message = (f"warning: prompt truncated: it is {n} tokens, the T5 text encoder reads 77; the last {n - 77} are "
               f"ignored")
    for _ in range(2):  # T5 the first time, the cache the second
        DeepFloydIF.load(str(tiny_if_dir)).encode_prompt(prompt, view_dependent=False)
        assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")] == [message]


# --- the SDS step ----------------------------------------------------------------------------------

def test_encode_is_2x_minus_1_at_the_unet_size_and_differentiable(tiny_if):
    images = torch.rand(2, 16, 16, 3, requires_grad=True)
    assert torch.equal(tiny_if.encode(images), images.detach().permute(0, 3, 1, 2) * 2 - 1)
    flat = torch.full((1, 40, 24, 3), 0.25, requires_grad=True)
    x0 = tiny_if.encode(flat)
    assert x0.shape == (1, 3, 16, 16) and torch.allclose(x0, torch.full_like(x0, -0.5))
    x0.sum().backward()  # each output pixel is 2 x (a weighted mean of inputs) - 1: the gradient sums to 2 x 3 x 16^2
    assert flat.grad.sum().item() == pytest.approx(2 * 3 * 16 * 16, rel=1e-5)
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\], got \(1, 8, 8, 4\)"):
        tiny_if.encode(torch.rand(1, 8, 8, 4))


def test_predict_eps_runs_k_conditions_in_one_forward(tiny_if):
    cond = tiny_if.encode_prompt("a red cube", "blurry")
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 700])
    emb = torch.stack([cond.uncond.expand(2, -1, -1), torch.cat([cond.cond["front"], cond.cond["back"]]),
                       torch.cat([cond.cond["side"], cond.cond["overhead"]])])  # [K=3, B=2, 77, 32]
    eps = tiny_if.predict_eps(x_t, t, emb)
    assert eps.shape == (3, 2, 3, 16, 16)
    with torch.no_grad():
        for k in range(3):
            direct = tiny_if.unet(x_t, t, encoder_hidden_states=emb[k]).sample
            assert direct.shape == (2, 6, 16, 16)
            assert torch.allclose(eps[k], direct[:, :3], atol=1e-5)


def test_predict_eps_of_a_v_prediction_if_converts_the_noise_channels(tiny_if_dir, tmp_path):
    """IF's UNet outputs eps (or v) in its first 3 channels and the learned variance in the other 3: with a
    v-prediction scheduler, predict_eps converts the first 3 in closed form, eps = sqrt(abar) v + sqrt(1 - abar) x_t,
    on IF's cosine schedule (at c5a276d it returned v)."""
    from model_folders import with_prediction_type

    folder = with_prediction_type(tiny_if_dir, tmp_path, "v_prediction")
    model = DeepFloydIF.load(str(folder))  # no prompt, so T5 stays on disk
    g = torch.Generator().manual_seed(4)
    x_t, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([50, 900])
    emb = torch.randn(2, 2, 77, 32, generator=g)  # [K, B, L, D]: any text embeddings
    with torch.no_grad():
        out6 = torch.stack([model.unet(x_t, t, encoder_hidden_states=e).sample for e in emb])  # [K, B, 6, S, S]
    abar = cosine_alphas_cumprod()[t].view(2, 1, 1, 1)
    want = abar.sqrt() * out6[:, :, :3] + (1 - abar).sqrt() * x_t
    assert (want - out6[:, :, :3]).abs().max() > 0.1
    torch.testing.assert_close(model.predict_eps(x_t, t, emb), want, atol=1e-5, rtol=1e-4)
    assert model.predict_eps(x_t, t, emb).shape == (2, 2, 3, 16, 16)


def test_sds_gradient_on_tiny_if_matches_independent_computation(tiny_if):
    class Recording:  # the same predictor, keeping x0 to read its gradient
        alphas_cumprod = tiny_if.alphas_cumprod
        predict_noise = staticmethod(tiny_if.predict_noise)
        encode_prompt = staticmethod(tiny_if.encode_prompt)

        def encode(self, images):
            self.x0 = tiny_if.encode(images)
            self.x0.retain_grad()
            return self.x0

    predictor = Recording()
    cfg = GuidanceConfig(guidance_scale=21.0)
    cameras = Views(torch.tensor([10.0, 5.0]), torch.tensor([20.0, 170.0]))  # front, back
    images = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(3)).requires_grad_()
    guidance = SDSGuidance(predictor, cfg, "a red cube", "blurry")
    out = guidance(images, cameras, 0, 1000, torch.Generator().manual_seed(1234))
    out["loss_sds"].backward()

    gen = torch.Generator().manual_seed(1234)  # t in [20, 980], then eps, from the same seed
    t = torch.randint(20, 981, (2,), generator=gen)
    x0 = images.detach().permute(0, 3, 1, 2) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    abar = cosine_alphas_cumprod()[t].view(2, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    cond = guidance.cond
    emb = torch.cat([cond.uncond, cond.uncond, cond.cond["front"], cond.cond["back"]])
    with torch.no_grad():
        out6 = tiny_if.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=emb).sample
    eps_u, eps_c = out6[:, :3].chunk(2)  # channels 3..5: the learned variance
    grad = (1 - abar) * (eps_u + 21.0 * (eps_c - eps_u) - eps)

    assert torch.allclose(predictor.x0.grad, grad / 2, atol=1e-4, rtol=1e-4)  # d loss / d x0 = grad / B
    assert torch.allclose(images.grad, (grad / 2 * 2).permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)  # x0 = 2 x - 1
    assert out["loss_sds"].item() == pytest.approx(0.5 * (grad ** 2).sum().item() / 2, rel=1e-4)
    assert out["t"] == pytest.approx(t.float().mean().item() / 1000)


def test_perp_neg_on_if_matches_the_rule_on_direct_unet_calls(tiny_if_dir):
    from dreamfusion.guidance.rules.perp_neg import PerpNegGuidance, perp_neg_noise, perp_neg_prompts

    cfg = load_config("deepfloyd", [f"guidance.deepfloyd.model={tiny_if_dir}", "prompt=a red cube", "negative_prompt=blurry",
                                    "guidance.type=perp_neg"])
    guidance = build_guidance(cfg, "cpu")
    assert isinstance(guidance, PerpNegGuidance)
    model, views = guidance.predictor, Views(torch.tensor([0.0, 10.0]), torch.tensor([30.0, 150.0]))
    x_t, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)), torch.tensor([300, 600])
    positive, negatives, weights = perp_neg_prompts(guidance.cond, views, cfg.guidance.perp_neg)
    with torch.no_grad():
        eps = [model.unet(x_t, t, encoder_hidden_states=e).sample[:, :3]
               for e in (guidance.cond.uncond.expand(2, -1, -1), positive, negatives[:, 0], negatives[:, 1])]
    expected = perp_neg_noise(eps[0], eps[1], torch.stack(eps[2:], 1), weights, 21.0)
    # batch 8 vs 2 x batch 2: float rounding of the UNet (~1e-6), times the guidance scale 21 and the projections
    assert (guidance.guided_noise(x_t, t, views) - expected).abs().max().item() < 1e-3


def _if_preview_reference(model, folder, cfg, steps: int) -> torch.Tensor:
    """The preview's DDIM replayed in float64 from the folder's own scheduler and direct UNet calls: the start noise
    of the seed, each view's conditional embedding by its label (front, right = side, back, left = side), CFG at
    guidance.preview_scale, x0 clipped to [-1, 1] and the step taken with the noise of the clipped x0."""
    from diffusers import DDPMScheduler

    abar = DDPMScheduler.from_pretrained(folder, subfolder="scheduler").alphas_cumprod.double()
    cond = model.encode_prompt(cfg.prompt, "", True)
    conds = torch.cat([cond.cond[label] for label in ("front", "side", "back", "side")])
    x = torch.randn((4, *model.sample_shape), generator=torch.Generator().manual_seed(cfg.seed)).double()
    ts = [round(999 * (steps - 1 - i) / (steps - 1)) for i in range(steps)]
    for i, t in enumerate(ts):
        with torch.no_grad():
            e_u, e_c = (model.unet(x.float(), torch.full((4,), t), encoder_hidden_states=e).sample[:, :3].double()
                        for e in (cond.uncond.expand(4, -1, -1), conds))
        eps = e_u + cfg.guidance.preview_scale * (e_c - e_u)
        a, b = abar[t], (abar[ts[i + 1]] if i + 1 < steps else torch.tensor(1.0, dtype=torch.float64))
        x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        x = b.sqrt() * x0 + (1 - b).sqrt() * (x - a.sqrt() * x0) / (1 - a).sqrt()
    return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def test_decode_undoes_encode_and_the_2d_preview_is_ddim_on_direct_unet_calls(tiny_if_dir, monkeypatch):
    import dreamfusion.preview as preview
    from broken_samplers import BROKEN

    model = DeepFloydIF.load(str(tiny_if_dir))
    images = torch.rand(2, 16, 16, 3)
    assert model.sample_shape == (3, 16, 16) and model.clip_denoised
    assert torch.allclose(model.decode(model.encode(images)), images, atol=1e-6)
    cfg = load_config("deepfloyd", [f"guidance.deepfloyd.model={tiny_if_dir}", "prompt=a red cube", "device=cpu",
                                    "guidance.preview_scale=4"])
    reference = _if_preview_reference(model, tiny_if_dir, cfg, steps=4)
    assert (preview.sample_preview(cfg, 4, model=model).double() - reference).abs().max().item() < 1e-4
    for name, sampler in BROKEN.items():  # the oracle catches each broken sampler (measured: 1.0 for every one)
        monkeypatch.setattr(preview, "ddim_sample", sampler)
        assert (preview.sample_preview(cfg, 4, model=model).double() - reference).abs().max().item() > 0.05, name


# --- end to end ------------------------------------------------------------------------------------

def test_build_guidance_binds_the_prompt(tiny_if_dir):
    cfg = load_config("deepfloyd", [f"guidance.deepfloyd.model={tiny_if_dir}", "prompt=a red cube",
                                    "guidance.view_dependent=false"])
    guidance = build_guidance(cfg, "cpu")
    assert isinstance(guidance, SDSGuidance) and isinstance(guidance.predictor, DeepFloydIF)
    out = guidance(torch.rand(1, 8, 8, 3, requires_grad=True), None, 0, 100, torch.Generator().manual_seed(0))
    assert set(out) == {"loss_sds", "grad_norm", "t"} and out["loss_sds"].requires_grad


def test_cli_run_with_the_deepfloyd_config(tiny_if_dir, tmp_path, t5_cache):
    from dreamfusion.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = ["--config", "deepfloyd", "prompt=a red cube", f"guidance.deepfloyd.model={tiny_if_dir}", "steps=3", "device=cpu",
            f"output_dir={tmp_path / 'runs'}", "render.width=16", "render.height=16", "render.n_samples=16",
            "preview_every=0", "log_every=1", *FIELD, *CHEAP_EXPORT]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    assert rc == 0, err.getvalue()
    run_dir = Path(out.getvalue().strip().splitlines()[-1])
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done" and record["guidance"] == "sds/deepfloyd" and record["step"] == 3
    assert "type: deepfloyd" in (run_dir / "config.yaml").read_text()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss_sds" in m] == [1, 2, 3]
    assert len(list(next(t5_cache.iterdir()).glob("*.pt"))) == 5  # the run filled the T5 cache
