"""Every earlier format of config.yaml and of the checkpoint still loads (dreamfusion/migrations.py), and a newer
one is refused in one line.

The files in tests/data/formats were written by the code of their time (`git archive <commit>`, then
``to_yaml(load_config(NAME, overrides))`` as its run wrote config.yaml; the run folder by
``python -m dreamfusion --config demo field.type=gaussian steps=3 ...`` at 340a04d):

    config-1-*.yaml      119f33d (before issue 12): ungrouped names, the model keys on guidance, type=sds|clip
    config-2-*.yaml      340a04d (issue 12): grouped keys, the perp_neg / vsd flags, type=deepfloyd, model keys on
                         guidance
    config-3-*.yaml      ed4ce06 (issue 21, first half): guidance.type + model_type, model keys on guidance
    config-4-unnumbered  3960620 (the base of the migrations): today's keys, no format number
    run-config-2-checkpoint-1/   340a04d: a Gaussian run's config.yaml and a checkpoint holding the densification
                         statistics as the field's buffers

Oracles: the note each file gave before the migrations moved into one module (measured at 3960620, written out
here), and each setting's value in the file itself: a key of today keeps its value, an old name's value lands
at the name issue 12 gave it (written out here as a rule, not read from migrations.py), the shared model keys in
the section of the run's model (or nowhere), every other key at its default; the old checkpoint's own tensors.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from dreamfusion.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from dreamfusion.config import Config, all_keys, load_config, load_run_config, to_yaml
from dreamfusion.errors import CheckpointError, ConfigError
from dreamfusion.migrations import CHECKPOINT_FORMAT, CONFIG_FORMAT
from dreamfusion.train import Trainer

DATA = Path(__file__).parent / "data" / "formats"
SHARED_MODEL_KEYS = ("model", "revision", "half_precision", "dtype", "channels_last", "attention", "compile",
                     "vae_resolution")  # on guidance itself in formats 1 to 3
FLAGS = ("guidance.perp_neg.enabled", "guidance.vsd.enabled")  # formats 1 and 2


def get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def plain(value):
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def regrouped(key: str) -> str:
    """Format 1's ungrouped name -> the name issue 12 gave it."""
    section, leaf = key.split(".")
    for group in ("triplane", "gaussian", "prior", "clip"):
        if leaf.startswith(group + "_"):
            return f"{section}.{group}.{leaf[len(group) + 1:]}"
    return f"field.hashgrid.{leaf}"  # the hash grid's keys sat on field itself


def expected_settings(path: Path, rule: str, model_type: str, kind: str | None) -> dict:
    """{today's key: value} the file's settings must load as: ``kind`` is the section the shared model keys move
    into (None: dropped, the run's model never read them)."""
    today = {key: plain(default) for key, _, default in all_keys()}
    out = dict(today)
    for key, value in leaves(yaml.safe_load(path.read_text())).items():
        leaf = key.removeprefix("guidance.")
        if key in FLAGS:
            continue
        if key.count(".") == 1 and key.startswith("guidance.") and leaf in SHARED_MODEL_KEYS:
            key = f"guidance.{kind}.{leaf}" if kind is not None else None
            if key not in today:
                continue  # the run's model has no such key (clip's dtype, the prior's model)
        elif key not in today:
            key = regrouped(key)
        assert key in today, f"{path.name}: {key} is no key of today: the old value would be lost"
        out[key] = plain(value)
    out.update({"guidance.type": rule, "guidance.model_type": model_type})
    return out


FILES = [  # file, (rule, model_type), where the shared model keys go, the note (measured at 3960620)
    ("config-1-gaussian.yaml", ("sds", "stable_diffusion"), "stable_diffusion",
     "43 old key name(s) (e.g. field.backend -> field.hashgrid.backend)"),
    ("config-1-dreamfields.yaml", ("clip", "stable_diffusion"), "clip",
     "43 old key name(s) (e.g. field.backend -> field.hashgrid.backend)"),
    ("config-2-deepfloyd.yaml", ("sds", "deepfloyd"), "deepfloyd",
     "11 old key name(s) (e.g. guidance.type -> guidance.type=sds, guidance.model_type=deepfloyd)"),
    ("config-2-vsd.yaml", ("vsd", "stable_diffusion"), "stable_diffusion",
     "11 old key name(s) (e.g. guidance.type -> guidance.type=vsd, guidance.model_type=stable_diffusion)"),
    ("config-2-dreamfusion.yaml", ("sds", "stable_diffusion"), "stable_diffusion",
     "10 old key name(s) (e.g. guidance.model -> guidance.stable_diffusion.model)"),
    ("config-3-deepfloyd.yaml", ("sds", "deepfloyd"), "deepfloyd",
     "8 old key name(s) (e.g. guidance.model -> guidance.deepfloyd.model)"),
    ("config-3-prior.yaml", ("sds", "prior"), None,
     "8 old key name(s) (e.g. guidance.model dropped (the run's model never read it))"),
    ("run-config-2-checkpoint-1/config.yaml", ("sds", "prior"), None,
     "11 old key name(s) (e.g. guidance.type -> guidance.type=sds, guidance.model_type=prior)"),
]


@pytest.mark.parametrize("name, rule_model, kind, note", FILES, ids=[f[0].split("/")[0] for f in FILES])
def test_a_config_yaml_of_each_earlier_format_loads_with_its_note(name, rule_model, kind, note, capsys):
    path = DATA / name
    assert "format" not in yaml.safe_load(path.read_text())  # as written then
    cfg = load_run_config(path)
    assert capsys.readouterr().err == f"note: {path} uses {note}; read with their new names\n"
    expected = expected_settings(path, *rule_model, kind)
    assert {key: plain(get(cfg, key)) for key in expected} == expected


def test_the_shared_model_keys_land_with_their_values():
    """The values set when those files were written (not defaults) came through: the rule above, spelled out."""
    assert load_run_config(DATA / "config-1-dreamfields.yaml").guidance.clip.model == "my/clip"
    assert load_run_config(DATA / "config-1-gaussian.yaml").field.gaussian.count == 123
    assert load_run_config(DATA / "config-1-gaussian.yaml").optim.gaussian.color_lr == 0.02
    deepfloyd = load_run_config(DATA / "config-3-deepfloyd.yaml").guidance.deepfloyd
    assert (deepfloyd.dtype, deepfloyd.compile) == ("bf16", True)
    assert load_run_config(DATA / "config-2-vsd.yaml").guidance.stable_diffusion.attention == "classic"
    assert load_run_config(DATA / "config-2-dreamfusion.yaml").guidance.stable_diffusion.revision == "v2"


def test_an_unnumbered_config_yaml_of_today_loads_without_a_note(capsys):
    """config.yaml carried no number before the migrations: read as format 1, each step passes it through."""
    cfg = load_run_config(DATA / "config-4-unnumbered.yaml")
    assert capsys.readouterr().err == ""
    assert cfg == load_config("demo", ["prompt=a red cube"])


def test_an_old_config_yaml_keeps_its_text_verbatim(tmp_path):
    tree = yaml.safe_load((DATA / "config-1-gaussian.yaml").read_text())
    tree["prompt"] = "a \\${x} cube"  # as to_yaml escaped it
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree))
    assert load_run_config(tmp_path / "config.yaml").prompt == "a ${x} cube"


def test_to_yaml_writes_the_format_and_a_run_folder_or_config_file_reads_it(tmp_path, capsys):
    cfg = load_config("gaussian", ["prompt=a red cube", "guidance.stable_diffusion.dtype=bf16"])
    text = to_yaml(cfg)
    assert yaml.safe_load(text)["format"] == CONFIG_FORMAT
    (tmp_path / "config.yaml").write_text(text)
    assert load_run_config(tmp_path / "config.yaml") == cfg
    assert load_config(str(tmp_path / "config.yaml")) == cfg  # a run's config.yaml as --config
    assert capsys.readouterr().err == ""


def test_a_user_yaml_file_without_a_number_is_not_migrated_but_refused(tmp_path):
    (tmp_path / "mine.yaml").write_text("guidance:\n  model: my/model\n")
    with pytest.raises(ConfigError, match=r"^config key 'guidance.model' moved into its model's section"):
        load_config(str(tmp_path / "mine.yaml"))


@pytest.mark.parametrize("number, message", [
    (CONFIG_FORMAT + 1, f"was written by a newer dreamfusion \\(config format {CONFIG_FORMAT + 1}; this one reads "
                        f"formats 1 to {CONFIG_FORMAT}\\)"),
    ("two", "has config format 'two': not a dreamfusion config format"),
    (0, "has config format 0: not a dreamfusion config format"),
])
def test_an_unknown_config_format_is_one_line_naming_it(tmp_path, number, message):
    tree = yaml.safe_load(to_yaml(Config(prompt="a red cube")))
    tree["format"] = number
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree))
    for load in (load_run_config, lambda path: load_config(str(path))):
        with pytest.raises(ConfigError, match=message) as info:
            load(tmp_path / "config.yaml")
        assert "\n" not in str(info.value) and str(tmp_path / "config.yaml") in str(info.value)


# -- checkpoints ---------------------------------------------------------------------------------------------------

def test_a_format_1_checkpoint_with_the_statistics_in_the_field_loads(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(DATA / "run-config-2-checkpoint-1", run)
    raw = torch.load(run / CHECKPOINT, weights_only=True)
    assert raw["format"] == 1 and "strategy" not in raw and {"grad_accum", "grad_count"} <= set(raw["field"])
    assert float(raw["field"]["grad_count"].sum()) > 0  # written between two densifications

    trainer = Trainer(load_run_config(run / "config.yaml"), run, torch.device("cpu"))
    trainer.load(load_checkpoint(run))
    assert trainer.step == raw["step"] == 3
    for name, p in trainer.field.named_parameters():
        assert torch.equal(p.detach(), raw["field"][name]), name
    assert torch.equal(trainer.strategy.grad_accum, raw["field"]["grad_accum"])
    assert torch.equal(trainer.strategy.grad_count, raw["field"]["grad_count"])

    save_checkpoint(run, trainer.state())  # written again: today's format, the statistics the strategy's
    again = torch.load(run / CHECKPOINT, weights_only=True)
    assert again["format"] == CHECKPOINT_FORMAT and "grad_accum" not in again["field"]
    assert torch.equal(again["strategy"]["grad_accum"], raw["field"]["grad_accum"])


def test_a_format_1_checkpoint_without_the_later_entries_loads(tmp_path):
    """Format 1 gained skipped_steps, guidance and estimator without a new number: absent, they are zero / empty."""
    trainer = Trainer(load_config("demo", ["render.width=16", "render.height=16"]), tmp_path, torch.device("cpu"))
    trainer.skipped = 2
    state = {k: v for k, v in trainer.state().items() if k not in ("skipped_steps", "guidance", "estimator")}
    save_checkpoint(tmp_path, {**state, "format": 1})
    loaded = load_checkpoint(tmp_path)
    assert (loaded["skipped_steps"], loaded["guidance"], loaded["estimator"]) == (0, {}, {})
    trainer.load(loaded)
    assert trainer.skipped == 0


def test_an_unknown_checkpoint_format_is_one_line_naming_it(tmp_path):
    trainer = Trainer(load_config("demo", ["render.width=16", "render.height=16"]), tmp_path, torch.device("cpu"))
    save_checkpoint(tmp_path, {**trainer.state(), "format": CHECKPOINT_FORMAT + 1})
    with pytest.raises(CheckpointError, match=f"was written by a newer dreamfusion \\(checkpoint format "
                                              f"{CHECKPOINT_FORMAT + 1}; this one reads formats 1 to "
                                              f"{CHECKPOINT_FORMAT}\\)") as info:
        load_checkpoint(tmp_path)
    assert "\n" not in str(info.value) and str(tmp_path / CHECKPOINT) in str(info.value)
    save_checkpoint(tmp_path, {**trainer.state(), "format": "1"})
    with pytest.raises(CheckpointError, match="is not a dreamfusion checkpoint"):
        load_checkpoint(tmp_path)
