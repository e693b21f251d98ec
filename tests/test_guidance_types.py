"""The guidance is a rule (guidance.type) on a noise model (guidance.model_type), each checked by its own section.

Oracles: the classes each pair builds (a literal table here); the one-line errors of a disallowed pair and of the
keys and values of earlier versions; a config.yaml written by the old schema (tests/data, written by the code
before the split) read as the same settings; the model cache key against the keys each loader read before the
split (the hand-written guidance_model_key it replaces), key by key over every key of the config; Dream Fields'
transmittance term against its closed form.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from dreamfusion.config import CHOICES, Config, LossConfig, all_keys, load_config, load_run_config
from dreamfusion.errors import ConfigError
from dreamfusion.guidance import (DeepFloydIF, PerpNegGuidance, SDSGuidance, StableDiffusion, build_guidance,
                                  guidance_model_key, load_guidance_model)
from dreamfusion.settings import replace_key
from dreamfusion.train.losses import regularizers, transmittance_loss
from render.cameras import orbit_cameras

OLD_CONFIG = Path(__file__).parent / "data" / "old_schema_perp_neg_prior.yaml"
PRIOR_SMALL = ["guidance.prior.resolution=16", "guidance.prior.views=16"]
FIXTURE = {"stable_diffusion": "tiny_sd_dir", "deepfloyd": "tiny_if_dir", "prior": None}
PREDICTOR = {"stable_diffusion": StableDiffusion, "deepfloyd": DeepFloydIF, "prior": "EmbeddedPrior"}
ALLOWED = [("sds", m) for m in FIXTURE] + [("perp_neg", m) for m in FIXTURE] + [("vsd", "stable_diffusion")]


def config_for(rule: str, model_type: str, request, extra=()) -> Config:
    fixture = FIXTURE[model_type]
    model = [f"guidance.{model_type}.model={request.getfixturevalue(fixture)}"] if fixture else []
    return load_config("demo", ["prompt=a red cube", f"guidance.type={rule}", f"guidance.model_type={model_type}",
                                "guidance.stable_diffusion.vae_resolution=16", *PRIOR_SMALL, *model, *extra])


def one_line(fn) -> str:
    with pytest.raises(ConfigError) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


# -- each rule on each model it allows ------------------------------------------------------------------

@pytest.mark.parametrize("rule, model_type", ALLOWED)
def test_each_rule_builds_on_each_allowed_model(rule, model_type, request):
    cfg = config_for(rule, model_type, request)
    guidance = build_guidance(cfg, "cpu", load_guidance_model(cfg, "cpu"))
    expected_rule = {"sds": SDSGuidance, "perp_neg": PerpNegGuidance}.get(rule)
    if rule == "vsd":
        from dreamfusion.guidance.rules.vsd import VSDGuidance

        expected_rule = VSDGuidance
    assert type(guidance) is expected_rule
    predictor = PREDICTOR[model_type]
    assert type(guidance.predictor).__name__ == (predictor if isinstance(predictor, str) else predictor.__name__)
    images = torch.rand(2, 16, 16, 3, requires_grad=True)
    out = guidance(images, orbit_cameras(2, 15.0, 2.4, 45.0), 0, 10, torch.Generator().manual_seed(0))
    out["loss_sds"].backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_clip_builds_on_its_own_model(tiny_clip_dir):
    from dreamfusion.guidance.models.clip import FrozenCLIP
    from dreamfusion.guidance.rules.clip import CLIPGuidance

    cfg = load_config("dreamfields", ["prompt=a red cube", f"guidance.clip.model={tiny_clip_dir}"])
    guidance = build_guidance(cfg, "cpu")
    assert type(guidance) is CLIPGuidance and type(guidance.clip) is FrozenCLIP


@pytest.mark.parametrize("model_type", ["prior", "deepfloyd"])
def test_vsd_on_another_model_is_one_line_naming_the_fix(model_type):
    message = one_line(lambda: load_config("demo", ["guidance.type=vsd", f"guidance.model_type={model_type}"]))
    assert message == (f"guidance.type=vsd trains a LoRA of Stable Diffusion's UNet: needs "
                       f"guidance.model_type=stable_diffusion, got guidance.model_type={model_type} "
                       f"(or use guidance.type=sds or perp_neg with {model_type})")
    made_in_code = replace_key(replace_key(Config(prompt="a red cube"), "guidance.type", "vsd"),
                               "guidance.model_type", model_type)
    assert one_line(lambda: build_guidance(made_in_code, "cpu")) == message  # the section's check, before any load


# -- keys and values of earlier versions -----------------------------------------------------------------

@pytest.mark.parametrize("old, new", [
    ("guidance.vsd.enabled=true", "set guidance.type=vsd"),
    ("guidance.perp_neg.enabled=true", "set guidance.type=perp_neg"),
    ("guidance.type=prior", "guidance.type=prior is now guidance.model_type=prior (with guidance.type=sds)"),
    ("guidance.type=deepfloyd", "guidance.type=deepfloyd is now guidance.model_type=deepfloyd (with guidance.type=sds)"),
    ("guidance.model=x", "config key 'guidance.model' moved into its model's section: guidance.stable_diffusion.model, "
                         "guidance.deepfloyd.model or guidance.clip.model"),
    ("guidance.revision=main", "moved into its model's section: guidance.stable_diffusion.revision, "
                               "guidance.deepfloyd.revision or guidance.clip.revision"),
    ("guidance.half_precision=false", "guidance.deepfloyd.half_precision or guidance.clip.half_precision"),
    ("guidance.dtype=fp32", "moved into its model's section: guidance.stable_diffusion.dtype or guidance.deepfloyd.dtype"),
    ("guidance.channels_last=true", "guidance.stable_diffusion.channels_last or guidance.deepfloyd.channels_last"),
    ("guidance.attention=classic", "config key 'guidance.attention' moved into its model's section: "
                                   "guidance.stable_diffusion.attention"),
    ("guidance.compile=true", "guidance.stable_diffusion.compile or guidance.deepfloyd.compile"),
    ("guidance.vae_resolution=256", "config key 'guidance.vae_resolution' moved into its model's section: "
                                    "guidance.stable_diffusion.vae_resolution"),
])
def test_old_guidance_keys_and_values_name_the_new_setting(old, new, tmp_path):
    assert new in one_line(lambda: load_config(None, [old])) and "(in command line)" in one_line(lambda: load_config(None, [old]))
    key, value = old.split("=")
    tree: dict = {}
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert new in one_line(lambda: load_config(str(path)))


# -- a run folder's config.yaml written by the old schema ------------------------------------------------

def _old_file(tmp_path, **guidance) -> Path:
    tree = yaml.safe_load(OLD_CONFIG.read_text())
    tree["guidance"]["type"] = guidance.get("type", tree["guidance"]["type"])
    tree["guidance"]["perp_neg"]["enabled"] = guidance.get("perp_neg", tree["guidance"]["perp_neg"]["enabled"])
    tree["guidance"]["vsd"]["enabled"] = guidance.get("vsd", tree["guidance"]["vsd"]["enabled"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_the_old_schemas_config_yaml_loads_with_a_note(capsys):
    tree = yaml.safe_load(OLD_CONFIG.read_text())
    assert tree["guidance"]["type"] == "prior" and tree["guidance"]["perp_neg"]["enabled"] is True  # as written
    cfg = load_run_config(OLD_CONFIG)
    assert "old key name(s)" in capsys.readouterr().err
    same = load_config("demo", ["prompt=a red cube", "steps=30", "preview_every=30", "export.video_frames=4",
                                "output_dir=/tmp/guide21_base_pn", "guidance.type=perp_neg"])
    assert cfg.guidance == same.guidance and (cfg.guidance.type, cfg.guidance.model_type) == ("perp_neg", "prior")
    assert cfg == same


@pytest.mark.parametrize("old, rule, model_type", [
    ({"type": "sds", "perp_neg": False}, "sds", "stable_diffusion"),
    ({"type": "sds", "perp_neg": False, "vsd": True}, "vsd", "stable_diffusion"),
    ({"type": "sds", "perp_neg": True}, "perp_neg", "stable_diffusion"),
    ({"type": "prior", "perp_neg": False}, "sds", "prior"),
    ({"type": "deepfloyd", "perp_neg": False}, "sds", "deepfloyd"),
    ({"type": "deepfloyd", "perp_neg": True}, "perp_neg", "deepfloyd"),
    ({"type": "clip", "perp_neg": False}, "clip", "stable_diffusion"),
])
def test_old_flags_and_types_migrate(old, rule, model_type, tmp_path):
    path = _old_file(tmp_path, **old)
    cfg = load_run_config(path)
    assert (cfg.guidance.type, cfg.guidance.model_type) == (rule, model_type)


MOVED_VALUES = {"model": "my/model", "revision": "v2", "half_precision": False, "dtype": "bf16", "channels_last": True,
                "attention": "classic", "compile": True, "vae_resolution": 256}


@pytest.mark.parametrize("old_type, kind", [("sds", "stable_diffusion"), ("deepfloyd", "deepfloyd"), ("clip", "clip"),
                                            ("prior", "prior")])
def test_old_shared_model_keys_move_into_the_runs_model_section(old_type, kind, tmp_path, capsys):
    """A config.yaml written before issue 21 holds the model keys on guidance: they land in the section of that
    run's model (what its loader read then), and the prior, which never read them, drops them."""
    tree = yaml.safe_load(OLD_CONFIG.read_text())
    tree["guidance"].update(type=old_type, **MOVED_VALUES)
    tree["guidance"]["perp_neg"]["enabled"] = False
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree))
    cfg = load_run_config(tmp_path / "config.yaml")
    assert "old key name(s)" in capsys.readouterr().err
    assert cfg.guidance.model_kind == kind
    defaults = Config().guidance
    for section in ("stable_diffusion", "deepfloyd", "clip"):
        now, default = getattr(cfg.guidance, section), getattr(defaults, section)
        for leaf, value in MOVED_VALUES.items():
            if hasattr(default, leaf):
                expected = value if section == kind else getattr(default, leaf)
                assert getattr(now, leaf) == expected, (section, leaf)
    assert cfg.guidance.prior == defaults.prior and cfg.guidance.clip.crops == tree["guidance"]["clip"]["crops"]


# -- the model cache key: exactly the keys each loader reads ---------------------------------------------

READS = {  # what each loader reads: its own section (the same settings it read from guidance.* before issue 21)
    "stable_diffusion": {f"guidance.stable_diffusion.{k}" for k in ("model", "revision", "half_precision", "dtype",
                                                                    "channels_last", "attention", "compile",
                                                                    "vae_resolution")},
    "deepfloyd": {f"guidance.deepfloyd.{k}" for k in ("model", "revision", "half_precision", "dtype",
                                                      "channels_last", "compile", "max_length", "variant")},
    "prior": {"camera.elevation_range", "camera.azimuth_range", "camera.distance_range", "camera.fovy_range",
              "camera.n_views", "guidance.prior.resolution", "guidance.prior.views", "guidance.prior.view_window",
              "render.background"},
    "clip": {"guidance.clip.model", "guidance.clip.revision", "guidance.clip.half_precision"},
}


def _other(key: str, value):
    """A value of ``key`` other than ``value`` (not necessarily one the loader would accept: the key is computed
    from the config, nothing is loaded)."""
    if key in CHOICES:
        allowed = CHOICES[key]
        return allowed[(allowed.index(value) + 1) % len(allowed)]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if isinstance(value, int) else value + 0.25
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, (list, tuple)):  # a config holds tuples
        return tuple(v + 1 for v in value) if value and not isinstance(value[0], str) else (*value, "other")
    assert value is None, (key, value)
    return "fp16" if key.endswith("variant") else 0.5 if key.startswith("export") else "other"


@pytest.mark.parametrize("kind", ["stable_diffusion", "deepfloyd", "prior", "clip"])
def test_the_model_key_changes_exactly_when_a_key_its_loader_reads_changes(kind):
    base = replace_key(Config(), "guidance.type", "clip") if kind == "clip" else \
        replace_key(Config(), "guidance.model_type", kind)
    key = guidance_model_key(base)
    assert key[0] == kind
    checked = 0
    for dotted, _, default in all_keys():
        if dotted in ("guidance.type", "guidance.model_type"):
            continue
        value = base
        for part in dotted.split("."):
            value = getattr(value, part)
        changed = guidance_model_key(replace_key(base, dotted, _other(dotted, value)))
        assert (changed != key) == (dotted in READS[kind]), dotted
        checked += 1
    assert checked == len(all_keys()) - 2


def test_the_model_key_follows_the_model_not_the_rule():
    sd = Config()
    assert guidance_model_key(replace_key(sd, "guidance.type", "perp_neg")) == guidance_model_key(sd)
    assert guidance_model_key(replace_key(sd, "guidance.type", "vsd")) == guidance_model_key(sd)
    kinds = {guidance_model_key(replace_key(sd, "guidance.model_type", m))[0] for m in CHOICES["guidance.model_type"]}
    assert kinds == set(CHOICES["guidance.model_type"])
    assert guidance_model_key(replace_key(sd, "guidance.type", "clip"))[0] == "clip"


# -- Dream Fields' transmittance loss is a render regulariser --------------------------------------------

def test_transmittance_is_a_regulariser_weighed_by_its_key():
    opacity = torch.tensor([0.1, 0.3, 0.8, 0.9]).view(1, 2, 2, 1)
    out = {"opacity": opacity, "normal": None}
    assert "loss_transmittance" not in regularizers(out, None, 0, LossConfig(transmittance=0.0))
    terms = regularizers(out, None, 250, LossConfig(transmittance=0.5))
    tau = 0.4 + (0.88 - 0.4) * 250 / 500  # Dream Fields' target at step 250
    assert terms["loss_transmittance"].item() == pytest.approx(-min(tau, 1 - opacity.mean().item()), abs=1e-7)
    assert torch.equal(terms["loss_transmittance"], transmittance_loss(opacity, 250))
    assert not math.isnan(terms["loss_sparsity"].item())
