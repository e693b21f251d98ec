"""Loading configs: defaults <- YAML file <- key=value overrides, checked against the schema.

An unknown key, a renamed key, a wrong type or an out-of-range value is a one-line :class:`ConfigError`
naming the key (and close matches, or the key's new name).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import sys
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError
from ..migrations import CONFIG_FORMAT, FORMAT_KEY, refusal, upgrade_config
from ..settings import check_sections, freeze, range_doc
from .schema import Config

__all__ = ["CONFIG_DIR", "DEFAULT_CONFIG", "load_config", "load_run_config", "config_defaults", "validate", "to_yaml",
           "all_keys", "field_docs", "available_configs", "resolve_config_path"]


DEFAULT_CONFIG = "dreamfusion"
# The shipped YAML files: package data (in a source checkout dreamfusion/configs links to the top-level configs/).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right under each field."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = nxt.value.value
    return docs


def all_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str, object]]:
    """Every dotted key with its doc (a numeric key's with its range) and default: [(key, doc, default)]."""
    out = []
    docs = field_docs(cls)
    inst = cls()
    for f in fields(cls):
        value = getattr(inst, f.name)
        if is_dataclass(value):
            out.extend(all_keys(type(value), prefix + f.name + "."))
        else:
            doc = docs.get(f.name, "")
            if "range" in f.metadata:
                doc = f"{doc} {range_doc(f.metadata['range'], str(f.type))}"
            out.append((prefix + f.name, doc, value))
    return out


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A config NAME (configs/NAME.yaml) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(
        f"config '{name_or_path}' not found: use one of {', '.join(available_configs())} "
        f"or a path to a .yaml file")


def _unknown_key_message(key: str) -> str:
    keys = [k for k, _, _ in all_keys()]
    keys += sorted({k.rsplit(".", i)[0] for k in keys for i in range(1, k.count(".") + 1)})  # sections: field, field.gaussian, ...
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close:  # try matching the last component against every key's last component
        leaf = key.split(".")[-1]
        close = [k for k in keys if difflib.get_close_matches(leaf, [k.split(".")[-1]], cutoff=0.75)][:3]
    hint = f"; did you mean {' or '.join(close)}?" if close else "; see --help for the keys"
    return f"unknown config key '{key}'{hint}"


def _omegaconf_error(exc: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    msg = str(exc).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        return ConfigError(_unknown_key_message(key) + f" (in {origin})")
    if key:
        return ConfigError(f"bad value for '{key}' (in {origin}): {msg}")
    return ConfigError(f"bad config (in {origin}): {msg}")


def _load_yaml(path: Path) -> DictConfig:
    """A YAML mapping, or a one-line ConfigError (syntax error, unreadable, not a mapping)."""
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml syntax errors, unreadable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot parse {path}: {first}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"cannot use {path}: its top level must be a mapping of keys (key: value), not a list")
    return loaded


def _flat_keys(node, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of a nested mapping."""
    out = []
    for key, value in node.items():
        if isinstance(value, (dict, DictConfig)):
            out.extend(_flat_keys(value, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


def _check_renamed(other, origin: str) -> None:
    for key in _flat_keys(other):
        refused = refusal(key, OmegaConf.select(other, key), origin)  # an old key or guidance value
        if refused is not None:
            raise ConfigError(refused)


def _upgraded(loaded: DictConfig, origin: str, unnumbered: int) -> DictConfig:
    """A YAML file's mapping in today's format: without its format number, a run folder's config.yaml of an
    earlier format read with today's names (migrations.upgrade_config) and a note saying so."""
    tree, note = upgrade_config(OmegaConf.to_container(loaded), origin, unnumbered)
    if note is not None:
        print(f"note: {note}", file=sys.stderr)
    return OmegaConf.create(tree)


def _merge(base: DictConfig, other, origin: str) -> DictConfig:
    _check_renamed(other, origin)
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise _omegaconf_error(exc, origin) from None


def _string_keys(cls: type = Config, prefix: str = "") -> set[str]:
    """Dotted keys whose type is str or Optional[str]: their override values are taken verbatim."""
    out = set()
    for f in fields(cls):
        default = getattr(cls(), f.name)
        if is_dataclass(default):
            out |= _string_keys(type(default), prefix + f.name + ".")
        elif f.type in ("str", "Optional[str]", str, Optional[str]):
            out.add(prefix + f.name)
    return out


def _escape(value: str) -> str:
    """OmegaConf would resolve '${...}' in a value; text from users is never an interpolation."""
    return value.replace("${", "\\${")


def _overrides_config(overrides: list[str]) -> DictConfig:
    """key=value items -> a config. String keys keep their text exactly (a prompt such as 'yes', '007'
    or 'a sign that says: hello' stays as typed; one pair of quotes around the whole value is removed);
    other values are read as YAML (numbers, lists, null)."""
    strings = _string_keys()
    verbatim, parsed = {}, []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"cannot read argument '{item}': overrides are key=value, e.g. prompt=\"a red cube\"")
        key, value = item.split("=", 1)
        if key in strings:
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]  # prompt='a cat' written for a launcher that passes the quotes on
            node = verbatim
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = _escape(value)
        else:
            parsed.append(item)
    try:
        return OmegaConf.merge(OmegaConf.create(verbatim), OmegaConf.from_dotlist(parsed))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot read overrides: {str(exc).splitlines()[0]}") from None


def _structured() -> DictConfig:
    """The schema's defaults as a mergeable OmegaConf node (the frozen dataclasses make it read-only)."""
    node = OmegaConf.structured(Config)
    OmegaConf.set_readonly(node, False)
    return node


def _with_file(base: DictConfig, name_or_path: str | None) -> DictConfig:
    """``base`` with the config file NAME (or YAML path; the default config when None) merged over it."""
    path = resolve_config_path(name_or_path or DEFAULT_CONFIG)
    return _merge(base, _upgraded(_load_yaml(path), str(path), unnumbered=CONFIG_FORMAT), str(path))


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None,
                base: DictConfig | None = None) -> Config:
    """Defaults <- YAML file <- key=value overrides, checked against the dataclasses."""
    cfg = _structured() if base is None else base
    if name_or_path is not None or base is None:
        cfg = _with_file(cfg, name_or_path)
    if overrides:
        cfg = _merge(cfg, _overrides_config(overrides), "command line")
    obj: Config = freeze(OmegaConf.to_object(cfg))  # type: ignore[arg-type]
    validate(obj)
    return obj


def config_defaults(name_or_path: str | None = None) -> dict:
    """The settings of config NAME (or a YAML file) before any override, as nested dicts: what the report compares a
    run's config.yaml with. The file merged over the schema's defaults, as load_config does, without building and
    checking a Config (a plain comparison needs neither)."""
    return OmegaConf.to_container(_with_file(_structured(), name_or_path))


def validate(cfg: Config) -> None:
    """Choice keys hold an allowed value, numeric keys lie in their declared ranges, and the keys that depend on
    each other agree: each section declares and checks its own (settings.check_sections); nothing here knows a
    component."""
    check_sections(cfg)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, headed by its format number (migrations.CONFIG_FORMAT); text values are
    escaped so '${' reads back as typed."""
    def escaped(node):
        if isinstance(node, dict):
            return {k: escaped(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [escaped(v) for v in node]
        return _escape(node) if isinstance(node, str) else node
    return OmegaConf.to_yaml(OmegaConf.create({FORMAT_KEY: CONFIG_FORMAT, **escaped(asdict(cfg))}))


def load_run_config(path: Path, overrides: list[str] | None = None, config: str | None = None) -> Config:
    """The resolved config.yaml of a run folder (of any earlier format: migrations.py), with optional overrides
    on top; ``config`` (a name or YAML file, e.g. the refine stage's) is merged over it before the overrides."""
    cfg = _merge(_structured(), _upgraded(_load_yaml(Path(path)), str(path), unnumbered=1), str(path))
    return load_config(config, overrides, base=cfg)
