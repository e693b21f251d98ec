"""A non-editable install works from anywhere: the configs, the vendored viewer and py.typed are package data.

Oracle: `pip install --target` of this checkout into a temporary folder, then `python -m dreamfusion` run
from another folder with only that folder on the path lists the same configs as the checkout and loads them
to the same values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from dreamfusion.config import available_configs, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=300)
    return target


def _python(installed: Path, code: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(installed)
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_installed_package_ships_its_configs(installed, tmp_path):
    assert not (installed / "dreamfusion" / "configs").is_symlink()  # real files, not a link into the checkout
    out = _python(installed, "import json, dataclasses, dreamfusion, dreamfusion.config as c; print(json.dumps("
                  "{'file': dreamfusion.__file__, 'configs': c.available_configs(), "
                  "'demo': dataclasses.asdict(c.load_config('demo'))}))", tmp_path)
    result = json.loads(out)
    assert Path(result["file"]).is_relative_to(installed)
    assert result["configs"] == available_configs() and len(result["configs"]) >= 5
    assert result["demo"] == json.loads(json.dumps(asdict(load_config("demo"))))


def test_installed_cli_runs_from_another_folder(installed, tmp_path):
    out = _python(installed, "import sys; from dreamfusion.cli import main; sys.exit(main(['--help']))", tmp_path)
    assert "configs (--config NAME): " + ", ".join(available_configs()) in out
    assert (installed / "dreamfusion" / "py.typed").is_file()
