"""The config keys that the package's messages name are keys a user can set (issue 34).

A user reads the errors and the help and types the dotted keys they name; a rename that forgets one message leaves
a key that the loader then refuses ("other prompts need guidance.type=sds with Stable Diffusion" once named the rule
where the model was meant). Read every error, warning and help text of dreamfusion/ (exception constructors,
``warn``, ``print``, ``parser.error``, ``help=`` / ``description=`` / ``epilog=``, upper-case message constants, the
attribute docstrings of the config sections: the ``--help`` text) and every command's ``--help`` and the loader's
answer to each old key, pick out the dotted keys (``render.background``, ``guidance.type=sds``) and check each: a
declared key or section (and, after ``=``, an allowed value of a choice key), or a known old one in a message that
says it is old. The oracle is the schema itself: ``all_keys()``, ``CHOICES``, ``RENAMED``, ``REPLACED``.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

import dreamfusion
from dreamfusion.cli.parser import COMMANDS, help_text
from dreamfusion.config import CHOICES, Config, all_keys, load_config
from dreamfusion.errors import ConfigError
from dreamfusion.migrations import RENAMED, REPLACED

PACKAGE = Path(dreamfusion.__file__).parent
SECTIONS = tuple(name for name, value in vars(Config()).items() if hasattr(value, "__dataclass_fields__"))
KEY = re.compile(r"(?<![\w./-])((?:%s)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:=([A-Za-z0-9_]+)(?![\w{]))?"
                 % "|".join(SECTIONS))
OLD_WORDS = re.compile(r"\b(renamed|replaced|old|earlier|no longer|moved|gone|now)\b", re.IGNORECASE)
MESSAGE_CALLS = {"warn", "print", "error", "exit", "SystemExit"}
MESSAGE_KEYWORDS = {"help", "description", "epilog"}


def _declared() -> set[str]:
    leaves = [key for key, _, _ in all_keys()]
    return set(leaves) | {".".join(key.split(".")[:i]) for key in leaves for i in range(1, key.count(".") + 1)}


DECLARED = _declared()
OLD = set(RENAMED) | {k.split("=")[0] for k in REPLACED if "=" not in k}
OLD_SETTINGS = {k for k in REPLACED if "=" in k}


def stale_keys(text: str) -> list[str]:
    """The dotted keys (key or key=value) in ``text`` that a user cannot set, with why."""
    bad = []
    old_named = OLD_WORDS.search(text) is not None
    for match in KEY.finditer(text):
        key, value = match.group(1), match.group(2)
        if key in DECLARED:
            if value and key in CHOICES and value not in CHOICES[key]:
                if not (f"{key}={value}" in OLD_SETTINGS and old_named):
                    bad.append(f"{key}={value}: not one of {', '.join(CHOICES[key])}")
        elif key not in OLD:
            bad.append(f"{key}: not a config key")
        elif not old_named:
            bad.append(f"{key}: an old key, in a message that does not say so")
    return bad


def _exception_classes(trees: list[ast.Module]) -> set[str]:
    """Every exception class name the package raises: the built-in ones, and its own classes built on them."""
    names = {n for n in dir(__builtins__ if isinstance(__builtins__, dict) else __builtins__) if n.endswith("Error")}
    names |= {n for n, v in vars(__import__("builtins")).items() if isinstance(v, type) and issubclass(v, BaseException)}
    classes = [node for tree in trees for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    grown = True
    while grown:
        grown = False
        for node in classes:
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
            if node.name not in names and bases & names:
                names.add(node.name)
                grown = True
    return names


def _text(node: ast.AST) -> str:
    """The literal text under ``node``: string constants and f-string parts, a '{}' for each value filled in."""
    parts = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.JoinedStr):
            parts.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in sub.values))
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str) and not _in_fstring(sub, node):
            parts.append(sub.value)
    return " | ".join(parts)


def _in_fstring(const: ast.Constant, root: ast.AST) -> bool:
    return any(isinstance(n, ast.JoinedStr) and const in n.values for n in ast.walk(root))


def _callee(call: ast.Call) -> str:
    return call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")


def _is_section(node: ast.ClassDef) -> bool:
    return any((d.id if isinstance(d, ast.Name) else getattr(d, "attr", "")) == "section" for d in node.decorator_list)


@functools.lru_cache(maxsize=1)
def source_messages() -> list[tuple[str, str]]:
    """(where, text) of every user-facing message literal in dreamfusion/."""
    files = sorted(PACKAGE.rglob("*.py"))
    trees = [ast.parse(path.read_text(encoding="utf-8")) for path in files]
    raised = _exception_classes(trees)
    found = []
    for path, tree in zip(files, trees):
        where = path.relative_to(PACKAGE.parent).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                if _callee(node) in raised or _callee(node) in MESSAGE_CALLS:
                    found.append((f"{where}:{node.lineno}", _text(node)))
                found += [(f"{where}:{node.lineno}", _text(k.value)) for k in node.keywords
                          if k.arg in MESSAGE_KEYWORDS]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id.isupper() for t in targets) and \
                        isinstance(node.value, (ast.Constant, ast.JoinedStr)):
                    found.append((f"{where}:{node.lineno}", _text(node.value)))
            elif isinstance(node, ast.ClassDef) and _is_section(node):
                found += [(f"{where}:{doc.lineno}", doc.value.value) for doc in node.body
                          if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                          and isinstance(doc.value.value, str)]
    return [(where, text) for where, text in found if text.strip()]


def test_the_scanner_finds_the_messages_it_must_read():
    """A scan that reads nothing passes everything: the prior's vocabulary error, a section's help text, a CLI
    help string and an upper-case message constant are among the messages read."""
    texts = [text for _, text in source_messages()]
    assert any("the embedded prior does not know" in t for t in texts)  # a UserError(...) built by a function
    assert any("Previews and the orbit video show" in t for t in texts)  # render.background's attribute docstring
    assert any("guidance.latent_render renders Stable Diffusion" in t for t in texts)  # LATENT_NEEDS_SD
    assert len(texts) > 200


def test_the_key_check_tells_stale_keys_from_current_ones():
    assert stale_keys("other prompts need guidance.model_type=stable_diffusion") == []
    assert stale_keys("set render.background=gray, see guidance.prior.* and field.hashgrid.{}") == []
    assert stale_keys("other prompts need guidance.type=sds with Stable Diffusion") == []  # a current setting
    assert stale_keys("use guidance.type=prior") == ["guidance.type=prior: not one of sds, perp_neg, vsd, clip, sdedit"]
    assert stale_keys("guidance.type=prior was replaced by guidance.model_type=prior") == []
    assert stale_keys("raise field.n_levels") == ["field.n_levels: an old key, in a message that does not say so"]
    assert stale_keys("'field.n_levels' was renamed to 'field.hashgrid.n_levels'") == []
    assert stale_keys("set render.eval_background=gray") == ["render.eval_background: not a config key"]
    assert stale_keys("mesh/model.glb and dreamfusion.render.volume, render/volume.py") == []


def test_every_message_of_the_package_names_current_keys():
    bad = [f"{where}: {problem}" for where, text in source_messages() for problem in stale_keys(text)]
    assert bad == []


@pytest.mark.parametrize("command", ["", *(c.name for c in COMMANDS)])
def test_every_help_names_current_keys(command):
    assert stale_keys(help_text(command)) == []


def _old_setting(old: str) -> str:
    if "=" in old:
        return old
    new = RENAMED.get(old)
    if new is None:
        return f"{old}=true" if old.endswith(".enabled") else f"{old}=x"
    value = dict((k, v) for k, _, v in all_keys())[new]
    return f"{old}={list(value) if isinstance(value, tuple) else value}"


def _one_per_group(renamed: dict[str, str]) -> list[str]:
    """One old key of each renamed group (field.gaussian_*, guidance.prior_*, ...): one function answers them all."""
    groups: dict[str, str] = {}
    for old in sorted(renamed):
        groups.setdefault(renamed[old].rsplit(".", 1)[0], old)
    return sorted(groups.values())


@pytest.mark.parametrize("old", _one_per_group(RENAMED) + sorted(REPLACED))
def test_the_answer_to_an_old_key_names_it_as_old_and_the_new_one_as_declared(old):
    with pytest.raises(ConfigError) as info:
        load_config(None, [_old_setting(old)])
    message = str(info.value)
    assert old.split("=")[0] in message
    assert stale_keys(message) == []
