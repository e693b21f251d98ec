"""The multi-view embedded prior (issue 31; dreamfusion/guidance/models/multiview_prior.py).

Oracles: Tweedie's formula for a mixture of Diracs over the concatenated groups (prior.closed_form_eps on [n D]
vectors); the two-instance posterior in closed form (a logistic weight) against n independent single-view
denoisers; the dataset groups' own cameras (a render group equal to a shifted dataset group is matched to it,
view for view, and the denoiser at a small t gives back that group's images); the configs' one-line refusals;
the CLI run of configs/demo-multiview.yaml, whose every SDS call hands the prior whole groups of cameras.
"""

from __future__ import annotations

import contextlib
import io
import math
from types import SimpleNamespace

import pytest
import torch

from dreamfusion.cli import main
from dreamfusion.config import load_config
from dreamfusion.errors import ConfigError
from dreamfusion.guidance.models.multiview_prior import MultiViewPrior, group_candidates, joint_eps
from dreamfusion.guidance.models.prior import MIN_VIEWS, closed_form_eps
from render.cameras import sample_cameras

TINY_PRIOR = ["guidance.prior.views=32", "guidance.prior.resolution=8"]


def _concatenated(pieces, groups):
    """The candidates [M, n D] written out: every instance of every piece at every row of groups."""
    return torch.cat([inst[:, groups].flatten(0, 1).flatten(1) for inst, _ in pieces]).double()


def test_joint_eps_is_tweedie_over_the_concatenated_groups():
    g = torch.Generator().manual_seed(0)
    views, n, d = 8, 2, 5
    pieces = [torch.rand(k, views, d, generator=g, dtype=torch.float64) * 2 - 1 for k in (3, 2)]
    pieces = [(p, (p.double() ** 2).sum(-1)) for p in pieces]
    groups = torch.tensor([[0, 1], [3, 2], [6, 7]])
    for abar in (0.9, 0.3, 0.02):
        x_t = torch.randn(n, d, generator=g, dtype=torch.float64)
        abar = torch.tensor(abar)  # float32, as the prior's alphas_cumprod
        want = closed_form_eps(x_t.flatten(), abar.double(), _concatenated(pieces, groups))
        got = joint_eps(x_t, abar, pieces, groups)
        torch.testing.assert_close(got.flatten(), want, rtol=1e-9, atol=1e-9)


def test_the_joint_posterior_settles_a_view_that_alone_is_ambiguous():
    """Two instances A, B over 2 views; the noisy group's view 0 lies halfway between A's and B's, its view 1 on
    A's. One view at a time, view 0's posterior is 1/2 : 1/2 (estimate (a0 + b0) / 2, eps 0); jointly A's weight
    is the logistic of abar |a1 - b1|^2 / (2 (1 - abar)) and view 0's estimate leans to a0."""
    a = torch.tensor([[1.0, -1.0, 0.5], [0.8, 0.8, -0.8]], dtype=torch.float64)  # [n = 2 views, D = 3]
    b = torch.tensor([[-1.0, 1.0, 0.5], [-0.4, 0.2, 0.6]], dtype=torch.float64)
    images = torch.stack([a, b])  # [2 instances, V = 2, D]
    pieces = [(images, (images.double() ** 2).sum(-1))]
    abar = torch.tensor(0.5, dtype=torch.float64)
    s, var = abar.sqrt(), 1 - abar
    x_t = torch.stack([s * (a[0] + b[0]) / 2, s * a[1]]).double()
    joint = joint_eps(x_t, abar, pieces, torch.tensor([[0, 1]]))
    w_a = torch.sigmoid(abar * ((a[1] - b[1]).double() ** 2).sum() / (2 * var))
    mean0 = w_a * a[0].double() + (1 - w_a) * b[0].double()
    torch.testing.assert_close(joint[0], (x_t[0] - s * mean0) / var.sqrt(), rtol=1e-9, atol=1e-9)
    alone = closed_form_eps(x_t[0], abar, images[:, 0].double())
    torch.testing.assert_close(alone, torch.zeros_like(alone), rtol=0, atol=1e-9)
    assert float(w_a) > 0.8 and float((joint[0] - alone).norm()) > 0.9  # view 1 decides: the estimates differ


def test_group_candidates_are_the_cyclic_shifts_of_each_group():
    assert group_candidates(8, 4).tolist() == [[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [3, 0, 1, 2],
                                               [4, 5, 6, 7], [5, 6, 7, 4], [6, 7, 4, 5], [7, 4, 5, 6]]


@pytest.fixture(scope="module")
def tiny_prior():
    cfg = load_config("demo-multiview", TINY_PRIOR)
    camera = SimpleNamespace(**{k: getattr(cfg.camera, k) for k in
                                ("elevation_range", "azimuth_range", "distance_range", "fovy_range")})
    return MultiViewPrior(camera, cfg.guidance.prior, cfg.render.background, "cpu", cfg.camera.n_views)


def test_a_dataset_group_is_matched_view_for_view_and_denoised_back(tiny_prior):
    prior = tiny_prior
    n, cams = prior.n_views, prior._cams
    cond = prior.encode_prompt("a white cube with a red front")
    own = cond.cond[0][0][0]  # [V, D]: the prompt's images
    for start in (5, 10):  # dataset group 1 under shift 1, group 2 under shift 2
        rows = group_candidates(prior.candidates.shape[0], n)[start]
        render = cams.index(rows)
        groups = prior.select_groups(render)
        assert rows.tolist() in groups.tolist()
        # the rows within the window, view for view, by the cameras' own angles (all 4 cyclic shifts of all groups)
        unit = lambda c: torch.nn.functional.normalize(c.c2w[:, :3, 3], dim=-1)  # noqa: E731
        inside = [row for row in group_candidates(cams.c2w.shape[0], n).tolist()
                  if all(math.degrees(math.acos(min(1.0, float(unit(cams)[row[k]] @ unit(render)[k])))) <= 20.0
                         for k in range(n))]
        if len(inside) >= MIN_VIEWS:
            assert sorted(groups.tolist()) == sorted(inside)
        else:
            assert len(groups) == MIN_VIEWS and groups[0].tolist() == rows.tolist()
        t = torch.full((n,), 20)
        abar = prior.alphas_cumprod[20]
        truth = own[rows].reshape(n, 3, prior.resolution, prior.resolution)
        x_t = abar.sqrt() * truth + (1 - abar).sqrt() * 0.01 * torch.randn_like(truth)
        _, eps_c = prior.predict_noise(x_t, t, render, cond)
        x0 = (x_t - (1 - abar).sqrt() * eps_c) / abar.sqrt()
        torch.testing.assert_close(x0, truth, rtol=0, atol=1e-3)
        turned = truth.roll(2, 0)  # the same images, the front seen from the back camera
        x_t = abar.sqrt() * turned
        _, eps_c = prior.predict_noise(x_t, t, render, cond)
        x0 = (x_t - (1 - abar).sqrt() * eps_c) / abar.sqrt()
        # the estimate is one candidate group (seen by cameras near the render's), the front where its camera is
        assert min(float((x0 - own[row].reshape(x0.shape)).abs().max()) for row in groups) < 1e-3
        assert float((x0 - truth).norm()) < 0.7 * float((x0 - turned).norm())


def test_a_group_shares_one_t_and_batches_are_whole_groups(tiny_prior):
    prior = tiny_prior
    cond = prior.encode_prompt("a red cube")
    cams = prior._cams.index(slice(0, 4))
    x = torch.zeros(4, 3, prior.resolution, prior.resolution)
    with pytest.raises(ValueError, match="share one t"):
        prior.predict_noise(x, torch.tensor([10, 10, 10, 11]), cams, cond)
    with pytest.raises(ValueError, match="whole groups"):
        prior.predict_noise(x[:3], torch.tensor([10, 10, 10]), cams.index(slice(0, 3)), cond)


@pytest.mark.parametrize("overrides, words", [
    (["guidance.type=perp_neg", "guidance.view_dependent=true"], ["guidance.type=perp_neg", "camera.n_views must be 1"]),
    (["guidance.type=vsd", "guidance.model_type=stable_diffusion"], ["guidance.type=vsd", "camera.n_views must be 1"]),
    (["guidance.view_dependent=true"], ["guidance.view_dependent=false"]),
    (["guidance.prior.views=30"], ["multiple of camera.n_views"]),
])
def test_what_cannot_grade_groups_refuses_n_views_in_one_line(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config("demo-multiview", overrides)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_single_view_rules_still_load_with_one_view():
    for rule in (["guidance.type=perp_neg", "guidance.view_dependent=true"], ["guidance.type=vsd",
                                                                            "guidance.model_type=stable_diffusion"]):
        load_config("demo-multiview", ["camera.n_views=1", "camera.batch_size=1", *rule])


def test_the_multiview_demo_runs_and_the_prior_sees_whole_groups(tmp_path, monkeypatch):
    seen = []
    original = MultiViewPrior.predict_noise

    def spy(self, x_t, t, cameras, cond):
        seen.append((x_t.shape[0], t.clone(), cameras.elevation.clone(), cameras.azimuth.clone(),
                     cameras.distance.clone()))
        return original(self, x_t, t, cameras, cond)

    monkeypatch.setattr(MultiViewPrior, "predict_noise", spy)
    argv = ["--config", "demo-multiview", "steps=3", *TINY_PRIOR, "render.width=16", "render.height=16",
            "render.n_samples=16", "preview_every=0", "checkpoint_every=100", "export.resolution=24",
            "export.texture=vertex", "export.video_frames=2", "export.video_resolution=16", "render.eval_grid=24",
            f"output_dir={tmp_path}"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(argv) == 0, err.getvalue()
    run_dir = tmp_path / out.getvalue().strip().splitlines()[-1].rsplit("/", 1)[-1]
    for name in ("mesh/model.glb", "orbit.mp4", "report.html", "run.json"):
        assert (run_dir / name).is_file(), name
    assert len(seen) == 3
    for batch, t, elevation, azimuth, distance in seen:
        assert batch == 4 and (t == t[0]).all()
        assert torch.allclose(elevation, elevation[0].expand(4)) and torch.allclose(distance, distance[0].expand(4))
        steps = torch.remainder(azimuth.diff(), 360.0)
        torch.testing.assert_close(steps, torch.full_like(steps, 90.0), rtol=0, atol=1e-3)
