"""Every script in benchmarks/ runs at smoke sizes (one step, smallest sizes, CPU), so none can rot unnoticed
(components.py once failed on every device after a config key moved).

Oracle: the script's exit status 0 (prior_grid.py: 1 for a target missed at smoke size), no traceback, and for
those that end with one, a JSON line that parses. Measured on the 2-core CI box, 2026-12-04: 67 s for the six
at load average ~3 (export.py 22 s, batch.py 18 s with Ray's start, sds_step.py 13 s, the rest 3-7 s each);
about 8 min at load average 12-16.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
DEMO_SMALL = ["steps=2", "render.width=8", "render.height=8", "render.n_samples=8", "render.eval_grid=16",
              "guidance.prior.resolution=8", "guidance.prior.views=8", "export.resolution=16",
              "export.texture_size=32", "export.video_frames=2", "export.video_resolution=16", "preview_every=0"]

# "script [mode]" -> its smoke arguments ({tmp} is a fresh folder): one parametrised list, adjusted here when a
# script's options change.
SCRIPTS = {
    "components.py": ["--device", "cpu", "--points", "256", "--n-samples", "8", "--gaussians", "50",
                      "--gaussian-resolution", "16", "--mesh-resolution", "16", "--texture-size", "32",
                      "--warmup", "0", "--iters", "1"],
    "sds_step.py": ["--model", "tiny", "--device", "cpu", "--height", "8", "--width", "8", "--n-samples", "8",
                    "--vae-resolution", "32", "--warmup", "0", "--iters", "1"],
    "export.py": ["--resolution", "16", "--texture-size", "32", "--frames", "2",
                  *[a for kv in DEMO_SMALL for a in ("--set", kv)]],
    "train_step.py": ["--baseline", "none", "--rounds", "1", "--steps", "1", "--warmup", "0",
                      *[a for kv in DEMO_SMALL for a in ("--set", kv)]],
    "prior_grid.py": ["--prompts", "a red cube", "--field", "nerf", "--output-dir", "{tmp}", *DEMO_SMALL],
    "prior_grid.py --bed": ["--bed", "--smoke"],  # the test bed: a front object and a pair, three methods (5 s)
    "perp_neg_probe.py": ["guidance.prior.views=32", "guidance.prior.resolution=16", "--noises", "1", "--t", "500",
                          "--azimuths", "0", "90"],
    "perp_neg_probe.py --sweep-r": ["guidance.prior.views=32", "guidance.prior.resolution=16", "--sweep-r", "30",
                                    "--noises", "1", "--t", "500"],
    "batch.py": ["--prompts", "a red cube", "--max-parallel", "1", *DEMO_SMALL],
    "mesh_raster.py": ["--sizes", "16", "--views", "1", "--faces", "80", "--tet-resolution", "4", "--n-samples", "8",
                       "--warmup", "0", "--iters", "1"],
    "refine_bed.py": ["--prompts", "a red cube", "--out", "{tmp}", "--coarse-set", *DEMO_SMALL, "--set", "steps=1",
                      "field.dmtet.resolution=8", "field.dmtet.texture_fit_steps=2", "render.width=8",
                      "render.height=8", "guidance.prior.resolution=8", "export.texture_size=32",
                      "export.video_frames=2", "export.video_resolution=16", "preview_every=0"],
    "config_path.py": [a for kv in ("guidance.prior.resolution=8", "render.width=8", "render.height=8",
                                    "render.n_samples=8", "render.eval_grid=12", "export.resolution=12",
                                    "preview_resolution=16") for a in ("--set", kv)],  # a 2-step demo run, traced
}
LIBRARIES = {"sd_models.py"}  # imported by sds_step.py
MISSED_TARGET = {"prior_grid.py": 1}  # exit status of a run that worked but missed its quality target


def test_every_benchmark_script_is_listed():
    on_disk = {p.name for p in BENCH.glob("*.py")}
    listed = {name.split()[0] for name in SCRIPTS}
    assert on_disk == listed | LIBRARIES, "add the new script to SCRIPTS with smoke arguments"


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_benchmark_script_runs_at_smoke_size(script, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in SCRIPTS[script]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(BENCH / script.split()[0]), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, MISSED_TARGET.get(script.split()[0], 0)), proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    if last.startswith("{"):
        json.loads(last)
