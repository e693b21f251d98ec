"""The densification strategy's contract (dreamfusion/train/densify.py): its schedules are functions of the step, its
state round-trips through a checkpoint (format 1 checkpoints with the statistics in the field's buffers too), and
Adam's state follows the rows it keeps, clones, splits and prunes.

Oracles: closed forms (the densification steps of a schedule; position_lr), the uninterrupted run (a run
resumed from a checkpoint written between two densifications ends with the same tensors, torch.equal), and
a hand-built field whose clone / split / prune outcome is written out row by row.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from dreamfusion.checkpoint import load_checkpoint, save_checkpoint
from dreamfusion.config import FieldConfig, GaussianConfig, OptimConfig, load_config
from dreamfusion.train.densify import DensifyStrategy, densify_active, densify_due, position_lr
from dreamfusion.fields import build_field
from dreamfusion.guidance import FunctionGuidance
from dreamfusion.train import Trainer

# 200 Gaussians at 16 x 16, densified every 3 steps: a few of them hot each time (measured: 200 -> 203 -> 207)
SMALL = ["field.type=gaussian", "field.gaussian.count=200", "field.gaussian.init_opacity=0.5",
         "field.gaussian.densify_every=3", "field.gaussian.densify_grad_threshold=0.006",
         "field.gaussian.max_count=400", "field.gaussian.prune_scale=0.3", "field.gaussian.dense_scale=0.15",
         "field.gaussian.rasterizer=torch", "render.width=16", "render.height=16", "steps=8", "preview_every=0"]


def toward_red(rgb, cams, step, steps, generator=None):
    return {"loss_sds": ((rgb - rgb.new_tensor([1.0, 0.0, 0.0])) ** 2).mean()}


def _trainer(tmp_path, guidance=toward_red, extra=()) -> Trainer:
    cfg = load_config("demo", [*SMALL, *extra])
    return Trainer(cfg, tmp_path, torch.device("cpu"), FunctionGuidance(guidance))


def _tensors(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The field's parameters, their Adam moments and the strategy's statistics."""
    out = {name: p.detach() for name, p in trainer.field.named_parameters()}
    for name, p in trainer.field.named_parameters():
        for key, value in trainer.optimizer.state[p].items():
            out[f"{name}.{key}"] = value
    out.update({f"strategy.{k}": v for k, v in trainer.strategy.state_dict().items()})
    return out


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key


# -- schedules ------------------------------------------------------------------------------------
def test_the_schedules_are_functions_of_the_step():
    cfg = GaussianConfig(densify_every=25, densify_start=30, densify_stop=130)
    assert [d for d in range(300) if densify_due(d, cfg)] == [50, 75, 100, 125]
    assert [d for d in range(300) if densify_active(d, cfg)] == list(range(30, 131))
    assert not any(densify_active(d, dataclasses.replace(cfg, densify_every=0)) for d in range(300))
    optim = OptimConfig().gaussian
    strategy = DensifyStrategy(cfg, optim, build_field(FieldConfig(type="gaussian", gaussian=cfg)))
    steps = list(range(0, 800, 7))
    random.Random(0).shuffle(steps)  # any order, any number of calls: the same rates
    for step in steps + steps:
        want = position_lr(step, optim.position_lr, optim.position_lr_final, optim.position_lr_steps)
        assert strategy.learning_rates(step) == {"gaussian_means": want}


def test_each_adam_step_uses_the_rate_of_its_step_even_after_a_skipped_one(tmp_path):
    """The means' rate is set from the step before each Adam step, not left over from the previous call: step 3,
    after the skipped (non-finite) step 2, uses position_lr(3); a warm-up scales it for the step only."""
    def nan_at_step_2(rgb, cams, step, steps, generator=None):
        loss = toward_red(rgb, cams, step, steps)["loss_sds"]
        return {"loss_sds": loss * float("nan") if step == 2 else loss}

    trainer = _trainer(tmp_path, nan_at_step_2, ["optim.lr_warmup_steps=2", "optim.lr_warmup_start=0.5"])
    used, adam_step = [], trainer.optimizer.step

    def recording_step(*args, **kwargs):
        used.append(next(g["lr"] for g in trainer.optimizer.param_groups if g["name"] == "gaussian_means"))
        return adam_step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    for _ in range(5):
        trainer.train_step()
    o = trainer.cfg.optim.gaussian
    lr = [position_lr(s, o.position_lr, o.position_lr_final, o.position_lr_steps) for s in range(5)]
    assert trainer.skipped == 1
    assert used == [lr[0] * 0.5, lr[1] * 0.75, lr[3], lr[4]]
    means = next(g for g in trainer.optimizer.param_groups if g["name"] == "gaussian_means")
    assert means["lr"] == lr[4]  # the checkpoint keeps the plain rate


# -- state ----------------------------------------------------------------------------------------
def _resumed(tmp_path, state_change=None) -> tuple[dict, dict, int]:
    """(uninterrupted, resumed) tensors after 8 steps, the resumed run checkpointed after 5 (between the
    densifications after steps 3 and 6, with statistics gathered), ``state_change`` applied to the checkpoint
    before it is written; and the count after 5 steps."""
    for name in ("whole", "first"):
        (tmp_path / name).mkdir()
    whole = _trainer(tmp_path / "whole")
    for _ in range(8):
        whole.train_step()
    first = _trainer(tmp_path / "first")
    for _ in range(5):
        first.train_step()
    assert float(first.strategy.grad_count.sum()) > 0  # the checkpoint holds statistics
    state = first.state()
    if state_change is not None:
        state_change(state)
    save_checkpoint(tmp_path / "first", state)
    second = _trainer(tmp_path / "first")
    second.load(load_checkpoint(tmp_path / "first"))
    for _ in range(3):
        second.train_step()
    return _tensors(whole), _tensors(second), first.field.count


def test_a_run_resumed_between_densifications_ends_as_the_uninterrupted_one(tmp_path):
    whole, resumed, count_at_5 = _resumed(tmp_path)
    assert count_at_5 != 200 and whole["means"].shape[0] != count_at_5  # both densifications changed the count
    _assert_equal(whole, resumed)


def test_a_checkpoint_with_the_statistics_in_the_field_resumes_alike(tmp_path):
    """Checkpoints written before the strategy existed (format 1) hold its statistics as the field's buffers
    grad_accum / grad_count and have no "strategy" entry: the statistics move to the strategy on load
    (migrations.py; the field loads strictly)."""
    def as_before(state):
        state["field"].update(state.pop("strategy"))
        state["format"] = 1

    whole, resumed, _ = _resumed(tmp_path, as_before)
    _assert_equal(whole, resumed)


@pytest.mark.parametrize("version", [1, 2])
def test_a_checkpoint_without_statistics_is_refused(tmp_path, version):
    from dreamfusion.errors import CheckpointError

    trainer = _trainer(tmp_path)
    state = trainer.state()
    state.pop("strategy")
    save_checkpoint(tmp_path, {**state, "format": version})
    with pytest.raises(CheckpointError, match="lacks grad_accum" if version == 1 else "'strategy'"):
        _trainer(tmp_path).load(load_checkpoint(tmp_path))


# -- Adam's state follows the rows ----------------------------------------------------------------
def test_adam_moments_follow_the_kept_cloned_split_and_pruned_rows():
    """Six Gaussians: A small + hot (clone), B large + hot (split), C faint (pruned), D quiet (kept), E small +
    hot + faint (cloned, then it and its clone pruned), F small + hot (clone). Rows after: kept A, D, F; the
    clones A', F'; B's two children. Moments: the kept rows' own, zero for the new ones."""
    torch.manual_seed(0)
    cfg = GaussianConfig(count=6, densify_grad_threshold=0.01, dense_scale=0.05, prune_opacity=0.05, prune_scale=0.5)
    field = build_field(FieldConfig(type="gaussian", gaussian=cfg))
    strategy = DensifyStrategy(cfg, OptimConfig().gaussian, field)
    with torch.no_grad():
        field.log_scales.copy_(torch.tensor([0.02, 0.2, 0.02, 0.02, 0.02, 0.02]).log()[:, None].expand(6, 3))
        field.opacity_logits.copy_(torch.logit(torch.tensor([0.5, 0.5, 0.01, 0.5, 0.01, 0.5])))
        field.sh_dc.copy_(torch.arange(18.0).reshape(6, 3))
        strategy.grad_accum.copy_(torch.tensor([0.05, 0.05, 0.0, 0.0, 0.05, 0.05]))
        strategy.grad_count.fill_(1.0)
    optimizer = torch.optim.Adam(field.param_groups(OptimConfig()))
    sum((p * p).sum() for p in field.parameters()).backward()
    optimizer.step()
    rows = torch.arange(1.0, 7.0)
    for p in field.parameters():  # moments that name their row
        state = optimizer.state[p]
        shape = (6,) + (1,) * (p.dim() - 1)
        state["exp_avg"].copy_(rows.reshape(shape).expand_as(p))
        state["exp_avg_sq"].copy_(10 * rows.reshape(shape).expand_as(p))
    before = field.sh_dc.detach().clone()
    old = list(field.parameters())
    counts = strategy.densify_and_prune(field, optimizer)
    assert counts == {"cloned": 3, "split": 1, "pruned": 3, "count": 7}
    origin = [0, 3, 5, 0, 5, 1, 1]  # A, D, F, A', F', B1, B2
    torch.testing.assert_close(field.sh_dc.detach(), before[origin])
    expected = torch.tensor([1.0, 4.0, 6.0, 0.0, 0.0, 0.0, 0.0])
    for name, p in field.named_parameters():
        state = optimizer.state[p]
        for key, scale in (("exp_avg", 1.0), ("exp_avg_sq", 10.0)):
            got = state[key].reshape(7, -1)
            assert torch.equal(got, (scale * expected)[:, None].expand_as(got)), (name, key)
    assert all(p not in optimizer.state for p in old)  # the replaced parameters left the optimizer
    assert [g["params"][0] for g in optimizer.param_groups] == list(field.parameters())


# -- the trainer's calls and the statistics' units ------------------------------------------------
def test_the_trainer_densifies_after_every_third_step_and_a_skipped_step_changes_nothing(tmp_path):
    """densify_every=3 over 8 steps: clone / split / prune after steps 3 and 6 (the calls with step 2 and 5,
    closed form densify_due(step + 1)). A run whose step 5 (due) is non-finite: that step leaves the strategy's
    statistics, the Gaussian count and the field as they were, and the statistics stay finite."""
    trainer, calls = _trainer(tmp_path), []
    densify = trainer.strategy.densify_and_prune
    trainer.strategy.densify_and_prune = lambda *a: (calls.append(trainer.step), densify(*a))[1]
    for _ in range(8):
        trainer.train_step()
    assert calls == [s for s in range(8) if densify_due(s + 1, trainer.cfg.field.gaussian)] == [2, 5]

    def nan_at_step_5(rgb, cams, step, steps, generator=None):
        loss = toward_red(rgb, cams, step, steps)["loss_sds"]
        return {"loss_sds": loss * float("nan") if step == 5 else loss}

    trainer = _trainer(tmp_path, nan_at_step_5)
    for _ in range(5):
        trainer.train_step()
    before, count = _tensors(trainer), trainer.field.count
    assert float(trainer.strategy.grad_count.sum()) > 0  # statistics gathered since the densification at 3
    trainer.train_step()
    assert trainer.skipped == 1 and trainer.field.count == count
    _assert_equal(before, _tensors(trainer))
    assert all(torch.isfinite(v).all() for v in trainer.strategy.state_dict().values())


def test_the_statistics_scale_the_2d_gradient_by_half_the_width_and_half_the_height():
    """A 32 x 8 render (W = 32, H = 8): d loss / d means2d of (1, 0) and (0, 1) count as 16 and 4 NDC units."""
    cfg = GaussianConfig(count=2)
    field = build_field(FieldConfig(type="gaussian", gaussian=cfg))
    strategy = DensifyStrategy(cfg, OptimConfig().gaussian, field)
    means2d = torch.zeros(1, 2, 2, requires_grad=True)
    (means2d * torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])).sum().backward()
    out = {"means2d": means2d, "rgb": torch.zeros(1, 8, 32, 3), "radii": torch.ones(1, 2)}
    strategy.step_post_optimizer(field, None, out, 0)
    assert strategy.grad_accum.tolist() == [16.0, 4.0] and strategy.grad_count.tolist() == [1.0, 1.0]


def test_split_children_are_the_parent_plus_their_rotated_scaled_samples():
    """One large hot Gaussian, rotated 90 degrees about z with scales (0.4, 0.2, 0.1): under a fixed seed its two
    children sit at mean + R (z * s) for the standard normal draws z (3DGS), with scales s / 1.6."""
    cfg = GaussianConfig(count=2, densify_grad_threshold=0.01, dense_scale=0.05, prune_scale=0.0)
    field = build_field(FieldConfig(type="gaussian", gaussian=cfg))
    strategy = DensifyStrategy(cfg, OptimConfig().gaussian, field)
    s = torch.tensor([0.4, 0.2, 0.1])
    with torch.no_grad():
        field.means.copy_(torch.tensor([[0.1, 0.2, 0.3], [-0.5, 0.0, 0.0]]))
        field.log_scales.copy_(torch.stack([s, torch.full((3,), 0.01)]).log())
        field.quats.copy_(torch.tensor([[0.5 ** 0.5, 0.0, 0.0, 0.5 ** 0.5], [1.0, 0.0, 0.0, 0.0]]))
        field.opacity_logits.fill_(0.0)
        strategy.grad_accum.copy_(torch.tensor([0.05, 0.0]))
        strategy.grad_count.fill_(1.0)
    torch.manual_seed(7)
    counts = strategy.densify_and_prune(field)
    torch.manual_seed(7)
    z = torch.randn(2, 3) * s
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    assert counts == {"cloned": 0, "split": 1, "pruned": 0, "count": 3}
    torch.testing.assert_close(field.means.detach()[1:], torch.tensor([0.1, 0.2, 0.3]) + z @ rot.T)
    torch.testing.assert_close(field.scales.detach()[1:], (s / 1.6).expand(2, 3))
