"""Dream Fields: CLIP guidance, transmittance loss, background / crop augmentation, CLIP evaluation.

Oracles: closed forms (tau schedule, L_T and its gradient, fovy that fits a radius-1 scene, a render
over the augmented background = white render + (1 - opacity) (bg - 1)), a hand-written twin of the
CLIP loss (tokenizer + CLIPModel calls), central finite differences for the gradient through the
field, hand-computed R-precision of known pairings, and the run-folder contract of docs/DESIGN.md.
The CLIP is the tiny random one of conftest.py, loaded by path through the user code path.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamfusion.io import atomic_write_text
from dreamfusion.cli import main
from dreamfusion.clip_eval import clip_scores, eval_cameras, r_precision, render_run
from dreamfusion.config import ClipConfig, GuidanceConfig, load_config, to_yaml
from dreamfusion.errors import ModelNotFoundError, UserError
from dreamfusion.fields import build_field
from dreamfusion.guidance import build_guidance
from dreamfusion.guidance.rules.augment import crop, random_crop_boxes
from dreamfusion.guidance.models.clip import CLIP_MEAN, CLIP_STD, FrozenCLIP
from dreamfusion.guidance.rules.clip import CLIPGuidance
from dreamfusion.renderer import build_background, render_views, solid_background
from dreamfusion.renderer.backgrounds import _blur, _checkerboard, _fourier, random_backgrounds
from dreamfusion.settings import replace_key
from dreamfusion.train import Trainer
from dreamfusion.train.losses import transmittance_loss, transmittance_target
from render.cameras import orbit_cameras

ROOT = Path(__file__).resolve().parent.parent
SMALL_FIELD = ["field.hashgrid.n_levels=4", "field.hashgrid.log2_hashmap_size=12", "field.hashgrid.base_resolution=8", "field.hidden_dim=16"]
SMALL_RUN = ["device=cpu", "render.width=32", "render.height=32", "render.n_samples=32", "export.resolution=32",
             "export.video_frames=30", "export.video_resolution=32", "export.texture_size=128", *SMALL_FIELD]


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_dir):
    return FrozenCLIP.load(str(tiny_clip_dir))


def reference_text(folder, texts):
    """Unit text embeddings by hand: tokenizer + CLIPModel.get_text_features."""
    from transformers import CLIPModel, CLIPTokenizer

    tok, model = CLIPTokenizer.from_pretrained(folder), CLIPModel.from_pretrained(folder).eval()
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    out = model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
    return F.normalize(out if torch.is_tensor(out) else out.pooler_output, dim=-1)


def reference_images(folder, x):
    """Unit image embeddings by hand: x [N, 3, 32, 32] in [0, 1], OpenAI mean / std, get_image_features."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    out = model.get_image_features(pixel_values=(x - mean) / std)
    return F.normalize(out if torch.is_tensor(out) else out.pooler_output, dim=-1)


# --- transmittance ----------------------------------------------------------------------------------

@pytest.mark.parametrize("step, tau", [(0, 0.4), (250, 0.64), (500, 0.88), (1000, 0.88)])
def test_transmittance_target(step, tau):
    assert transmittance_target(step) == pytest.approx(tau, abs=1e-12)


def test_transmittance_loss_closed_form_and_gradient():
    # view 0: opacity 0.8 -> T = 0.2 < tau; view 1: opacity 0.05 -> T = 0.95 > tau = 0.88 at step 500
    opacity = torch.stack([torch.full((4, 5, 1), 0.8), torch.full((4, 5, 1), 0.05)]).requires_grad_(True)
    loss = transmittance_loss(opacity, 500)
    assert loss.item() == pytest.approx(-(0.2 + 0.88) / 2, abs=1e-6)
    loss.backward()
    # d/d opacity of -(1/2) mean(1 - opacity) over 20 pixels is +1/40 on view 0; view 1 is clamped: 0
    assert torch.allclose(opacity.grad[0], torch.full((4, 5, 1), 1 / 40))
    assert torch.equal(opacity.grad[1], torch.zeros(4, 5, 1))
    assert transmittance_loss(torch.full((1, 2, 2, 1), 0.3), 0).item() == pytest.approx(-0.4)
    with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
        transmittance_loss(torch.zeros(2, 3, 3), 0)


# --- augmentation -----------------------------------------------------------------------------------

def test_random_backgrounds_seeded_and_deterministic():
    a = random_backgrounds(6, 20, 24, torch.Generator().manual_seed(3), device="cpu")
    b = random_backgrounds(6, 20, 24, torch.Generator().manual_seed(3), device="cpu")
    c = random_backgrounds(6, 20, 24, torch.Generator().manual_seed(4), device="cpu")
    assert a.shape == (6, 20, 24, 3) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # the renderer's entry point draws the same backgrounds from the same generator state
    assert torch.equal(solid_background("augment", (6, 20, 24), torch.Generator().manual_seed(3), device="cpu"), a)
    assert build_background("augment") is None


def test_background_kinds_closed_forms():
    g = torch.Generator().manual_seed(0)
    board = _checkerboard(16, 16, g)
    assert len(torch.unique(board.reshape(-1, 3), dim=0)) <= 2  # two colours
    tex = _fourier(16, 20, g)
    assert torch.allclose(tex.flatten(0, 1).min(0).values, torch.zeros(3))  # rescaled to exactly [0, 1]
    assert torch.allclose(tex.flatten(0, 1).max(0).values, torch.ones(3))
    flat = torch.full((12, 12, 3), 0.3)
    assert torch.allclose(_blur(flat, 2.0), flat)  # a normalised kernel keeps a constant image


@settings(max_examples=150, deadline=None, database=None)  # no .hypothesis/ in the tree
@given(seed=st.integers(0, 2 ** 31 - 1), n=st.integers(1, 12), height=st.integers(1, 300),
       width=st.integers(1, 300), fraction=st.floats(0.01, 1.0))
def test_crop_boxes_stay_inside(seed, n, height, width, fraction):
    boxes = random_crop_boxes(n, height, width, fraction, torch.Generator().manual_seed(seed))
    top, left, h, w = boxes.T
    assert torch.equal(boxes, random_crop_boxes(n, height, width, fraction, torch.Generator().manual_seed(seed)))
    assert (h == min(max(round(fraction * height), 1), height)).all()
    assert (w == min(max(round(fraction * width), 1), width)).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()


def test_crop_positions_cover_every_offset_and_match_slicing():
    boxes = random_crop_boxes(400, 10, 10, 0.8, torch.Generator().manual_seed(1))  # 8 px crops: offsets 0, 1, 2
    assert set(boxes[:, 0].tolist()) == {0, 1, 2} and set(boxes[:, 1].tolist()) == {0, 1, 2}
    images = torch.rand(2, 10, 10, 3)
    crops = crop(images, boxes[:6], per_image=3)
    for i, (t, l, h, w) in enumerate(boxes[:6].tolist()):
        assert torch.equal(crops[i], images[i // 3, t:t + h, l:l + w].permute(2, 0, 1))


# --- the CLIP wrapper and loss ----------------------------------------------------------------------

def test_frozen_clip_reads_size_and_normalisation(tiny_clip_dir, tmp_path, tiny_clip):
    assert tiny_clip.input_size == 32 and all(not p.requires_grad for p in tiny_clip.model.parameters())
    assert torch.allclose(tiny_clip.mean.flatten(), torch.tensor(CLIP_MEAN))
    custom = tmp_path / "custom"
    shutil.copytree(tiny_clip_dir, custom)
    (custom / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    loaded = FrozenCLIP.load(str(custom))
    assert loaded.mean.flatten().tolist() == [0.5] * 3 and loaded.std.flatten().tolist() == [0.25] * 3
    (custom / "preprocessor_config.json").unlink()  # none: OpenAI's constants
    assert torch.allclose(FrozenCLIP.load(str(custom)).std.flatten(), torch.tensor(CLIP_STD))


def test_embeddings_match_hand_written_twin(tiny_clip_dir, tiny_clip):
    texts = ["a bouquet of flowers", "a red cube"]
    assert torch.allclose(tiny_clip.embed_text(texts), reference_text(tiny_clip_dir, texts), atol=1e-5)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(tiny_clip.embed_images(x), reference_images(tiny_clip_dir, x), atol=1e-5)


def test_clip_loss_matches_hand_computation(tiny_clip_dir, tiny_clip):
    cfg = GuidanceConfig(view_dependent=False, clip=ClipConfig(crops=3, crop_fraction=0.75))
    guidance = CLIPGuidance(tiny_clip, "a bouquet of flowers", cfg)
    images = torch.rand(2, 40, 40, 3, generator=torch.Generator().manual_seed(5))
    terms = guidance(images, None, 0, 10, generator=torch.Generator().manual_seed(9))

    boxes = random_crop_boxes(6, 40, 40, 0.75, torch.Generator().manual_seed(9))  # 30 px crops
    crops = torch.stack([images[i // 3, t:t + h, l:l + w].permute(2, 0, 1) for i, (t, l, h, w) in
                         enumerate(boxes.tolist())])
    resized = F.interpolate(crops, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    cos = reference_images(tiny_clip_dir, resized) @ reference_text(tiny_clip_dir, ["a bouquet of flowers"])[0]
    assert terms["loss_clip"].item() == pytest.approx(-cos.mean().item(), abs=1e-5)
    assert terms["clip_similarity"] == pytest.approx(cos.mean().item(), abs=1e-5)


def test_view_dependent_text_per_camera(tiny_clip):
    guidance = CLIPGuidance(tiny_clip, "a red cube", GuidanceConfig(view_dependent=True))
    cams = orbit_cameras(4, 30.0, 4.0, 30.0)  # azimuth -180 (back), -90 (side), 0 (front), 90 (side)
    expected = tiny_clip.embed_text([f"a red cube, {v} view" for v in ("back", "side", "front", "side")])
    assert torch.allclose(guidance.text_for(cams, 4), expected)


def test_gradient_through_render_matches_finite_difference(tiny_clip):
    torch.manual_seed(0)
    cfg = load_config("dreamfields", ["prompt=x", *SMALL_FIELD])
    field = build_field(cfg.field)
    guidance = CLIPGuidance(tiny_clip, "a bouquet of flowers", GuidanceConfig(view_dependent=False, clip=ClipConfig(crops=2)))
    cams = orbit_cameras(2, 30.0, 4.0, 30.0)

    def loss_fn():
        out = render_views(field, None, cams, 24, 24, n_samples=24, background_kind="augment",
                           generator=torch.Generator().manual_seed(2))
        return guidance(out["rgb"], cams, 0, 10, generator=torch.Generator().manual_seed(3))["loss_clip"]

    loss_fn().backward()
    for name, p in field.named_parameters():  # every field parameter (hash table and MLP) gets a gradient
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # the directional derivative along the gradient of the last MLP layer equals a central difference
    weight = field.mlp[-1].weight
    direction = weight.grad / weight.grad.norm()
    analytic = (weight.grad * direction).sum().item()
    eps = 1e-2
    with torch.no_grad():
        weight += eps * direction
        plus = loss_fn().item()
        weight -= 2 * eps * direction
        minus = loss_fn().item()
        weight += eps * direction
    assert analytic > 0 and (plus - minus) / (2 * eps) == pytest.approx(analytic, rel=0.05)


def test_augment_background_composites_behind_the_render():
    torch.manual_seed(0)
    field = build_field(load_config("dreamfields", ["prompt=x", *SMALL_FIELD]).field)
    cams = orbit_cameras(2, 30.0, 4.0, 30.0)
    with torch.no_grad():
        white = render_views(field, None, cams, 16, 16, n_samples=16, background_kind="white")
        aug = render_views(field, None, cams, 16, 16, n_samples=16, background_kind="augment",
                           generator=torch.Generator().manual_seed(6))
    bg = random_backgrounds(2, 16, 16, torch.Generator().manual_seed(6), device="cpu")
    assert torch.allclose(aug["rgb"], white["rgb"] + (1 - white["opacity"]) * (bg - 1), atol=1e-6)


def test_build_guidance_and_missing_model_errors(tiny_clip_dir, tmp_path):
    cfg = load_config("dreamfields", ["prompt=a red cube", f"guidance.clip.model={tiny_clip_dir}"])
    assert isinstance(build_guidance(cfg, "cpu"), CLIPGuidance)
    for model, needle in ((str(tmp_path / "nope"), "is not a folder"), (str(tmp_path), "has no config.json"),
                          ("openai/clip-vit-base-patch16", "not in the local cache")):  # HF_HUB_OFFLINE=1
        cfg = load_config("dreamfields", ["prompt=a red cube", f"guidance.clip.model={model}"])
        with pytest.raises(ModelNotFoundError) as info:
            build_guidance(cfg, "cpu")
        message = str(info.value)
        assert "\n" not in message and needle in message and model in message
        assert "hf download" in message and "guidance.clip.model=" in message and "--config demo" in message
    cfg = replace_key(load_config("dreamfields", ["prompt=x", f"guidance.clip.model={tiny_clip_dir}"]), "prompt", "  ")
    with pytest.raises(UserError, match="prompt is empty"):
        build_guidance(cfg, "cpu")


def test_dreamfields_config_frames_a_radius_one_scene():
    cfg = load_config("dreamfields", ["prompt=x"])
    c = cfg.camera
    assert (cfg.guidance.type, cfg.render.background, cfg.loss.clip, cfg.loss.transmittance, cfg.loss.sds) == \
        ("clip", "augment", 1.0, 0.5, 0.0)
    assert c.elevation_range == (30.0, 30.0) and c.distance_range == (4.0, 4.0) and c.azimuth_range == (-180.0, 180.0)
    # a sphere of radius 1 at distance d subtends 2 asin(1 / d): the view holds it with < 2 degrees to spare
    fit = math.degrees(2 * math.asin(1.0 / c.distance_range[0]))
    for fovy in (*c.fovy_range, c.eval_fovy):
        assert fit <= fovy <= fit + 2.0


# --- evaluation -------------------------------------------------------------------------------------

def test_r_precision_by_construction():
    text = torch.eye(4)  # prompt r embeds as e_r
    per_run, mean = r_precision(text[:, None].expand(4, 3, 4).clone(), text)
    assert per_run.tolist() == [1.0] * 4 and mean == 1.0
    # view 0 of every run shows its own prompt; view 1 of runs 0 and 1 shows the other's: runs 0, 1 get 1/2
    images = torch.stack([text, text[[1, 0, 2, 3]]], dim=1)  # [R=4, V=2, D=4]
    per_run, mean = r_precision(images, text)
    assert per_run.tolist() == [0.5, 0.5, 1.0, 1.0] and mean == pytest.approx(0.75)
    # a full derangement retrieves nothing; runs sharing a prompt do not compete
    assert r_precision(text[[1, 2, 3, 0]][:, None], text)[1] == 0.0
    assert r_precision(torch.ones(2, 1, 3), torch.ones(2, 3))[1] == 1.0
    assert torch.allclose(clip_scores(text[:, None], text), torch.full((4,), 100.0))


def test_eval_cameras_are_off_the_preview_azimuths():
    for n in range(1, 17):
        cams = eval_cameras(n, 30.0, 4.0, 30.0)
        assert not torch.any(torch.remainder(cams.azimuth, 90.0) == 0)
        assert torch.allclose(cams.position.norm(dim=-1), torch.full((n,), 4.0))
        assert torch.allclose(cams.position[:, 1], torch.full((n,), 4.0 * math.sin(math.radians(30.0))))


@pytest.fixture(scope="module")
def two_runs(tiny_clip_dir, tmp_path_factory):
    """RUN_A: a 10-step `python -m dreamfusion --config dreamfields` run; RUN_B: another prompt, at init."""
    out = tmp_path_factory.mktemp("dreamfields-runs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dreamfusion", "--config", "dreamfields",
                           "prompt=a bouquet of flowers", f"guidance.clip.model={tiny_clip_dir}", "steps=10",
                           f"output_dir={out}", *SMALL_RUN], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_a = Path(proc.stdout.strip().splitlines()[-1])
    cfg_b = load_config("dreamfields", ["prompt=a red cube", f"guidance.clip.model={tiny_clip_dir}", *SMALL_RUN])
    run_b = out / "run-b"
    run_b.mkdir()
    atomic_write_text(run_b / "config.yaml", to_yaml(cfg_b))
    Trainer(cfg_b, run_b, torch.device("cpu")).save()
    return run_a, run_b


def test_cli_dreamfields_run_writes_mesh_and_video(two_runs):
    run_a, _ = two_runs
    assert (run_a / "mesh" / "model.glb").read_bytes()[:4] == b"glTF"
    assert (run_a / "orbit.mp4").read_bytes()[4:8] == b"ftyp"
    rows = [json.loads(line) for line in (run_a / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 10 and rows[-1]["loss_clip"] == pytest.approx(-rows[-1]["clip_similarity"])


def test_cli_dreamfields_run_logs_transmittance(two_runs):
    """Needs the loop to add loss_transmittance when loss.transmittance > 0 (the lead's lines in train/trainer.py)."""
    rows = [json.loads(line) for line in (two_runs[0] / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]  # logged after step index 9: L_T = -min(tau(9), T) >= -tau(9), and <= 0
    assert "loss_transmittance" in last
    assert -transmittance_target(9) - 1e-6 <= last["loss_transmittance"] <= 0.0


def test_cli_eval_reports_both_runs(two_runs, tiny_clip_dir, tiny_clip, tmp_path, capsys):
    run_a, run_b = two_runs
    assert main(["eval", str(run_a), str(run_b), "--clip-model", str(tiny_clip_dir), "--views", "3"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "R-precision" in captured.err and str(run_b) in captured.err
    assert [r["run"] for r in report["runs"]] == [str(run_a), str(run_b)]
    assert [r["prompt"] for r in report["runs"]] == ["a bouquet of flowers", "a red cube"]

    images = [render_run(run, 3, 32, torch.device("cpu"))[1] for run in (run_a, run_b)]  # [V, 32, 32, 3] each
    image_emb = torch.stack([reference_images(tiny_clip_dir, im.permute(0, 3, 1, 2)) for im in images])
    text_emb = reference_text(tiny_clip_dir, ["a bouquet of flowers", "a red cube"])
    per_run, mean = r_precision(image_emb, text_emb)
    for r, row in enumerate(report["runs"]):
        assert 0.0 <= row["r_precision"] <= 1.0 and row["r_precision"] == pytest.approx(per_run[r].item())
        cos = (image_emb[r] @ text_emb[r]).mean().item()
        assert row["clip_score"] == pytest.approx(100 * cos, abs=1e-3)
    assert report["mean"]["r_precision"] == pytest.approx(mean)

    path = tmp_path / "scores.json"
    assert main(["eval", str(run_b), "--clip-model", str(tiny_clip_dir), "--views", "2", "--json", str(path)]) == 0
    assert capsys.readouterr().out == "" and json.loads(path.read_text())["runs"][0]["run"] == str(run_b)


@pytest.mark.parametrize("argv, needle", [
    (["eval"], "at least one run folder"),
    (["eval", "RUN"], "needs --clip-model"),
    (["eval", "no/such/run", "--clip-model", "x"], "does not exist"),
    (["eval", "RUN", "--clip-model", "/no/such/clip"], "evaluation CLIP '/no/such/clip' is not a folder"),
    (["eval", "RUN", "--clip-model", "x", "--views", "0"], "--views must be a positive integer, got '0'"),
])
def test_eval_errors_are_one_line(argv, needle, two_runs, capsys):
    argv = [str(two_runs[1]) if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err


def test_long_prompt_warns_once_on_stderr(tiny_clip, capsys):
    words = " ".join(["flower"] * 80)  # at least 80 tokens plus start and end: past CLIP's 77
    CLIPGuidance(tiny_clip, words, GuidanceConfig(view_dependent=False))
    err = capsys.readouterr().err
    count = len(tiny_clip.tokenizer(words, truncation=False, verbose=False).input_ids)
    assert err == f"warning: prompt truncated: it is {count} tokens, CLIP reads 77; the last {count - 77} are ignored\n"
