"""The test harness itself: sandboxed caches, the oracle gate, declared test dependencies, and .ci/run.

Oracles: a subprocess pytest run under a fresh HOME whose Hugging Face cache holds a model the tests expect
to be absent (the home's folders must come out byte-for-byte unchanged, and a control run without the
conftest sees that model there); the declared requirements of pyproject.toml against the modules the tests
import (mapped to distributions by importlib.metadata); the text of .ci/run against the README's command.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

import pytest

from conftest import DEFAULT_CACHES, SANDBOX, SANDBOX_CACHES, import_oracle, require_oracle

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
HUB_ID = "openai/clip-vit-base-patch16"  # test_clip.py expects it to be absent from the cache


def _tree(folder: Path) -> dict[str, bytes]:
    """relative path -> content of every file under folder ({} when it does not exist)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _plant_in_hub_cache(hub: Path, repo_id: str, source: Path) -> None:
    """Lay a model folder out as huggingface_hub's cache does: models--org--name/{refs/main, snapshots/<sha>/}."""
    entry = hub / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    shutil.copytree(source, entry / "snapshots" / commit)


# -- caches ---------------------------------------------------------------------------------------------

def test_every_cache_points_into_the_session_sandbox():
    import huggingface_hub.constants as hub_constants

    from dreamfusion.guidance.models.prior import cache_dir

    for var, path in SANDBOX_CACHES.items():
        assert os.environ[var] == str(path), var
        assert SANDBOX in path.parents
    assert Path(hub_constants.HF_HOME) == SANDBOX_CACHES["HF_HOME"]  # huggingface_hub was imported after conftest
    assert Path(hub_constants.HF_HUB_CACHE) == SANDBOX_CACHES["HF_HUB_CACHE"]
    assert cache_dir().is_relative_to(SANDBOX_CACHES["DREAMFUSION_CACHE"])
    assert all(SANDBOX not in path.parents for path in DEFAULT_CACHES.values())


def test_real_caches_are_neither_read_nor_written(tmp_path, tiny_clip_dir):
    """A fresh HOME stands in for the user's: its hub cache holds the model test_clip.py expects to be missing.

    Control: without the conftest, the code resolves its caches under that HOME and finds the planted model.
    Then two tests run under it (one expects the hub id to be absent, one writes silhouettes): they pass, and
    the HOME's files are unchanged."""
    home = tmp_path / "home"
    _plant_in_hub_cache(home / ".cache" / "huggingface" / "hub", HUB_ID, tiny_clip_dir)
    env = {k: v for k, v in os.environ.items() if k not in SANDBOX_CACHES and k != "PYTHONPATH"}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    before = _tree(home)

    control = subprocess.run([sys.executable, "-c", (
        "import json, huggingface_hub, huggingface_hub.constants as c\n"
        "from dreamfusion.guidance.models.prior import cache_dir\n"
        f"print(json.dumps([str(cache_dir()), c.HF_HUB_CACHE, huggingface_hub.try_to_load_from_cache({HUB_ID!r}, "
        "'config.json')]))")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert control.returncode == 0, control.stderr
    silhouettes, hub, found = json.loads(control.stdout)
    assert Path(silhouettes).is_relative_to(home / ".cache" / "dreamfusion")
    assert Path(hub) == home / ".cache" / "huggingface" / "hub"
    assert found is not None and Path(found).is_file()  # the planted model is visible outside the sandbox

    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_clip.py::test_build_guidance_and_missing_model_errors",
                          "tests/test_harness.py::test_silhouettes_land_in_the_sandbox"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 passed" in run.stdout
    assert _tree(home) == before
    assert not (home / ".cache" / "dreamfusion").exists()


def test_silhouettes_land_in_the_sandbox():
    from dreamfusion.guidance.models.prior import dataset_cameras, load_silhouettes

    cams = dataset_cameras(3, [0, 30], [-180, 180], [2.5, 2.5], [40, 40])  # 3 views at 8 px: no other test's file
    load_silhouettes("torus", cams, 8)
    written = sorted(p.name for p in SANDBOX_CACHES["DREAMFUSION_CACHE"].rglob("torus-8px-3v-*.pt"))
    assert len(written) == 1
    assert not list(DEFAULT_CACHES["dreamfusion"].rglob(written[0]))


# -- the oracle gate ------------------------------------------------------------------------------------

def test_require_oracle_skips_locally_and_fails_in_ci(monkeypatch):
    require_oracle(True, "anything", "nothing to do")  # available: the test goes on
    monkeypatch.setenv("DREAMFUSION_REQUIRE_ORACLES", "0")
    with pytest.raises(pytest.skip.Exception, match="the frobnicator is not available: pip install frob"):
        require_oracle(False, "the frobnicator", "pip install frob")
    monkeypatch.delenv("DREAMFUSION_REQUIRE_ORACLES")
    with pytest.raises(pytest.skip.Exception):
        require_oracle(False, "the frobnicator", "pip install frob")
    monkeypatch.setenv("DREAMFUSION_REQUIRE_ORACLES", "1")
    with pytest.raises(pytest.fail.Exception, match=r"DREAMFUSION_REQUIRE_ORACLES=1: the frobnicator is not "
                                                    r"available: pip install frob"):
        require_oracle(False, "the frobnicator", "pip install frob")
    with pytest.raises(pytest.fail.Exception, match=r"no_such_module_xyz \(ModuleNotFoundError: .*\) is not "
                                                    r"available: pip install xyz"):
        import_oracle("no_such_module_xyz", "pip install xyz")
    assert import_oracle("json", "stdlib") is json


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_optional_oracles_go_through_require_oracle():
    """No test skips around the gate: importorskip and skipif are gone, pytest.skip only for a missing CUDA device."""
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        if path.name == "conftest.py":
            continue
        for node, name in _calls(ast.parse(path.read_text())):
            if name.endswith("importorskip"):
                offenders.append(f"{path.name}:{node.lineno} importorskip")
            elif name in ("pytest.skip", "pytest.mark.skipif") and "CUDA" not in ast.unparse(node):
                offenders.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


# -- declared dependencies and .ci/run ------------------------------------------------------------------

def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0].lower().replace("_", "-")


def _imported_top_level_modules(paths) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _ci_extras() -> set[str]:
    text = (ROOT / ".ci" / "run").read_text()
    match = re.search(r'pip install -q -e "\.\[([a-z,]+)\]"', text)
    assert match, ".ci/run does not install this package with its extras"
    return set(match.group(1).split(","))


def test_every_test_import_is_declared_in_what_ci_installs():
    project = _pyproject()["project"]
    extras = _ci_extras()
    assert "dev" in extras
    declared = {_requirement_name(s) for s in project["dependencies"]}
    for extra in extras:
        declared |= {_requirement_name(s) for s in project["optional-dependencies"][extra]}
    local = {p.stem for p in TESTS.glob("*.py")} | {"dreamfusion", "render"}
    modules = _imported_top_level_modules(TESTS.glob("*.py"))
    # oracles imported by name inside import_oracle(...) calls count too (not this file's examples of the gate)
    for path in TESTS.glob("*.py"):
        for node, name in _calls(ast.parse(path.read_text())):
            if name == "import_oracle" and isinstance(node.args[0], ast.Constant) and path.name != "test_harness.py":
                modules.add(node.args[0].value.split(".")[0])
    modules -= local | set(sys.stdlib_module_names)
    assert {"torch", "hypothesis", "nerfacc", "gsplat", "fast_simplification", "viser"} <= modules  # the scan sees them
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(modules):
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert undeclared == {}, f"imported by tests but in no extra that .ci/run installs: {undeclared}"


def test_ci_runs_the_readme_command_with_every_oracle_required():
    lines = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    lines = [line for line in lines if line]
    assert "set -euo pipefail" in lines
    assert lines[-1] == "python3 -m pytest -q -p no:cacheprovider"  # the README's suite, as documented
    assert "export DREAMFUSION_REQUIRE_ORACLES=1" in lines
    assert "bash .ci/run" in (ROOT / "README.md").read_text()
    text = "\n".join(lines)
    assert "|| echo" not in text and "|| true" not in text  # an install that fails stops the run
    assert re.search(r"^npm ci .*--prefix tools/gltf-validator", text, re.M)  # not behind `if npm exists`
    assert "chromium" in text and "nodejs" in text and "npm" in text  # apt-get installs what is missing


def test_readme_quick_start_says_which_torch_to_install_before_the_command():
    """The torch build (CPU and CUDA) is chosen before the quick start's command, not explained after it."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## Quick start")
    section = text[start:text.index("\n## ", start + 1)]
    command = section.index('python -m dreamfusion --config demo prompt="a red cube"')
    before, after = section[:command], section[command:]
    assert "--index-url https://download.pytorch.org/whl/cpu" in before and "CUDA build" in before
    assert "torch" not in after.split("```")[0] and "torch==" not in after  # nothing about torch after it
