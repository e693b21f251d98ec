"""The refine stage as users run it: `python -m dreamfusion refine RUN_DIR [--config NAME] [key=value ...]`.

Oracles: the run-folder contract (a new folder under the coarse run's output_dir, the last stdout line, every
artifact, the Khronos validator on its .glb), the conversion's promise (the refine run's first surface is the
coarse run's exported mesh: volumetric IoU against it), checkpoint round trips (resume continues the step counter;
export rebuilds the same mesh), texture-only mode (the SDF and deformation stay bit-identical to the conversion's),
the chained config (two folders, the refine one printed last and naming the coarse one), the tiny Stable
Diffusion through the same command, and one-line errors that leave the coarse run untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from dreamfusion.checkpoint import load_checkpoint
from dreamfusion.config import load_run_config
from dreamfusion.world.scores import mesh_occupancy
from test_cli import last_line, run_cli, snapshot, validate_glb

PRIOR = ["guidance.prior.resolution=16", "guidance.prior.views=16"]
COARSE = ["--config", "demo", "steps=30", "checkpoint_every=15", "preview_every=15", "preview_resolution=32",
          "render.eval_grid=32", "export.resolution=32", "export.texture_size=64", "export.video_frames=3",
          "export.video_resolution=24", "render.width=16", "render.height=16", "render.n_samples=32", *PRIOR]
REFINE = ["steps=4", "checkpoint_every=2", "preview_every=2", "preview_resolution=32", "field.dmtet.resolution=24",
          "field.dmtet.texture_fit_steps=20", "render.width=32", "render.height=32", "export.texture_size=64",
          "export.video_frames=3", "export.video_resolution=24", *PRIOR]


def _glb_mesh(run_dir: Path) -> trimesh.Trimesh:
    scene = trimesh.load(run_dir / "mesh" / "model.glb")
    return scene if isinstance(scene, trimesh.Trimesh) else next(iter(scene.geometry.values()))


def _iou(a: trimesh.Trimesh, b: trimesh.Trimesh, resolution: int = 48) -> float:
    occ_a = mesh_occupancy(np.asarray(a.vertices), np.asarray(a.faces), resolution, 1.0)
    occ_b = mesh_occupancy(np.asarray(b.vertices), np.asarray(b.faces), resolution, 1.0)
    return float((occ_a & occ_b).sum() / (occ_a | occ_b).sum())


@pytest.fixture(scope="module")
def coarse(tmp_path_factory):
    out = tmp_path_factory.mktemp("coarse")
    rc, stdout, err = run_cli([*COARSE, "prompt=a red cube", f"output_dir={out}"])
    assert rc == 0, err
    return Path(last_line(stdout))


@pytest.fixture(scope="module")
def refined(coarse):
    before = snapshot(coarse)
    rc, stdout, err = run_cli(["refine", coarse, *REFINE])  # under the prior the default config is demo-refine
    assert rc == 0, err
    return Path(last_line(stdout)), before, err


def test_refine_writes_a_new_run_folder_beside_the_coarse_one_that_names_it(coarse, refined):
    run_dir, before, err = refined
    assert run_dir.parent == coarse.parent and run_dir.name.startswith("a-red-cube-refine-")
    for rel in ("config.yaml", "run.json", "metrics.jsonl", "report.html", "orbit.mp4", "mesh/model.obj",
                "mesh/model.glb", "checkpoints/last.pt"):
        assert (run_dir / rel).is_file(), rel
    cfg = load_run_config(run_dir / "config.yaml")
    assert cfg.field.type == "dmtet" and Path(cfg.field.dmtet.convert_from) == coarse
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done" and record["config"] == "demo-refine" and record["step"] == 4
    assert Path(record["coarse_run"]) == coarse
    assert "convert" in record["seconds"]
    assert snapshot(coarse) == before  # the coarse run is read, never written
    assert f"refines <a href=\"../{coarse.name}/report.html\">{coarse.name}</a>" in (run_dir / "report.html").read_text()


def test_refined_glb_passes_khronos_validator(refined):
    assert validate_glb(refined[0] / "mesh" / "model.glb")["numErrors"] == 0


def test_resume_and_export_of_a_refine_run(refined, tmp_path):
    run_dir = refined[0]
    rc, stdout, err = run_cli([f"resume={run_dir}", "steps=6"])
    assert rc == 0, err
    assert Path(last_line(stdout)) == run_dir
    assert load_checkpoint(run_dir)["step"] == 6
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows}) and rows[-1]["step"] == 6
    glb = (run_dir / "mesh" / "model.glb").read_bytes()
    rc, stdout, err = run_cli(["export", run_dir])
    assert rc == 0, err
    mesh_a, mesh_b = trimesh.load(run_dir / "mesh" / "model.glb", force="mesh"), trimesh.load(
        trimesh.util.wrap_as_stream(glb), file_type="glb", force="mesh")
    assert np.allclose(np.sort(mesh_a.vertices, axis=0), np.sort(mesh_b.vertices, axis=0), atol=1e-6)


def test_texture_only_keeps_the_coarse_runs_surface(coarse, tmp_path):
    """field.dmtet.train_geometry=false (DreamGaussian's stage 2): the SDF and the deformation stay the conversion's
    (the coarse run's density at its export level, fitted onto its surface), and the refine run's mesh is the coarse
    run's exported mesh (no jump at conversion)."""
    settings = [*REFINE, "field.dmtet.train_geometry=false", "steps=2"]
    rc, stdout, err = run_cli(["refine", coarse, "--config", "demo-refine", *settings, f"output_dir={tmp_path}"])
    assert rc == 0, err
    fine = Path(last_line(stdout))
    _assert_geometry_is_the_conversions(fine, coarse, "demo-refine", settings)
    assert _iou(_glb_mesh(fine), _glb_mesh(coarse)) >= 0.9


def _assert_geometry_is_the_conversions(fine, coarse, name, settings):
    """The refine run's SDF and deformation are those its conversion gives (run._start_from_coarse, run here again:
    the distance-transform SDF and the surface fit), untouched by training."""
    from dreamfusion.artifacts import PhaseTimer
    from dreamfusion.fields.dmtet import DMTetField
    from dreamfusion.run import _start_from_coarse, refine_config

    cfg, _ = refine_config(coarse, name, settings)
    field = DMTetField(cfg.field, "cpu")
    _start_from_coarse(field, cfg, torch.device("cpu"), PhaseTimer(quiet=True))
    state = load_checkpoint(fine)["field"]
    assert torch.allclose(state["sdf"], field.sdf.detach(), atol=1e-6)
    assert torch.allclose(state["deformation"], field.deformation.detach(), atol=1e-6)


def test_a_gaussian_run_is_refined_texture_only_by_sdedit(tmp_path):
    """Under the prior a Gaussian run's default refine config is demo-gaussian-refine (DreamGaussian's stage 2): the
    surface stays the conversion's (here with 5 steps of the fit onto the coarse export) and the texture is graded
    by the SDEdit rule."""
    rc, stdout, err = run_cli([*COARSE, "prompt=a red cube", "field.type=gaussian", "field.gaussian.count=500",
                               "field.gaussian.init_radius=0.6", f"output_dir={tmp_path}"])
    assert rc == 0, err
    coarse = Path(last_line(stdout))
    settings = [*REFINE, "steps=3", "guidance.sdedit.steps=10", "field.dmtet.surface_fit_steps=5"]  # fit to the export
    rc, stdout, err = run_cli(["refine", coarse, *settings])
    assert rc == 0, err
    fine = Path(last_line(stdout))
    assert json.loads((fine / "run.json").read_text())["config"] == "demo-gaussian-refine"
    rows = [json.loads(line) for line in (fine / "metrics.jsonl").read_text().splitlines()]
    assert all(row["loss_sdedit"] > 0 and "loss_sds" not in row for row in rows if "loss" in row)
    _assert_geometry_is_the_conversions(fine, coarse, "demo-gaussian-refine", settings)


SMALL_REFINE = """\
steps: 2
checkpoint_every: 1
preview_every: 0
field: {type: dmtet, dmtet: {resolution: 16, texture_fit_steps: 5}}
render: {width: 16, height: 16}
guidance: {t_max: 0.5, prior: {resolution: 16, views: 16}}
export: {video_frames: 2, video_resolution: 16, texture_size: 64}
"""


def test_chained_config_runs_coarse_then_refine(tmp_path):
    """configs/demo-refined.yaml chains demo-refine; here a small refine config file (refine= takes a path too)."""
    small = tmp_path / "small-refine.yaml"
    small.write_text(SMALL_REFINE)
    runs = tmp_path / "runs"
    rc, stdout, err = run_cli(["--config", "demo-refined", *COARSE[2:], "steps=4", "prompt=a blue sphere",
                               f"output_dir={runs}", f"refine={small}"])
    assert rc == 0, err
    fine = Path(last_line(stdout))
    assert load_run_config(fine / "config.yaml").field.dmtet.resolution == 16 and fine.parent == runs
    tmp_path = runs
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and fine.name.startswith("a-blue-sphere-refine-")
    coarse = next(p for p in tmp_path.iterdir() if p != fine)
    assert Path(json.loads((fine / "run.json").read_text())["coarse_run"]) == coarse


def test_refine_on_the_tiny_stable_diffusion(tiny_sd_dir, tmp_path):
    sd = [f"guidance.stable_diffusion.model={tiny_sd_dir}", "guidance.stable_diffusion.vae_resolution=32"]
    rc, stdout, err = run_cli(["prompt=a red cube", *sd, f"output_dir={tmp_path}", "steps=2", "device=cpu",
                               "render.width=16", "render.height=16", "render.n_samples=16", "field.hidden_dim=16",
                               "field.hashgrid.n_levels=4", "field.hashgrid.log2_hashmap_size=12", "export.resolution=24",
                               "render.eval_grid=24", "export.texture=vertex", "export.video_frames=2",
                               "export.video_resolution=16", "field.blob_density=20", "preview_every=0"])
    assert rc == 0, err
    coarse = Path(last_line(stdout))
    rc, stdout, err = run_cli(["refine", coarse, "steps=2", "render.width=32", "render.height=32",
                               "field.dmtet.resolution=16", "field.dmtet.texture_fit_steps=5", "checkpoint_every=1",
                               "export.video_frames=2", "export.video_resolution=16"])
    assert rc == 0, err
    fine = Path(last_line(stdout))
    record = json.loads((fine / "run.json").read_text())
    assert record["config"] == "magic3d-refine" and record["status"] == "done"
    assert load_run_config(fine / "config.yaml").guidance.stable_diffusion.model == str(tiny_sd_dir)


@pytest.mark.parametrize("case", ["not a run folder", "no checkpoint", "unknown config", "chained unknown"])
def test_refine_errors_are_one_line(case, coarse, tmp_path):
    if case == "not a run folder":
        argv, needle = ["refine", tmp_path], "has no config.yaml"
    elif case == "no checkpoint":
        bare = tmp_path / "bare"
        bare.mkdir()
        (bare / "config.yaml").write_text((coarse / "config.yaml").read_text())
        argv, needle = ["refine", bare], "no checkpoints/last.pt yet"
    elif case == "unknown config":
        argv, needle = ["refine", coarse, "--config", "demo-refin"], "config 'demo-refin' not found"
    else:
        argv, needle = [*COARSE, "refine=demo-refin", f"output_dir={tmp_path}"], "refine=demo-refin: config"
    before = snapshot(coarse)
    rc, stdout, err = run_cli(argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert snapshot(coarse) == before
