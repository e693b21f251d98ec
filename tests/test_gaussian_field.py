"""The Gaussian field: init and the render contract, densification (clone / split / prune, the trainer's
DensifyStrategy) with the Adam state, the means' learning-rate schedule, checkpoints with a different count,
the field as a volume."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from render.cameras import orbit_cameras

from dreamfusion.config import FieldConfig, GaussianConfig, GaussianOptimConfig, OptimConfig
from dreamfusion.fields import build_field
from dreamfusion.train.densify import DensifyStrategy, position_lr
from dreamfusion.fields.gaussian import GaussianField
from dreamfusion.renderer import render_views


# -- the field ------------------------------------------------------------------------------------
def _field(count: int = 200, **kw) -> GaussianField:
    torch.manual_seed(0)
    return build_field(FieldConfig(type="gaussian", gaussian=GaussianConfig(count=count, **kw)))


# DreamGaussian's text-stage rates (the defaults are tuned for the CPU demo; configs/gaussian.yaml sets these).
DREAMGAUSSIAN_OPTIM = OptimConfig(gaussian=GaussianOptimConfig(position_lr=1e-3, position_lr_final=2e-5,
                                                                position_lr_steps=300))


def test_position_lr_schedule():
    assert position_lr(0, 1e-3, 2e-5, 300) == pytest.approx(1e-3)
    assert position_lr(150, 1e-3, 2e-5, 300) == pytest.approx(math.sqrt(1e-3 * 2e-5))
    assert position_lr(300, 1e-3, 2e-5, 300) == pytest.approx(2e-5)
    assert position_lr(1000, 1e-3, 2e-5, 300) == pytest.approx(2e-5)


def test_field_init_and_render_contract():
    field = _field(count=300, init_radius=0.5, init_opacity=0.1)
    assert isinstance(field, GaussianField) and field.count == 300
    assert float(field.means.detach().norm(dim=-1).max()) <= 0.5 + 1e-6
    torch.testing.assert_close(field.opacities, torch.full((300,), 0.1))
    cams = orbit_cameras(2, 15.0, 2.0, 50.0)
    out = render_views(field, None, cams, 16, 12, background_kind="white")
    assert out["rgb"].shape == (2, 16, 12, 3) and out["opacity"].shape == (2, 16, 12, 1)
    assert out["depth"].shape == (2, 16, 12, 1) and out["albedo"].shape == (2, 16, 12, 3)
    assert out["dirs"].shape == (2, 16, 12, 3) and out["normal"] is None
    torch.testing.assert_close(out["rgb"], out["albedo"] + (1 - out["opacity"]))
    groups = {g["name"]: g["lr"] for g in field.param_groups(DREAMGAUSSIAN_OPTIM)}
    assert groups == {"gaussian_means": 1e-3, "gaussian_log_scales": 5e-3, "gaussian_quats": 5e-3,
                      "gaussian_opacity_logits": 0.05, "gaussian_sh_dc": 0.01}


def _strategy(field: GaussianField, optim: OptimConfig = DREAMGAUSSIAN_OPTIM, **changes) -> DensifyStrategy:
    return DensifyStrategy(dataclasses.replace(field.cfg.gaussian, **changes), optim.gaussian, field)


def _constructed_field(**changes):
    """Four Gaussians: A small + hot (clone), B large + hot (split), C faint (prune), D quiet (keep); and the
    strategy that holds their statistics."""
    field = _field(count=4, densify_grad_threshold=0.01, dense_scale=0.05,
                   prune_opacity=0.05, prune_scale=0.5)
    strategy = _strategy(field, **changes)
    with torch.no_grad():
        field.means.copy_(torch.tensor([[0.0, 0, 0], [0.3, 0, 0], [0, 0.3, 0], [0, 0, 0.3]]))
        field.log_scales.copy_(torch.tensor([0.02, 0.2, 0.05, 0.05]).log()[:, None].expand(4, 3))
        field.opacity_logits.copy_(torch.logit(torch.tensor([0.5, 0.5, 0.01, 0.5])))
        field.sh_dc.copy_(torch.arange(12.0).reshape(4, 3))
        strategy.grad_accum.copy_(torch.tensor([0.05, 0.05, 0.001, 0.001]) * 2)
        strategy.grad_count.fill_(2.0)
    return field, strategy


def test_densify_clone_split_prune_counts_and_adam_state():
    field, strategy = _constructed_field()
    optimizer = torch.optim.Adam(field.param_groups(OptimConfig()), eps=1e-15)
    loss = sum((p * p).sum() for p in field.parameters())
    loss.backward()
    optimizer.step()
    moments = {name: optimizer.state[p]["exp_avg"].clone() for name, p in field.named_parameters()}
    before = {name: p.detach().clone() for name, p in field.named_parameters()}
    counts = strategy.densify_and_prune(field, optimizer)
    assert counts == {"cloned": 1, "split": 1, "pruned": 1, "count": 5}
    assert field.count == 5  # A, D kept; A's clone; B's two children; C pruned
    for name, p in field.named_parameters():
        state = optimizer.state[p]
        assert p.shape[0] == 5 and state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape, name
        # rows: kept [A, D] carry their moments, new rows (A's clone, B's children) start at zero
        torch.testing.assert_close(state["exp_avg"][:2], moments[name][[0, 3]])
        assert float(state["exp_avg"][2:].abs().sum()) == 0.0
    for name in ("sh_dc", "opacity_logits", "quats"):  # rows A, D, A, B, B
        torch.testing.assert_close(getattr(field, name).detach(), before[name][[0, 3, 0, 1, 1]])
    torch.testing.assert_close(field.log_scales[:3].detach(), before["log_scales"][[0, 3, 0]])
    torch.testing.assert_close(field.scales[3:].detach(), before["log_scales"][[1, 1]].exp() / 1.6)
    assert strategy.grad_accum.shape == (5,) and float(strategy.grad_accum.sum()) == 0.0
    # the optimizer keeps stepping on the resized parameters
    sum((p * p).sum() for p in field.parameters()).backward()
    optimizer.step()


def test_step_schedule_and_densify_cadence():
    field, strategy = _constructed_field(densify_every=10)
    optimizer = torch.optim.Adam(field.param_groups(DREAMGAUSSIAN_OPTIM))
    assert strategy.learning_rates(9) == {"gaussian_means": pytest.approx(position_lr(9, 1e-3, 2e-5, 300))}
    strategy.step_post_optimizer(field, optimizer, {}, 8)
    assert field.count == 4
    strategy.step_post_optimizer(field, optimizer, {}, 9)  # the 10th step
    assert field.count == 5


def test_statistics_accumulate_the_ndc_gradient():
    field = _field(count=50, init_opacity=0.5)
    strategy = _strategy(field)
    cams = orbit_cameras(2, 15.0, 2.0, 50.0)
    out = render_views(field, None, cams, 16, 16)
    strategy.step_pre_backward(out)
    out["rgb"].sum().backward()
    strategy.step_post_optimizer(field, None, out, 0)
    seen = (out["radii"] > 0).sum(0).float()
    torch.testing.assert_close(strategy.grad_count, seen)
    expected = ((out["means2d"].grad * torch.tensor([8.0, 8.0])).norm(dim=-1) * (out["radii"] > 0)).sum(0)
    torch.testing.assert_close(strategy.grad_accum, expected)


def test_checkpoint_with_a_different_count_loads_and_renders_identically():
    field, strategy = _constructed_field()
    strategy.densify_and_prune(field)
    state = {k: v.clone() for k, v in field.state_dict().items()}
    fresh = _field(count=4)
    optimizer = torch.optim.Adam(fresh.param_groups(OptimConfig()))
    fresh.load_state_dict(state)
    assert fresh.count == 5
    cams = orbit_cameras(1, 10.0, 2.0, 50.0)
    with torch.no_grad():
        torch.testing.assert_close(render_views(fresh, None, cams, 12, 12)["rgb"],
                                   render_views(field, None, cams, 12, 12)["rgb"])
    assert optimizer.param_groups[0]["params"][0] is fresh.means  # the optimizer still holds the parameters


def test_trainer_checkpoint_round_trip_after_densification(tmp_path):
    """The Trainer's own save / load path: a checkpoint whose Gaussian count changed loads into a fresh
    Trainer (field and Adam state), renders identically and keeps training."""
    from dreamfusion.config import load_config
    from dreamfusion.train import Trainer

    cfg = load_config("demo", ["field.type=gaussian", "field.gaussian.count=300", "field.gaussian.densify_every=1",
                               "field.gaussian.densify_grad_threshold=0.0", "field.gaussian.init_opacity=0.5"])
    trainer = Trainer(cfg, tmp_path, torch.device("cpu"))
    cams = orbit_cameras(1, 10.0, 2.4, 45.0)
    out = trainer.renderer.render(cams, 32, 32, background=trainer.background, generator=trainer.generator)
    trainer.strategy.step_pre_backward(out)
    out["rgb"].mean().backward()
    trainer.optimizer.step()
    trainer.strategy.step_post_optimizer(trainer.field, trainer.optimizer, out, 0)  # every Gaussian seen is hot
    n = trainer.field.count
    assert n > 300
    state = trainer.state()
    fresh = Trainer(cfg, tmp_path, torch.device("cpu"))
    fresh.load(state)
    assert fresh.field.count == n
    for p_old, p_new in zip(trainer.optimizer.param_groups, fresh.optimizer.param_groups):
        for a, b in zip(p_old["params"], p_new["params"]):
            torch.testing.assert_close(trainer.optimizer.state[a]["exp_avg"], fresh.optimizer.state[b]["exp_avg"])
    with torch.no_grad():
        torch.testing.assert_close(render_views(fresh.field, None, cams, 16, 16)["rgb"],
                                   render_views(trainer.field, None, cams, 16, 16)["rgb"])
    fresh.renderer.render(cams, 32, 32, background=fresh.background, generator=fresh.generator)["rgb"].mean().backward()
    fresh.optimizer.step()


def test_density_integrates_to_the_splat_optical_depth():
    """Across a flat splat along its thin axis, the integral of density is -ln(1 - opacity) (up to the 3-sigma cut)."""
    field = _field(count=1, init_opacity=0.6)
    with torch.no_grad():
        field.means.zero_()
        field.log_scales.copy_(torch.tensor([[0.1, 0.005, 0.1]]).log())
        field.quats.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    y = torch.linspace(-0.5, 0.5, 20001)
    pts = torch.stack([torch.zeros_like(y), y, torch.zeros_like(y)], -1)
    with torch.no_grad():
        tau = torch.trapezoid(field.density(pts), y)
    assert float(tau) == pytest.approx(-math.log(1 - 0.6) * math.erf(3 / math.sqrt(2)), rel=1e-4)


def test_density_matches_brute_force_and_albedo_is_weighted_colour():
    field = _field(count=400, init_opacity=0.3)
    with torch.no_grad():
        field.sh_dc.uniform_(-1, 1)
        field.log_scales.add_(torch.randn_like(field.log_scales) * 0.3)
        field.quats.copy_(torch.randn_like(field.quats))
    points = (torch.rand(3000, 3, generator=torch.Generator().manual_seed(3)) - 0.5) * 1.4
    from render.splat_math import quat_to_rotmat

    # oracle: every point x every Gaussian; covariance widened by the volume dilation d (Sigma + d^2 I), peak
    # extinction -ln(1 - opacity) / (sqrt(2 pi) thinnest scale), cut at 3 sigma
    R = quat_to_rotmat(torch.nn.functional.normalize(field.quats, dim=-1))
    s = torch.sqrt(field.scales ** 2 + field.volume_dilation ** 2)
    cov = R @ torch.diag_embed(s ** 2) @ R.transpose(1, 2)
    d = points[:, None, :] - field.means[None]
    m2 = torch.einsum("mni,nij,mnj->mn", d, torch.linalg.inv(cov), d)
    peak = -torch.log(1 - field.opacities) / (math.sqrt(2 * math.pi) * s.min(-1).values)
    w = torch.where(m2 <= 9.0, peak * torch.exp(-0.5 * m2), torch.zeros_like(m2))
    with torch.no_grad():
        out = field(points)
        torch.testing.assert_close(field.density(points), w.sum(1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["density"], w.sum(1).detach(), rtol=1e-4, atol=1e-6)
    want = (w @ field.base_colors) / w.sum(1, keepdim=True)
    hit = w.sum(1) > 1e-2
    torch.testing.assert_close(out["albedo"][hit], want[hit].detach(), rtol=1e-4, atol=1e-5)
