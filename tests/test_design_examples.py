"""The two examples in docs/DESIGN.md ("A new field plugs in", "A new guidance plugs in") run as written.

Oracles: the voxel field's trilinear sampling returns the stored values at grid nodes (closed form); trained by
the real Trainer it moves its renders toward a target; the learned-colour guidance is optimized by the
Trainer's Adam, written into the checkpoint, and a run resumed from step 3 ends exactly where a straight run does.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dreamfusion.train.trainer as train
from dreamfusion.checkpoint import load_checkpoint
from dreamfusion.config import FieldConfig, load_config
from dreamfusion.guidance import FunctionGuidance
from dreamfusion.renderer import render_views
from render.cameras import orbit_cameras

DESIGN = Path(__file__).resolve().parent.parent / "docs" / "DESIGN.md"
SMALL = ["device=cpu", "render.width=12", "render.height=12", "render.n_samples=16", "render.background=white",
         "field.hashgrid.n_levels=2", "field.hashgrid.log2_hashmap_size=8", "field.hashgrid.base_resolution=4",
         "field.hidden_dim=8", "preview_every=0", "log_every=1", "render.albedo_warmup_steps=1000"]


def example(name: str) -> dict:
    """The names a DESIGN.md example defines, from the ```python block under <!-- example: name -->."""
    text = DESIGN.read_text()
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"docs/DESIGN.md has no '{name}' example"
    code = match.group(1)
    assert len(code.strip().splitlines()) <= 32, "the examples stay short"
    scope: dict = {}
    exec(compile(code, f"DESIGN.md:{name}", "exec"), scope)
    return scope


def test_the_voxel_field_samples_its_nodes_exactly():
    VoxelField = example("field")["VoxelField"]
    field = VoxelField(FieldConfig(bound=1.0), resolution=5)
    with torch.no_grad():
        field.grid.normal_(generator=torch.Generator().manual_seed(0))
    node = torch.tensor([[-1.0, -0.5, 0.5], [0.0, 1.0, -1.0]])  # node (i, j, k) at -1 + 0.5 * index
    idx = ((node + 1) / 0.5).round().long()  # x -> W, y -> H, z -> D
    raw = field.grid[0, :, idx[:, 2], idx[:, 1], idx[:, 0]].T  # [2, 4]
    out = field(node)
    torch.testing.assert_close(out["density"], F.softplus(raw[:, 0] - 2.0))
    torch.testing.assert_close(out["albedo"], torch.sigmoid(raw[:, 1:]))
    assert torch.equal(field(torch.tensor([[1.5, 0.0, 0.0]]))["density"], torch.zeros(1))
    out = render_views(field, None, orbit_cameras(2, 20.0, 3.0, 40.0), 8, 8, n_samples=16)
    assert out["rgb"].shape == (2, 8, 8, 3) and out["opacity"].shape == (2, 8, 8, 1)


def test_the_voxel_field_trains_in_the_trainer(tmp_path, monkeypatch):
    VoxelField = example("field")["VoxelField"]
    monkeypatch.setattr(train, "build_field", lambda cfg, device, channels: VoxelField(cfg, device, channels, 8))
    cfg = load_config(None, [*SMALL, "steps=30", "optim.encoding_lr=0.1"])
    red = torch.tensor([1.0, 0.0, 0.0])
    guidance = FunctionGuidance(lambda rgb, cams, step, steps, generator=None: {"loss_sds": ((rgb - red) ** 2).mean()})
    trainer = train.Trainer(cfg, tmp_path, torch.device("cpu"), guidance)
    first = trainer.train_step()["loss"]
    last = trainer.fit()["loss"]
    assert last < 0.5 * first, (first, last)


def _run(tmp_path, steps: int, resume_at: int | None = None):
    Guidance = example("guidance")["LearnedColourGuidance"]
    cfg = load_config(None, [*SMALL, f"steps={steps}", "checkpoint_every=3", "guidance.t_anneal=none"])
    tmp_path.mkdir(exist_ok=True)
    trainer = train.Trainer(cfg, tmp_path, torch.device("cpu"), Guidance())
    if resume_at is not None:
        trainer.resume()
        assert trainer.step == resume_at
    trainer.fit()
    return trainer


def test_the_guidance_state_is_optimized_checkpointed_and_resumed(tmp_path):
    straight = _run(tmp_path / "straight", 6)
    colour = straight.guidance.colour.detach()
    assert colour[0] > 0.5 > colour[1], colour  # Adam moved it from 0.5 toward the goal (1, 0, 0)
    assert any(g["name"] == "guidance_colour" for g in straight.optimizer.param_groups)
    torch.testing.assert_close(load_checkpoint(tmp_path / "straight")["guidance"]["colour"], colour)

    _run(tmp_path / "resumed", 3)
    resumed = _run(tmp_path / "resumed", 6, resume_at=3)
    torch.testing.assert_close(resumed.guidance.colour.detach(), colour, rtol=1e-5, atol=1e-6)
    for key, value in straight.field.state_dict().items():
        torch.testing.assert_close(resumed.field.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_frozen_guidance_refuses_a_checkpoint_with_guidance_state(tmp_path):
    _run(tmp_path, 3)
    cfg = load_config(None, [*SMALL, "steps=6"])
    frozen = FunctionGuidance(lambda rgb, cams, step, steps, generator=None: {"loss_sds": rgb.mean()})
    with pytest.raises(Exception, match="trainable guidance state \\(colour\\)"):
        train.Trainer(cfg, tmp_path, torch.device("cpu"), frozen).resume()
