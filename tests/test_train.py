"""The loop's small parts: the shading schedule, the regularisers and the weighted total loss.

Oracles: binomial bounds on the shading fractions over many seeded draws (and exact answers at the
degenerate probabilities), hand-computed regulariser values, and the total loss logged to metrics.jsonl
recomputed from the logged terms and the config's weights.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from dreamfusion.config import Config, load_config
from dreamfusion.guidance import FrozenGuidance
from dreamfusion.renderer import pick_shading
from dreamfusion.train.losses import regularizers
from dreamfusion.train.trainer import Trainer

FIELD = ["field.hashgrid.n_levels=4", "field.hashgrid.log2_hashmap_size=12", "field.hashgrid.base_resolution=8",
         "field.hidden_dim=16"]


def _render_cfg(warmup: int, albedo: float, textureless: float):
    return dataclasses.replace(Config().render, albedo_warmup_steps=warmup, albedo_prob=albedo,
                               textureless_prob=textureless)


# -- pick_shading -------------------------------------------------------------------------------------

def test_pick_shading_is_albedo_during_warmup_and_draws_nothing():
    cfg = _render_cfg(50, 0.0, 1.0)  # after the warm-up it would always be textureless
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert {pick_shading(step, cfg, g) for step in range(50)} == {"albedo"}
    assert torch.equal(g.get_state(), state)  # the warm-up consumes no random numbers
    assert pick_shading(50, cfg, g) == "textureless"  # the first step after it is drawn


@pytest.mark.parametrize("albedo, textureless", [(0.2, 0.3), (0.5, 0.0), (0.1, 0.9), (1.0, 0.0), (0.0, 1.0),
                                                 (0.0, 0.0)])
def test_pick_shading_fractions_match_the_probabilities(albedo, textureless):
    cfg = _render_cfg(10, albedo, textureless)
    n = 20_000
    g = torch.Generator().manual_seed(1)
    picks = [pick_shading(10 + i, cfg, g) for i in range(n)]
    expected = {"albedo": albedo, "textureless": textureless, "lambertian": 1.0 - albedo - textureless}
    for mode, p in expected.items():
        fraction = picks.count(mode) / n
        if p in (0.0, 1.0):
            assert fraction == p, mode  # never or always: exact
        else:
            sigma = math.sqrt(p * (1 - p) / n)  # binomial standard deviation of the fraction
            assert abs(fraction - p) < 5 * sigma, (mode, fraction, p)
    g = torch.Generator().manual_seed(1)
    assert [pick_shading(10 + i, cfg, g) for i in range(200)] == picks[:200]  # seeded: reproducible


# -- regularizers -------------------------------------------------------------------------------------

def test_regularizers_hand_values():
    # four pixels: empty, half, full and 0.8 opacity; opacity is clamped to [1e-5, 1 - 1e-5] for the first two
    opacity = torch.tensor([0.0, 0.5, 1.0, 0.8], dtype=torch.float64).view(1, 2, 2, 1)
    normal = torch.tensor([[0, 0, 0], [0, 0, 0.5], [0, 0, 1], [0, 0, 0.8]], dtype=torch.float64)  # premultiplied
    s = math.sqrt(3) / 2
    # rays along -z (facing the normal: n . d = -1), +z (n . d = 1), and 60 degrees from +z (n . d = 0.5)
    dirs = torch.tensor([[0, 0, 1], [0, 0, -1], [0, 0, 1], [s, 0, 0.5]], dtype=torch.float64)
    out = {"opacity": opacity, "normal": normal.view(1, 2, 2, 3)}
    terms = regularizers(out, dirs.view(1, 2, 2, 3))
    lo, hi = 1e-5, 1 - 1e-5
    clamped = [lo, 0.5, hi, 0.8]
    sparsity = sum(math.sqrt(o * o + 0.01) for o in clamped) / 4
    entropy = sum(-o * math.log(o) - (1 - o) * math.log(1 - o) for o in clamped) / 4
    # orientation = mean(opacity * max(0, n . d)^2) with the unclamped opacity; the zero normal counts 0
    orientation = (0.0 * 0 + 0.5 * 0.0 + 1.0 * 1.0 ** 2 + 0.8 * 0.5 ** 2) / 4
    assert set(terms) == {"loss_sparsity", "loss_opacity_entropy", "loss_orientation"}
    assert terms["loss_sparsity"].item() == pytest.approx(sparsity, rel=1e-12)
    assert terms["loss_opacity_entropy"].item() == pytest.approx(entropy, rel=1e-12)
    assert terms["loss_orientation"].item() == pytest.approx(orientation, rel=1e-12)
    # without normals (or directions) there is no orientation term
    assert set(regularizers({"opacity": opacity, "normal": None}, dirs.view(1, 2, 2, 3))) == {"loss_sparsity",
                                                                                             "loss_opacity_entropy"}
    assert set(regularizers(out, None)) == {"loss_sparsity", "loss_opacity_entropy"}


def test_regularizer_gradients_hand_values():
    # d/do sqrt(o^2 + 0.01) = o / sqrt(o^2 + 0.01); d/do H(o) = log((1 - o) / o); both divided by the pixel count
    opacity = torch.tensor([0.3, 0.6], dtype=torch.float64).view(1, 1, 2, 1).requires_grad_(True)
    terms = regularizers({"opacity": opacity, "normal": None}, None)
    (grad_sparsity,) = torch.autograd.grad(terms["loss_sparsity"], opacity, retain_graph=True)
    (grad_entropy,) = torch.autograd.grad(terms["loss_opacity_entropy"], opacity)
    o = torch.tensor([0.3, 0.6], dtype=torch.float64)
    torch.testing.assert_close(grad_sparsity.flatten(), o / torch.sqrt(o ** 2 + 0.01) / 2)
    torch.testing.assert_close(grad_entropy.flatten(), torch.log((1 - o) / o) / 2)


# -- the weighted total loss -----------------------------------------------------------------------------

class _ConstantGuidance(FrozenGuidance):
    """A cheap differentiable guidance: loss_sds = mean((image - 0.5)^2), plus a logged non-loss value."""

    def __call__(self, images, cameras, step, total_steps, generator=None):
        return {"loss_sds": ((images - 0.5) ** 2).mean(), "grad_norm": 0.0}


def test_total_loss_is_the_weighted_sum_of_the_logged_terms(tmp_path):
    weights = {"loss_sds": 2.0, "loss_sparsity": 0.5, "loss_opacity_entropy": 0.25, "loss_orientation": 0.125}
    cfg = load_config(None, ["prompt=a red cube", "steps=3", "log_every=1", "preview_every=0", "device=cpu",
                             "render.width=8", "render.height=8", "render.n_samples=8",
                             "render.albedo_warmup_steps=0", "render.albedo_prob=0.0", "render.textureless_prob=0.0",
                             *FIELD, *[f"loss.{k[5:]}={w}" for k, w in weights.items()]])
    trainer = Trainer(cfg, tmp_path, torch.device("cpu"), _ConstantGuidance())
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        terms = {k: v for k, v in row.items() if k.startswith("loss_")}
        assert set(terms) == set(weights), row  # every weighted term is there (orientation: normals rendered)
        assert row["loss"] == pytest.approx(sum(weights[k] * v for k, v in terms.items()), rel=1e-5)
        assert row["grad_norm"] == 0.0  # logged, not weighted


def test_a_preview_that_fails_keeps_its_steps_checkpoint(tmp_path, monkeypatch):
    """Checkpoint, then preview: a preview render that raises at step 2 (a checkpoint step) leaves step 2's
    checkpoint, not step 1's."""
    from dreamfusion.checkpoint import load_checkpoint
    from dreamfusion.renderer import Renderer

    cfg = load_config(None, ["prompt=a red cube", "steps=4", "checkpoint_every=1", "preview_every=2", "device=cpu",
                             "render.width=8", "render.height=8", "render.n_samples=8", "render.eval_grid=8",
                             "preview_resolution=8", *FIELD])
    def failing_preview(self, camera_cfg, side):
        raise RuntimeError("no preview")

    monkeypatch.setattr(Renderer, "render_preview", failing_preview)
    trainer = Trainer(cfg, tmp_path, torch.device("cpu"), _ConstantGuidance())
    with pytest.raises(RuntimeError, match="no preview"):
        trainer.fit(progress=False)
    assert trainer.step == 2 and load_checkpoint(tmp_path)["step"] == 2
