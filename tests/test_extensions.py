"""CUDA kernels announced before training (issue 20): nerfacc / gsplat are built or loaded with one line and a
``kernels.<name>`` phase in run.json, and a failed build falls back to the PyTorch twin with one warning line.

No GPU here: ``kernels_needed`` is checked on a ``cuda`` device object with the packages' availability
patched, and a run on the CPU is told it needs nerfacc while the loader is patched to be slow or to fail.
Oracles: the phase's measured seconds against the loader's known sleep; the run's config.yaml naming the twin.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from dreamfusion import extensions
from dreamfusion.config import load_config, load_run_config
from test_devices import command, run_cli

CUDA = torch.device("cuda")  # a device object only: nothing is allocated on it


@pytest.mark.parametrize("overrides, expected", [
    ([], ["nerfacc"]), (["render.sampler=torch"], []), (["field.type=gaussian"], ["gsplat"]),
    (["field.type=gaussian", "field.gaussian.rasterizer=torch"], []), (["field.type=triplane"], ["nerfacc"]),
])
def test_the_kernels_a_run_needs(overrides, expected, monkeypatch):
    monkeypatch.setattr(extensions, "nerfacc_available", lambda: True)
    monkeypatch.setattr(extensions, "_gsplat_available", lambda: True)
    cfg = load_config(None, overrides)
    assert extensions.kernels_needed(cfg, CUDA) == expected
    assert extensions.kernels_needed(cfg, torch.device("cpu")) == []


def _pretend_nerfacc_is_needed(monkeypatch, load):
    monkeypatch.setattr(extensions, "kernels_needed", lambda cfg, device: ["nerfacc"])
    monkeypatch.setattr(extensions, "_load", load)


def test_a_slow_build_is_announced_and_timed_before_training(request, tmp_path, monkeypatch):
    def slow(name):
        time.sleep(0.5)

    _pretend_nerfacc_is_needed(monkeypatch, slow)
    rc, out, err = run_cli(command("default", request, tmp_path, "cpu"))
    assert rc == 0, err
    run_dir = Path(out.splitlines()[-1])
    announced = [line for line in err.splitlines() if "building the nerfacc CUDA kernels" in line]
    assert len(announced) == 1 and err.index(announced[0]) < err.index("export.")
    seconds = json.loads((run_dir / "run.json").read_text())["seconds"]
    assert 0.5 <= seconds["kernels.nerfacc"] < 5.0
    assert "warning" not in err


def test_a_failed_build_falls_back_to_the_torch_twin(request, tmp_path, monkeypatch):
    def broken(name):
        raise OSError("nvcc fatal: unsupported gpu architecture 'compute_100'\n(more compiler output)")

    _pretend_nerfacc_is_needed(monkeypatch, broken)
    rc, out, err = run_cli(command("default", request, tmp_path, "cpu"))
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: the nerfacc CUDA kernels")]
    assert len(warnings) == 1 and "compute_100" in warnings[0] and "render.sampler=torch" in warnings[0]
    assert "more compiler output" not in err and "Traceback" not in err
    run_dir = Path(out.splitlines()[-1])
    assert load_run_config(run_dir / "config.yaml").render.sampler == "torch"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "done"
