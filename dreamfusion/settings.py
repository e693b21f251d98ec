"""How a component declares its config section: a frozen dataclass (:func:`section`) whose numeric keys carry
their allowed interval (:func:`ranged`) and whose choice keys their allowed values (:func:`choice`).

Each component (field, renderer, guidance, export, ...) declares its section next to its code with these;
``config/schema.py`` only assembles the sections into ``Config`` and ``config/loader.py`` merges and checks.
This module sits below every component (it imports nothing of dreamfusion but errors), so a component's
config never imports the assembled schema.

A numeric key is written ``guidance_scale: float = ranged(100.0, "[0, inf)")``: the interval in the usual
notation ("[0, 1]", "(0, inf)", "[1, inf)"), each entry's for a list key. :func:`check_ranges` (called first
by the loader's ``validate``) refuses a value outside it, and NaN or infinity for every float key, with one
line that starts with the key; a null Optional key (an automatic setting) is not checked. A section may define
``check(self, root)`` for rules between its keys (``root`` is the whole config, for rules across sections);
the loader calls it after the ranges. A loaded config is frozen: assigning to a key raises
``dataclasses.FrozenInstanceError``; derive a changed copy with ``dataclasses.replace`` or :func:`replace_key`.
"""

from __future__ import annotations

import math
import re
from dataclasses import Field, dataclass, fields, is_dataclass, replace
from dataclasses import field as dc_field

from .errors import ConfigError

__all__ = ["Interval", "section", "ranged", "choice", "choices_of", "check_choice", "numeric_ranges", "range_doc",
           "check_ranges", "check_sections", "get_key", "replace_key", "freeze"]


def section(cls: type) -> type:
    """Decorator of a config section: a frozen dataclass (keys are read-only once the config is loaded)."""
    return dataclass(frozen=True)(cls)


def choice(default: str, allowed: tuple[str, ...]):
    """A dataclass field holding one of ``allowed`` (the loader refuses any other value, naming them)."""
    assert default in allowed, (default, allowed)
    return dc_field(default=default, metadata={"choices": tuple(allowed)})


def _declared(cls: type, kind: str, prefix: str = "") -> dict[str, Field]:
    """{dotted key: its dataclass field} of every key of ``cls`` and its sub-sections whose metadata has ``kind``
    ("choices" from :func:`choice`, "range" from :func:`ranged`), in declaration order, depth first."""
    out = {}
    instance = cls()
    for f in fields(cls):
        value = getattr(instance, f.name)
        if is_dataclass(value):
            out.update(_declared(type(value), kind, f"{prefix}{f.name}."))
        elif kind in f.metadata:
            out[prefix + f.name] = f
    return out


def choices_of(cls: type, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """{dotted key: allowed values} of every key declared with :func:`choice` in ``cls`` and its sub-sections."""
    return {key: f.metadata["choices"] for key, f in _declared(cls, "choices", prefix).items()}


def _require_choice(value, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"bad value '{value}' for '{key}': choose one of {', '.join(allowed)}")


def check_choice(section_cfg, name: str, key: str | None = None) -> str:
    """``section_cfg.<name>`` when its declared choices allow it, else a one-line ConfigError listing them
    (``key``: the dotted name to show, default ``name``). Builders call it for configs made in code."""
    allowed = {f.name: f.metadata.get("choices") for f in fields(section_cfg)}[name]
    value = getattr(section_cfg, name)
    _require_choice(value, allowed, key or name)
    return value


def get_key(cfg, dotted: str):
    """The value of the dotted key in ``cfg`` (``get_key(cfg, "field.hashgrid.n_levels")``); see :func:`replace_key`."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def replace_key(cfg, dotted: str, value):
    """A copy of the frozen config ``cfg`` with the dotted key set to ``value`` (the sections above it copied)."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return replace(cfg, **{head: value})
    return replace(cfg, **{head: replace_key(getattr(cfg, head), rest, value)})


@dataclass(frozen=True)
class Interval:
    """The allowed values of a numeric key, read from interval notation."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> "Interval":
        match = re.fullmatch(r"([\[(])\s*(-?inf|-?[0-9.e+-]+)\s*,\s*(-?inf|-?[0-9.e+-]+)\s*([\])])", text)
        if match is None:
            raise ValueError(f"bad interval '{text}': write e.g. [0, 1], (0, inf) or [1, inf)")
        low, high = (float(v) if "inf" in v or "." in v or "e" in v else int(v) for v in match.group(2, 3))
        interval = cls(low, high, match.group(1) == "[", match.group(4) == "]", text)
        if low > high or (interval.low_closed and math.isinf(low)) or (interval.high_closed and math.isinf(high)):
            raise ValueError(f"bad interval '{text}': need low <= high and an open bracket at infinity")
        return interval

    def __contains__(self, value) -> bool:
        above = self.low < value or (self.low_closed and value == self.low)
        return above and (value < self.high or (self.high_closed and value == self.high))

    def describe(self) -> str:
        """'positive', '>= 0', 'in [0, 1]' or 'a finite number': the words of an error and of --help."""
        if not math.isinf(self.high):
            return f"in {self.text}"
        if math.isinf(self.low):
            return "a finite number"
        if (self.low, self.low_closed) == (0, False):
            return "positive"
        return f"{'>=' if self.low_closed else '>'} {self.low}"


def ranged(default, interval: str):
    """A dataclass field holding a number (or a list of numbers) that must lie in ``interval``."""
    metadata = {"range": Interval.parse(interval)}
    if isinstance(default, list):  # a frozen config holds tuples: its lists cannot be changed in place either
        default = tuple(default)
    return dc_field(default=default, metadata=metadata)


def numeric_ranges(cls: type, prefix: str = "") -> dict[str, tuple[Interval, str]]:
    """{dotted key: (its interval, its type annotation)} for every key declared with :func:`ranged`."""
    return {key: (f.metadata["range"], str(f.type)) for key, f in _declared(cls, "range", prefix).items()}


def _allowed(interval: Interval, kind: str) -> str:
    return interval.describe() + (" or null" if kind.startswith("Optional") else "")


def range_doc(interval: Interval, kind: str) -> str:
    """The sentence --help adds to a numeric key's docstring, e.g. 'Must be >= 0.'"""
    subject = "Entries must" if kind.startswith("List") else "Must"
    return f"{subject} be {_allowed(interval, kind)}."


def check_ranges(cfg, prefix: str = "") -> None:
    """A one-line ConfigError, starting with the key (``prefix`` + its dotted name in ``cfg``), for the first
    numeric value outside its interval."""
    for name, (interval, kind) in numeric_ranges(type(cfg)).items():
        value, key = get_key(cfg, name), prefix + name
        if value is None and kind.startswith("Optional"):
            continue
        is_list = kind.startswith("List")
        values = list(value) if is_list else [value]
        subject, shown = (f"{key} entries", list(value)) if is_list else (key, value)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{subject} must be finite numbers, got {shown}" if is_list else
                              f"{key} must be a finite number, got {value}")
        if not all(v in interval for v in values):
            raise ConfigError(f"{subject} must be {_allowed(interval, kind)}, got {shown}")


def freeze(cfg):
    """``cfg`` with every list value, at any depth, turned into a tuple (OmegaConf hands back lists)."""
    changes = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            changes[f.name] = freeze(value)
        elif isinstance(value, list):
            changes[f.name] = tuple(value)
    return replace(cfg, **changes)


def check_sections(cfg, root=None, prefix: str = "") -> None:
    """A config, or one section of it (``root``: the whole config its rules may read; ``prefix``: the section's
    dotted name and a dot, for the messages), in this order: every declared choice, every range
    (:func:`check_ranges`), then each section's own ``check(root)`` (rules between keys), depth first. The first
    problem is a one-line ConfigError."""
    _check_choices(cfg, prefix)
    check_ranges(cfg, prefix)
    _check_rules(cfg, cfg if root is None else root)


def _check_choices(cfg, prefix: str = "") -> None:
    for name in choices_of(type(cfg)):
        parent, _, leaf = name.rpartition(".")
        check_choice(get_key(cfg, parent) if parent else cfg, leaf, prefix + name)


def _check_rules(cfg, root) -> None:
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            _check_rules(value, root)
    if hasattr(cfg, "check"):
        cfg.check(root)
