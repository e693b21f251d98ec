"""The earlier formats of a run folder's config.yaml and checkpoint, read as today's: one step per format.

A config.yaml written by ``config.to_yaml`` carries ``format: N`` (``CONFIG_FORMAT``), a checkpoint a ``"format"``
entry (``CHECKPOINT_FORMAT``). ``upgrade_config`` and ``upgrade_checkpoint`` run the steps from the format a file
holds up to today's, each turning format k into k + 1; a format newer than today's is a one-line error. The steps
are frozen history: each holds the names and values of its time as data, and nothing here reads today's schema
(this module imports ``errors`` only and works on plain dicts).

config.yaml (flat {dotted key: value} inside the steps)
    1  before issue 12 (to 119f33d): ungrouped names: field.n_levels, field.triplane_resolution,
       field.gaussian_count, optim.gaussian_color_lr, guidance.prior_views, guidance.clip_crops ...
    2  issue 12 (6e9fdf2): grouped keys; the rule chosen by flags (guidance.perp_neg.enabled, guidance.vsd.enabled)
       and the model mixed into the rule (guidance.type=prior | deepfloyd)
    3  issue 21 (25d6fcf): guidance.type the rule, guidance.model_type the model; the model keys still shared on
       guidance (guidance.model, guidance.dtype ...)
    4  c9a79fa: each model's keys in its own section (guidance.stable_diffusion.*, deepfloyd.*, clip.*); the
       first format whose number config.yaml carries.
A config.yaml without a number may hold any of formats 1 to 4 (none had one): it is read as format 1, and each
step acts on the keys it names only, passing a later file through unchanged. A user's key=value or YAML file
that names an old key is refused with its new setting (``refusal``), never migrated.

checkpoint
    1  a46e8df: step, field_type, field, optimizer, background, rng, torch_rng; skipped_steps (8f4c2b4),
       guidance and estimator came later without a new number; a Gaussian field held the densification
       statistics as its buffers grad_accum / grad_count until 5379700 moved them to "strategy".
    2  every entry present, the statistics in "strategy".
"""

from __future__ import annotations

from typing import Any, Callable

from .errors import CheckpointError, ConfigError

__all__ = ["CONFIG_FORMAT", "CHECKPOINT_FORMAT", "FORMAT_KEY", "RENAMED", "REPLACED", "MOVED_INTO_MODEL",
           "upgrade_config", "upgrade_checkpoint", "refusal"]

FORMAT_KEY = "format"
"""The top-level key of config.yaml (and the checkpoint entry) that holds the format number."""

# -- config format 1 -> 2: the keys grouped into sections (issue 12) -------------------------------------------
_GROUPED: dict[str, tuple[str, tuple[str, ...]]] = {
    "field.": ("field.hashgrid", ("backend", "n_levels", "n_features_per_level", "log2_hashmap_size",
                                  "base_resolution", "per_level_scale")),
    "field.triplane_": ("field.triplane", ("resolution", "channels", "aggregation")),
    "field.gaussian_": ("field.gaussian", ("count", "init_radius", "init_opacity", "sh_degree", "init_scale",
                                           "rasterizer", "densify_every", "densify_start", "densify_stop",
                                           "densify_grad_threshold", "dense_scale", "prune_opacity", "prune_scale",
                                           "max_count")),
    "optim.gaussian_": ("optim.gaussian", ("position_lr", "position_lr_final", "position_lr_steps", "color_lr",
                                           "opacity_lr", "scale_lr", "rotation_lr")),
    "guidance.prior_": ("guidance.prior", ("resolution", "views", "view_window")),
    "guidance.clip_": ("guidance.clip", ("crops", "crop_fraction")),
}
RENAMED: dict[str, str] = {f"{old}{leaf}": f"{new}.{leaf}" for old, (new, leaves) in _GROUPED.items()
                           for leaf in leaves}
"""Keys of format 1 -> their name now (a user's old key is answered with a one-line 'renamed to')."""

# -- config format 2 -> 3 -> 4: the rule apart from the model, the model keys into its section (issue 21) --------
MOVED_INTO_MODEL: dict[str, tuple[str, ...]] = {
    "model": ("stable_diffusion", "deepfloyd", "clip"), "revision": ("stable_diffusion", "deepfloyd", "clip"),
    "half_precision": ("stable_diffusion", "deepfloyd", "clip"), "dtype": ("stable_diffusion", "deepfloyd"),
    "channels_last": ("stable_diffusion", "deepfloyd"), "attention": ("stable_diffusion",),
    "compile": ("stable_diffusion", "deepfloyd"), "vae_resolution": ("stable_diffusion",),
}
"""Keys that sat on ``guidance`` in formats 1 to 3 -> the model sections that hold them now (guidance.<model>.<key>)."""


def _moved_to(leaf: str) -> str:
    names = [f"guidance.{kind}.{leaf}" for kind in MOVED_INTO_MODEL[leaf]]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


REPLACED: dict[str, str] = {
    "guidance.perp_neg.enabled": "guidance.type=perp_neg",
    "guidance.vsd.enabled": "guidance.type=vsd",
    "guidance.type=prior": "guidance.model_type=prior (with guidance.type=sds)",
    "guidance.type=deepfloyd": "guidance.model_type=deepfloyd (with guidance.type=sds)",
    **{f"guidance.{leaf}": _moved_to(leaf) for leaf in MOVED_INTO_MODEL},
}
"""Old guidance keys (and key=value settings) of formats 2 and 3 -> the setting that replaces them."""

Flat = dict[str, Any]
Step = Callable[[Flat], tuple[Flat, dict[str, str]]]


def _group_keys(flat: Flat) -> tuple[Flat, dict[str, str]]:
    """1 -> 2: each ungrouped name to its section."""
    return ({RENAMED.get(key, key): value for key, value in flat.items()},
            {key: f"{key} -> {RENAMED[key]}" for key in flat if key in RENAMED})


def _changed(before: Flat, after: Flat) -> list[str]:
    return [key for key in before if key not in after or after[key] != before[key]]


def _rule_apart(flat: Flat) -> tuple[Flat, dict[str, str]]:
    """2 -> 3: guidance.type=prior|deepfloyd -> model_type (the rule sds), the perp_neg / vsd flags -> type."""
    out = dict(flat)
    old_type = out.get("guidance.type")
    perp_neg, vsd = out.pop("guidance.perp_neg.enabled", False), out.pop("guidance.vsd.enabled", False)
    if old_type in ("prior", "deepfloyd"):
        out["guidance.model_type"] = old_type
        out["guidance.type"] = "sds"
    if out.get("guidance.type", "sds") == "sds":
        if vsd:
            out["guidance.type"] = "vsd"
        elif perp_neg:
            out["guidance.type"] = "perp_neg"
    now = (f"guidance.type={out.get('guidance.type', 'sds')}, "
           f"guidance.model_type={out.get('guidance.model_type', 'stable_diffusion')}")
    return out, {key: f"{key} -> {now}" for key in _changed(flat, out)}


def _model_sections(flat: Flat) -> tuple[Flat, dict[str, str]]:
    """3 -> 4: the model keys shared on guidance -> the section of the run's model (clip for the clip rule), dropped
    where that model's loader never read them (e.g. the prior's)."""
    out = dict(flat)
    kind = "clip" if out.get("guidance.type") == "clip" else out.get("guidance.model_type", "stable_diffusion")
    moved = {}
    for leaf, kinds in MOVED_INTO_MODEL.items():
        key = f"guidance.{leaf}"
        if key in out:
            value = out.pop(key)
            if kind in kinds:
                out[f"guidance.{kind}.{leaf}"] = value
                moved[key] = f"{key} -> guidance.{kind}.{leaf}"
            else:
                moved[key] = f"{key} dropped (the run's model never read it)"
    return out, moved


_CONFIG_STEPS: tuple[Step, ...] = (_group_keys, _rule_apart, _model_sections)
CONFIG_FORMAT = len(_CONFIG_STEPS) + 1
"""The format of the config.yaml that ``to_yaml`` writes."""


def _flatten(tree: dict, prefix: str = "") -> Flat:
    out: Flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _nest(flat: Flat) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _format_of(value: Any, newest: int, what: str, origin: str, error: type[Exception]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{origin} has {what} format {value!r}: not a dreamfusion {what} format (1 to {newest})")
    if value > newest:
        raise error(f"{origin} was written by a newer dreamfusion ({what} format {value}; this one reads formats "
                    f"1 to {newest}): update dreamfusion to read it")
    return value


def upgrade_config(tree: dict, origin: str, unnumbered: int = 1) -> tuple[dict, str | None]:
    """A config.yaml's mapping (plain dicts) -> (today's mapping without the format key, the note naming the old
    keys it used, or None). ``unnumbered``: the format of a file without a number (a run folder's config.yaml: 1;
    a YAML file a user wrote: ``CONFIG_FORMAT``, its old keys then refused by the loader)."""
    tree = dict(tree)
    version = _format_of(tree.pop(FORMAT_KEY, unnumbered), CONFIG_FORMAT, "config", origin, ConfigError)
    flat = _flatten(tree)
    order = {key: i for i, key in enumerate(flat)}
    moved: dict[str, str] = {}
    for step in _CONFIG_STEPS[version - 1:]:
        flat, step_moved = step(flat)
        moved.update(step_moved)
    if not moved:
        return tree, None
    first = min(moved, key=lambda key: order.get(key, len(order)))  # the earliest in the file
    return _nest(flat), f"{origin} uses {len(moved)} old key name(s) (e.g. {moved[first]}); read with their new names"


def refusal(key: str, value: Any, origin: str) -> str | None:
    """The one-line answer to an old key (or guidance key=value) in a user's override or YAML file; None when
    ``key=value`` is current."""
    if key in RENAMED:
        return f"config key '{key}' was renamed to '{RENAMED[key]}' (in {origin}): use {RENAMED[key]}"
    if key.startswith("guidance.") and key[len("guidance."):] in MOVED_INTO_MODEL:
        return f"config key '{key}' moved into its model's section: {REPLACED[key]} (in {origin})"
    if key in REPLACED:
        return (f"config key '{key}' is gone: the rule is guidance.type now, set {REPLACED[key]} "
                f"(or guidance.type=sds for plain SDS) (in {origin})")
    setting = f"{key}={value}"
    if setting in REPLACED:
        return f"{setting} is now {REPLACED[setting]} (in {origin})"
    return None


# -- checkpoints ---------------------------------------------------------------------------------------------------
_STATISTICS = ("grad_accum", "grad_count")


def _later_entries(state: dict) -> dict:
    """1 -> 2: the entries format 1 gained without a new number (empty or zero where absent), and a Gaussian
    field's densification statistics out of its buffers into "strategy" (when that holds none of its own)."""
    state = {"skipped_steps": 0, "guidance": {}, "estimator": {}, **state}
    if isinstance(state.get("field"), dict):
        field = dict(state["field"])
        statistics = {name: field.pop(name) for name in _STATISTICS if name in field}
        state["field"] = field
        state["strategy"] = state.get("strategy") or statistics
    return state


_CHECKPOINT_STEPS: tuple[Callable[[dict], dict], ...] = (_later_entries,)
CHECKPOINT_FORMAT = len(_CHECKPOINT_STEPS) + 1
"""The format of the checkpoints ``checkpoint.save_checkpoint`` writes."""


def upgrade_checkpoint(state: dict, origin: str) -> dict:
    """A loaded checkpoint (its "format" entry a number) -> the same state in today's layout and format."""
    version = _format_of(state.get(FORMAT_KEY), CHECKPOINT_FORMAT, "checkpoint", origin, CheckpointError)
    for step in _CHECKPOINT_STEPS[version - 1:]:
        state = step(state)
    return {**state, FORMAT_KEY: CHECKPOINT_FORMAT}
