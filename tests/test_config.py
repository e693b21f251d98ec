"""Typed configuration: precedence, the shipped YAML files, and one-line errors that name the key.

Oracles: the YAML files themselves (read with PyYAML, independently of OmegaConf), the dataclass
defaults, the CHOICES table against each key's docstring, and to_yaml -> load_run_config round trips.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import fields, is_dataclass

import pytest
import yaml
from omegaconf import OmegaConf

from dreamfusion.config import (CHOICES, CONFIG_DIR, Config, all_keys, available_configs, config_defaults, load_config,
                                load_run_config, to_yaml)
from dreamfusion.errors import ConfigError, UserError
from dreamfusion.migrations import MOVED_INTO_MODEL, RENAMED
from dreamfusion.settings import replace_key

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def leaves(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def error(name_or_path=None, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(name_or_path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- precedence and the shipped files --------------------------------------------------------------

def test_defaults_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("seed: 3\nsteps: 7\nfield:\n  hidden_dim: 32\nguidance:\n  t_min: 0.1\n")
    cfg = load_config(str(path), ["steps=9", "guidance.t_min=0.05", "camera.elevation_range=[0,30]"])
    default = Config()
    assert cfg.steps == 9 and cfg.guidance.t_min == 0.05  # the command line beats the file
    assert cfg.seed == 3 and cfg.field.hidden_dim == 32  # the file beats the defaults
    assert cfg.camera.elevation_range == (0.0, 30.0)
    assert cfg.log_every == default.log_every and cfg.field.hashgrid.n_levels == default.field.hashgrid.n_levels
    assert load_config(str(path), ["steps=9", "steps=11"]).steps == 11  # the last override wins


def test_a_loaded_config_is_frozen():
    """Every section and every list of a loaded config refuses changes: a copy is made with replace_key."""
    cfg = load_config("demo")
    for key, _, _ in all_keys():
        *parents, leaf = key.split(".")
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(get(cfg, ".".join(parents)) if parents else cfg, leaf, None)
        value = get(cfg, key)
        assert not isinstance(value, list), key  # tuples: no change in place either
    changed = replace_key(cfg, "field.hashgrid.n_levels", 3)
    assert changed.field.hashgrid.n_levels == 3 and cfg.field.hashgrid.n_levels == 8
    assert changed.camera is cfg.camera and changed.field.triplane is cfg.field.triplane  # untouched sections shared


def test_no_config_means_configs_dreamfusion_yaml():
    by_path = load_config(str(CONFIG_DIR / "dreamfusion.yaml"))
    assert load_config(None) == load_config("dreamfusion") == by_path


@pytest.mark.parametrize("name", [p.stem for p in SHIPPED])
def test_config_defaults_are_what_load_config_gives(name):
    """The report's comparison point (config_defaults: the file over the schema, as plain dicts) holds exactly the
    settings load_config builds from the same file (compared as JSON: lists and tuples, floats and ints alike)."""
    import json

    assert json.dumps(config_defaults(name)) == json.dumps(dataclasses.asdict(load_config(name)))


def test_available_configs_are_the_files_in_configs():
    assert available_configs() == sorted(p.stem for p in SHIPPED)  # (demo-multiview.yaml sorts before demo.yaml)
    assert {"demo", "dreamfusion"} <= set(available_configs())


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_loads_with_exactly_its_values(path):
    written = leaves(yaml.safe_load(path.read_text()) or {})
    keys = {k for k, _, _ in all_keys()}
    assert set(written) <= keys, set(written) - keys
    cfg = load_config(path.stem)
    for key, _, default in all_keys():
        expected = written.get(key, default)
        expected = tuple(expected) if isinstance(expected, list) else expected  # a loaded config holds tuples
        value = get(cfg, key)
        if isinstance(expected, float) or isinstance(value, float):
            assert value == pytest.approx(expected), key
        else:
            assert value == expected, key


@pytest.mark.parametrize("prompt", ["un cube rouge: très rouge # 1", "yes", "007", "[a cat]", 'say "hi"'])
def test_yaml_round_trip_through_a_run_folder(tmp_path, prompt):
    cfg = load_config("demo", ["export.threshold=2.5", "seed=7", "guidance.stable_diffusion.revision=main",
                               "export.video_panels=[rgb,normal,depth]"])
    cfg = replace_key(cfg, "prompt", prompt)  # YAML-looking text must come back as the same string
    (tmp_path / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    assert load_run_config(tmp_path / "config.yaml") == cfg
    again = load_run_config(tmp_path / "config.yaml", ["steps=900"])
    assert again.steps == 900 and again.prompt == prompt and again.field == cfg.field


@pytest.mark.parametrize("prompt", ["a sign that says: hello", "yes", "007", "a cat # cute", "[a cat]", '"a" b',
                                    "a ${x} cube"])
def test_string_overrides_are_taken_verbatim(prompt):
    assert load_config(None, [f"prompt={prompt}"]).prompt == prompt


# -- errors that name the key ------------------------------------------------------------------------

@pytest.mark.parametrize("override, named, close", [
    ("feild.type=nerf", "feild", "field"),
    ("stepz=3", "stepz", "steps"),
    ("guidance.stable_diffusion.modle=x", "guidance.stable_diffusion.modle", "guidance.stable_diffusion.model"),
    ("render.with=32", "render.with", "render.width"),
    ("camera.elevation=10", "camera.elevation", "camera.elevation_range"),
])
def test_unknown_key_names_it_and_a_close_match(override, named, close):
    message = error(None, [override])
    assert message.startswith(f"unknown config key '{named}'; did you mean ")
    suggestions = message.split("did you mean ", 1)[1].split("?")[0].split(" or ")
    assert close in suggestions
    assert message.endswith("(in command line)")


def test_unknown_key_without_a_close_match_points_to_help():
    assert error(None, ["zzzz=1"]) == "unknown config key 'zzzz'; see --help for the keys (in command line)"


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("steps: 5\nguidance:\n  stable_diffusion:\n    modle: x\n")
    message = error(str(path))
    assert "unknown config key 'guidance.stable_diffusion.modle'" in message
    assert "guidance.stable_diffusion.model" in message
    assert f"(in {path})" in message


@pytest.mark.parametrize("override, key", [
    ("steps=abc", "steps"), ("steps=1.5", "steps"), ("seed=1e3", "seed"), ("field.bound=abc", "field.bound"),
    ("render.perturb=maybe", "render.perturb"), ("camera.elevation_range=5", "camera.elevation_range"),
    ("export.video_panels=rgb", "export.video_panels"),
])
def test_wrong_type_names_the_key(override, key):
    assert error(None, [override]).startswith(f"bad value for '{key}' (in command line)")


def test_wrong_type_in_a_yaml_file_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("steps: abc\n")
    assert error(str(path)).startswith(f"bad value for 'steps' (in {path})")


def test_missing_config_and_bare_words():
    message = error("no-such-config")
    assert message.startswith("config 'no-such-config' not found: use one of ")
    assert all(name in message for name in available_configs())
    assert "key=value" in error(None, ["steps"])


def test_yaml_syntax_error_is_a_config_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("steps: [1, 2\n")
    assert error(str(path)).startswith(f"cannot parse {path}")


# -- values ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(CHOICES))
def test_choice_keys_list_their_choices_and_accept_each(key):
    allowed = CHOICES[key]
    assert error(None, [f"{key}=foo"]) == f"bad value 'foo' for '{key}': choose one of {', '.join(allowed)}"
    for value in allowed:
        assert get(load_config(None, [f"{key}={value}"]), key) == value
    doc = {k: d for k, d, _ in all_keys()}[key]
    assert all(value in doc for value in allowed), (key, doc)  # --help documents every choice


@pytest.mark.parametrize("key", ["camera.elevation_range", "camera.azimuth_range", "camera.distance_range",
                                 "camera.fovy_range"])
def test_ranges_are_min_max_pairs(key):
    assert error(None, [f"{key}=[50,10]"]) == f"{key} must be [min, max] with min <= max, got [50.0, 10.0]"
    assert key in error(None, [f"{key}=[1,2,3]"])
    assert get(load_config(None, [f"{key}=[2.5,2.5]"]), key) == (2.5, 2.5)  # a fixed value is a range too


def test_diffusion_time_range_is_ordered():
    message = error(None, ["guidance.t_min=0.5", "guidance.t_max=0.4"])
    assert "guidance.t_min" in message and "guidance.t_max" in message


# Every numeric key, found from the annotations (not from the ranges): a new key without a declared range fails.
def _numeric_fields(cls=Config, prefix=""):
    for f in fields(cls):
        default = getattr(cls(), f.name)
        if is_dataclass(default):
            yield from _numeric_fields(type(default), prefix + f.name + ".")
        elif re.search(r"\b(int|float)\b", str(f.type)):
            yield prefix + f.name, f


NUMERIC = dict(_numeric_fields())
SCHEMA = OmegaConf.structured(Config)  # the defaults, built once: load_config(None, overrides, base=SCHEMA) is 4x faster


def _load(overrides):
    return load_config(None, overrides, base=SCHEMA)


def _refused(overrides) -> str:
    with pytest.raises(ConfigError) as info:
        _load(overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


# Keys checked against another one: their boundary values load when the other moves with them (the range is
# checked first, so a value past it is refused by its own key's message whatever the others hold).
COMPANIONS = {
    "guidance.t_min": lambda v: [f"guidance.t_max={v!r}"], "guidance.t_max": lambda v: [f"guidance.t_min={v!r}"],
    "guidance.t_min_start": lambda v: [f"guidance.t_max={v!r}", f"guidance.t_min={v!r}"],
    "render.albedo_prob": lambda v: ["render.textureless_prob=0"],
    "render.textureless_prob": lambda v: ["render.albedo_prob=0"],
    "render.progressive_milestones": lambda v: ["render.progressive_sizes=[8,8]"],
}


def _step(x, towards, kind):
    """The nearest value of the key's type from x towards +-inf: the first value past (or inside) a bound."""
    return x + (1 if towards > x else -1) if "int" in kind else math.nextafter(float(x), towards)


def _yaml(value) -> str:
    """A number as YAML reads it back exactly (NaN and infinities as .nan, .inf, -.inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    return repr(value)


def _override(key, value, companions=True):
    default = get(Config(), key)
    text = _yaml(value)
    if isinstance(default, (list, tuple)):  # every entry takes the value (the list keeps its length; min <= max holds)
        text = "[" + ",".join([text] * max(len(default), 1)) + "]"
    return [f"{key}={text}", *(COMPANIONS.get(key, lambda v: [])(value) if companions else [])]


def test_every_numeric_key_declares_a_range():
    missing = [key for key, f in NUMERIC.items() if "range" not in f.metadata]
    assert not missing, f"declare a range with ranged(default, interval) for {missing}"
    assert len(NUMERIC) > 90 and "guidance.guidance_scale" in NUMERIC and "export.threshold" in NUMERIC


@pytest.mark.parametrize("key", sorted(NUMERIC))
def test_numeric_key_boundaries_load_and_values_past_them_name_the_key(key):
    """A closed bound loads, the next representable value past it is refused; an open bound is refused, the next
    value inside loads; NaN and +-inf are refused for every float key (issue 22); each refusal starts with the key."""
    interval, kind = NUMERIC[key].metadata["range"], str(NUMERIC[key].type)
    inside, outside = [], []
    for bound, closed, inward in ((interval.low, interval.low_closed, math.inf),
                                  (interval.high, interval.high_closed, -math.inf)):
        if math.isinf(bound):  # huge finite values load; the infinities are refused below with nan
            inside.append((-1e300 if inward > 0 else 1e300) if "float" in kind else None)
        elif closed:
            inside.append(bound)
            outside.append(_step(bound, -inward, kind))
        else:
            inside.append(_step(bound, inward, kind))
            outside.append(bound)
    for value in filter(lambda v: v is not None, inside):
        loaded = get(_load(_override(key, value)), key)
        assert loaded == (tuple([value] * len(loaded)) if isinstance(loaded, (list, tuple)) else value), (key, value)
    refused = outside + ([math.nan, math.inf, -math.inf] if "float" in kind else [])
    for value in refused:
        message = _refused(_override(key, value, companions=False))
        assert message.startswith(f"{key} ") and " must be " in message, (value, message)
        if not math.isfinite(value):
            assert "finite" in message, message
        else:
            assert interval.describe() in message, message
    if kind.startswith("Optional"):
        assert get(_load([f"{key}=null"]), key) is None


# Written out by hand, not read from the declarations (a key declared [0, inf) by mistake loads 0): the keys the
# code divides by, loops over or sizes a tensor by, which must refuse 0; and those where 0 means "off".
ZERO_REFUSED = [
    # divisors: step % every, a mean over a count, a scale or length in a denominator
    "checkpoint_every", "log_every", "max_nonfinite_steps", "camera.eval_distance", "camera.distance_range",
    "camera.eval_fovy", "camera.fovy_range", "field.bound", "field.blob_radius", "field.gaussian.init_radius",
    "field.hashgrid.per_level_scale", "guidance.prior.view_window", "guidance.clip.crop_fraction",
    "export.threshold", "export.auto_optical_depth", "export.video_fps", "optim.lr_warmup_start",
    "optim.gaussian.position_lr", "guidance.vsd.lr", "guidance.t_min", "guidance.t_max", "guidance.t_max_end",
    # counts: loops and batches
    "steps", "camera.batch_size", "render.n_samples", "field.gaussian.count", "guidance.prior.views",
    "guidance.clip.crops", "export.video_frames", "field.hashgrid.n_levels", "field.hashgrid.n_features_per_level",
    "guidance.vsd.lora_rank", "guidance.deepfloyd.max_length", "field.gaussian.init_opacity",
    # sizes of images, grids and layers
    "render.width", "render.height", "render.progressive_sizes", "render.progressive_milestones",
    "preview_resolution", "export.resolution", "export.texture_size", "export.video_resolution",
    "field.hidden_dim", "field.triplane.resolution", "field.triplane.channels", "field.hashgrid.base_resolution",
    "field.hashgrid.log2_hashmap_size", "guidance.prior.resolution", "guidance.stable_diffusion.vae_resolution",
]
ZERO_MEANS_OFF = ["preview_every", "field.gaussian.densify_every", "field.gaussian.max_count",
                  "optim.lr_warmup_steps"]  # guarded where used: no previews, no densification, no cap, no warm-up


@pytest.mark.parametrize("key", ZERO_REFUSED)
def test_zero_is_refused_where_the_code_divides_counts_or_sizes_by_the_key(key):
    message = _refused(_override(key, 0, companions=False))
    assert message.startswith(f"{key} ") and " must be " in message, message


def test_zero_loads_where_it_means_off():
    for key in ZERO_MEANS_OFF:
        assert get(_load(_override(key, 0)), key) == 0, key


@pytest.mark.parametrize("override, message", [
    ("guidance.guidance_scale=-5", "guidance.guidance_scale must be >= 0, got -5.0"),
    ("guidance.deepfloyd.max_length=0", "guidance.deepfloyd.max_length must be >= 1, got 0"),
    ("guidance.prior.view_window=0", "guidance.prior.view_window must be in (0, 180], got 0.0"),
    ("export.threshold=-1", "export.threshold must be positive or null, got -1.0"),
    ("guidance.guidance_scale=nan", "guidance.guidance_scale must be a finite number, got nan"),
    ("camera.elevation_range=[-10,inf]", "camera.elevation_range entries must be finite numbers, got [-10.0, inf]"),
    ("render.progressive_sizes=[64,0]", "render.progressive_sizes entries must be >= 1, got [64, 0]"),
])
def test_issue_examples_are_refused_in_one_line(override, message):
    extra = ["render.progressive_milestones=[100]"] if "progressive" in override else []
    assert error(None, [override, *extra]) == message


def test_nan_in_a_yaml_file_is_refused(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text("guidance:\n  guidance_scale: .nan\n")
    assert error(str(path)) == "guidance.guidance_scale must be a finite number, got nan"


def test_help_states_each_numeric_keys_range():
    docs = {k: d for k, d, _ in all_keys()}
    assert docs["guidance.guidance_scale"].endswith(" Must be >= 0.")
    assert docs["export.threshold"].endswith(" Must be positive or null.")
    assert docs["optim.betas"].endswith(" Entries must be in [0, 1).")
    assert all("ust be " in docs[key] for key in NUMERIC)


def test_video_panels_are_checked():
    assert error(None, ["export.video_panels=[rgb,foo]"]).startswith("bad export.video_panels entry 'foo'")
    assert load_config(None, ["export.video_panels=[depth,rgb]"]).export.video_panels == ("depth", "rgb")


@pytest.mark.parametrize("override", [
    "field.bound=0", "optim.betas=[0.9]", "optim.betas=[0.9,1.5]", "preview_every=-1", "render.albedo_prob=2",
    "export.texture_size=0", "export.video_resolution=0", "camera.distance_range=[-1,0]",
    "camera.fovy_range=[0,200]", "guidance.stable_diffusion.vae_resolution=0", "render.eval_grid=1", "render.eval_grid=-4",
    "export.decimate_faces=-1", "export.uv_max_faces=-1",
])
def test_out_of_range_values_are_config_errors(override):
    error(None, [override])


def test_yaml_that_is_not_a_mapping_is_a_config_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- steps\n- 5\n")
    error(str(path))


# -- documentation -----------------------------------------------------------------------------------

def test_every_key_has_a_one_line_docstring():
    keys = all_keys()
    assert len(keys) == len({k for k, _, _ in keys}) > 50
    for key, doc, _ in keys:
        assert doc.strip() and "\n" not in doc and doc == doc.strip(), key


def test_all_keys_covers_every_dataclass_field():
    def walk(cls, prefix=""):
        for f in fields(cls):
            default = getattr(cls(), f.name)
            yield from walk(type(default), prefix + f.name + ".") if is_dataclass(default) else [prefix + f.name]

    assert [k for k, _, _ in all_keys()] == list(walk(Config))


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError)


# -- grouped keys: one "renamed to" line per old key; old run folders still load ------------------------

@pytest.mark.parametrize("old", sorted(RENAMED))
def test_every_old_key_names_its_new_name(old, tmp_path):
    new = RENAMED[old]
    value = get(Config(), new)
    text = value if isinstance(value, str) else yaml.safe_dump(value).strip().removesuffix("\n...")
    assert error(None, [f"{old}={text}"]) == (f"config key '{old}' was renamed to '{new}' (in command line): "
                                              f"use {new}")
    section, leaf = old.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({section: {leaf: value}}))
    assert error(str(path)).startswith(f"config key '{old}' was renamed to '{new}' (in {path})")
    assert get(load_config(None, [f"{new}={text}"]), new) == value  # the new name takes the same value


def test_a_run_folder_written_with_old_key_names_loads_with_a_note(tmp_path, capsys):
    cfg = load_config("gaussian", ["prompt=a red cube", "field.gaussian.count=123", "optim.gaussian.color_lr=0.02"])
    tree = yaml.safe_load(to_yaml(cfg))
    del tree["format"]  # a config.yaml of that time carried no format number
    old = {k: v for k, v in tree.items() if not isinstance(v, dict)}
    for section, group in tree.items():  # flatten every group the old way: field.gaussian.count -> field.gaussian_count
        if isinstance(group, dict):
            old[section] = {}
            for key, value in group.items():
                if isinstance(value, dict):
                    if section == "guidance" and key in ("stable_diffusion", "deepfloyd", "clip"):
                        # before issue 21 the model keys sat on guidance itself, holding the run's model's values
                        if key == cfg.guidance.model_kind:
                            old[section].update({k: v for k, v in value.items() if k in MOVED_INTO_MODEL})
                        value = {k: v for k, v in value.items() if k not in MOVED_INTO_MODEL}
                    renamed = {o.split(".")[1]: v for o, n in RENAMED.items() for leaf, v in value.items()
                               if n == f"{section}.{key}.{leaf}"}
                    if not renamed:  # a group added after the renames (guidance.deepfloyd): old runs lack it
                        continue
                    assert len(renamed) == len(value), (section, key)
                    old[section].update(renamed)
                else:
                    old[section][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    assert load_run_config(path) == cfg
    assert "old key name(s)" in capsys.readouterr().err


def test_builders_accept_exactly_the_allowed_values():
    """CHOICES is the one list: the literal builder maps carry the same names."""
    from dreamfusion.fields import build_field
    from dreamfusion.renderer.backgrounds import SOLID_KINDS
    from dreamfusion.fields.decoder import _ACTIVATIONS
    from dreamfusion.guidance import load_guidance_model

    assert tuple(_ACTIVATIONS) == CHOICES["field.density_activation"]
    assert ("learned",) + SOLID_KINDS == CHOICES["render.background"]
    from dreamfusion.guidance import MODELS, RULES

    assert tuple(RULES) == CHOICES["guidance.type"]
    assert tuple(MODELS) == CHOICES["guidance.model_type"] + ("clip",)
    for builder, key in ((lambda c: build_field(c.field), "field.type"), (lambda c: load_guidance_model(c, "cpu"),
                                                                         "guidance.type"),
                         (lambda c: load_guidance_model(c, "cpu"), "guidance.model_type")):
        cfg = replace_key(Config(), key, "nope")
        with pytest.raises(ConfigError, match=f"bad value 'nope' for '{key}': choose one of "
                                              f"{', '.join(CHOICES[key])}"):
            builder(cfg)
