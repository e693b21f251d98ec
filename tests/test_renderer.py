"""The renderer owns rendering (issue 21): it chooses volume or splat rendering by the field's class, holds the
sampler state a run checkpoints, and export writes a field's own files. Oracles: the renderer's own functions
called directly (bit for bit), and round trips (state dict, files -> tensors).
"""

from __future__ import annotations

import pytest
import torch

from conftest import NERFACC_INSTALL, import_oracle
from render.cameras import orbit_cameras

from dreamfusion.config import FieldConfig, GaussianConfig, HashGridConfig, TriplaneConfig, load_config
from dreamfusion.errors import ConfigError
from dreamfusion.export import write_field_files
from dreamfusion.export.planes import load_planes
from dreamfusion.export.ply import read_ply
from dreamfusion.fields import GaussianField, NeRFField, TriplaneField
from dreamfusion.fields.base import Field
from dreamfusion.renderer import Renderer, render_splats, render_views, render_volume
from dreamfusion.renderer.config import RenderConfig


class Slab(Field):
    """Constant density and albedo inside the box."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, points):
        return {"density": torch.full_like(points[:, 0], 2.0) + self.anchor,
                "albedo": torch.full_like(points, 0.25)}


def _splats(count: int = 40, seed: int = 0) -> GaussianField:
    torch.manual_seed(seed)
    return GaussianField(FieldConfig(type="gaussian", gaussian=GaussianConfig(count=count, rasterizer="torch")), "cpu")


def test_render_views_chooses_splats_for_gaussians_and_volume_for_every_other_field():
    cams = orbit_cameras(2, 20.0, 3.0, 40.0)
    splats = _splats()
    got = render_views(splats, None, cams, 10, 8, n_samples=16, background_kind="black")
    want = render_splats(splats, None, cams, 10, 8, background_kind="black")
    assert set(got) == set(want) and "means2d" in got
    assert all(torch.equal(got[k], want[k]) for k in want if want[k] is not None)
    slab = Slab()
    got = render_views(slab, None, cams, 10, 8, n_samples=16, background_kind="black")
    want = render_volume(slab, None, cams, 10, 8, n_samples=16, background_kind="black")
    assert "means2d" not in got and all(torch.equal(got[k], want[k]) for k in want if want[k] is not None)


def test_renderer_renders_with_the_config_and_owns_no_sampler_on_cpu():
    cfg = load_config("demo", ["render.n_samples=16", "render.background=gray", "render.perturb=false"])
    torch.manual_seed(0)
    field = NeRFField(FieldConfig(hashgrid=HashGridConfig(backend="torch", n_levels=4, log2_hashmap_size=12),
                                  hidden_dim=16), "cpu")
    renderer = Renderer(cfg.render, field, "cpu")
    cams = orbit_cameras(2, 20.0, 3.0, 40.0)
    got = renderer.render(cams, 6, 5, background=None, generator=torch.Generator().manual_seed(1))
    want = render_views(field, None, cams, 6, 5, n_samples=16, perturb=False, ambient=cfg.render.ambient,
                        background_kind="gray", generator=torch.Generator().manual_seed(1))
    assert torch.equal(got["rgb"], want["rgb"]) and torch.equal(got["depth"], want["depth"])
    assert renderer.estimator is None and renderer.state_dict() == {}
    renderer.load_state_dict({})  # a checkpoint without an estimator
    with pytest.raises(ConfigError, match="render.sampler=nerfacc needs a CUDA device"):
        Renderer(RenderConfig(sampler="nerfacc"), field, "cpu")
    assert Renderer(RenderConfig(sampler="nerfacc"), _splats(), "cpu").estimator is None  # splats: no sampler


def test_renderer_sampler_state_round_trips_under_the_checkpoint_key(tmp_path):
    """The estimator (nerfacc's grid; its CPU parts) is the renderer's state; the trainer stores it as 'estimator'."""
    import_oracle("nerfacc", NERFACC_INSTALL)
    from render.volume_nerfacc import make_estimator

    from dreamfusion.train import Trainer

    cfg = load_config("demo", ["device=cpu", "render.n_samples=16"])
    trainer = Trainer(cfg, tmp_path, torch.device("cpu"))
    trainer.renderer.estimator = make_estimator(trainer.field.bound, resolution=8)
    trainer.renderer.update(0)
    state = trainer.state()["estimator"]
    assert state and torch.equal(state["binaries"], trainer.renderer.estimator.binaries)
    other = Renderer(cfg.render, trainer.field, "cpu")
    other.estimator = make_estimator(trainer.field.bound, resolution=8)
    assert other.estimator.binaries.all() and not state["binaries"].all()  # something to restore
    other.load_state_dict(state)
    assert torch.equal(other.estimator.binaries, trainer.renderer.estimator.binaries)


def test_export_writes_each_fields_own_files_and_they_read_back(tmp_path):
    torch.manual_seed(0)
    planes = TriplaneField(FieldConfig(type="triplane", triplane=TriplaneConfig(resolution=8, channels=2),
                                       hidden_dim=8), "cpu")
    written = write_field_files(planes, tmp_path)
    assert written == {"planes": tmp_path / "triplane.npz"}
    assert torch.equal(load_planes(written["planes"]).planes, planes.planes.detach())
    splats = _splats()
    written = write_field_files(splats, tmp_path)
    assert written == {"splats": tmp_path / "splats.ply"}
    assert torch.equal(read_ply(written["splats"])["means"], splats.means.detach())
    assert write_field_files(Slab(), tmp_path / "none") == {}

