"""Camera and ray conventions of docs/DESIGN.md, each checked against a closed form."""

from __future__ import annotations

import math

import pytest
import torch

from render.cameras import Cameras, camera_position, look_at, orbit_cameras, sample_cameras
from render.rays import generate_rays


def _t(*values):
    return torch.tensor(values, dtype=torch.float32)


def _assert_rotation(c2w: torch.Tensor):
    rot = c2w[:, :3, :3]
    eye = torch.eye(3).expand_as(rot)
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(rot.shape[0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(c2w[:, 3], _t(0, 0, 0, 1).expand(c2w.shape[0], 4), atol=0, rtol=0)


# ---------------------------------------------------------------- positions


@pytest.mark.parametrize("el, az, expected", [
    (0.0, 0.0, (0.0, 0.0, 2.0)),      # front: +z
    (0.0, 90.0, (2.0, 0.0, 0.0)),     # azimuth 90: +x
    (0.0, -90.0, (-2.0, 0.0, 0.0)),
    (0.0, 180.0, (0.0, 0.0, -2.0)),   # back
    (90.0, 0.0, (0.0, 2.0, 0.0)),     # straight above
    (-90.0, 45.0, (0.0, -2.0, 0.0)),
    (30.0, 45.0, (2 * math.cos(math.pi / 6) * math.sqrt(0.5), 1.0, 2 * math.cos(math.pi / 6) * math.sqrt(0.5))),
])
def test_camera_position_closed_form(el, az, expected):
    pos = camera_position(_t(el), _t(az), _t(2.0))
    torch.testing.assert_close(pos, _t(*expected)[None], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- look_at


def test_front_camera_looks_down_minus_z():
    c2w = look_at(camera_position(_t(0.0), _t(0.0), _t(1.5)))
    torch.testing.assert_close(c2w[0, :3, 3], _t(0, 0, 1.5))
    torch.testing.assert_close(-c2w[0, :3, 2], _t(0, 0, -1))  # view direction
    torch.testing.assert_close(c2w[0, :3, 0], _t(1, 0, 0))  # image right = world +x
    torch.testing.assert_close(c2w[0, :3, 1], _t(0, 1, 0))  # image up = world +y


def test_azimuth_90_camera_on_plus_x():
    c2w = look_at(camera_position(_t(0.0), _t(90.0), _t(2.0)))
    torch.testing.assert_close(c2w[0, :3, 3], _t(2, 0, 0), atol=1e-6, rtol=0)
    torch.testing.assert_close(-c2w[0, :3, 2], _t(-1, 0, 0), atol=1e-6, rtol=0)
    torch.testing.assert_close(c2w[0, :3, 0], _t(0, 0, -1), atol=1e-6, rtol=0)  # right = up x z
    torch.testing.assert_close(c2w[0, :3, 1], _t(0, 1, 0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("el, view, image_up", [(90.0, (0, -1, 0), (0, 0, -1)), (-90.0, (0, 1, 0), (0, 0, 1))])
def test_look_at_poles_are_finite_and_match_azimuth_zero_limit(el, view, image_up):
    eyes = camera_position(_t(el, el, el), _t(0.0, 37.0, -120.0), _t(2.0, 2.0, 2.0))
    c2w = look_at(eyes)
    assert torch.isfinite(c2w).all()
    _assert_rotation(c2w)
    for k in range(3):
        torch.testing.assert_close(-c2w[k, :3, 2], _t(*view), atol=1e-6, rtol=0)
        torch.testing.assert_close(c2w[k, :3, 0], _t(1, 0, 0), atol=1e-6, rtol=0)
        torch.testing.assert_close(c2w[k, :3, 1], _t(*image_up), atol=1e-6, rtol=0)
    # the limit from azimuth 0: a camera just below the pole has (almost) the same frame
    near_pole = look_at(camera_position(_t(el - math.copysign(1e-3, el)), _t(0.0), _t(2.0)))
    torch.testing.assert_close(c2w[0, :3, :3], near_pole[0, :3, :3], atol=1e-4, rtol=0)


def test_look_at_general_target_and_orthonormal():
    g = torch.Generator().manual_seed(1)
    eye = torch.randn(64, 3, generator=g) * 3
    target = torch.randn(64, 3, generator=g) * 0.2
    c2w = look_at(eye, target)
    _assert_rotation(c2w)
    view = target - eye
    torch.testing.assert_close(-c2w[:, :3, 2], view / view.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)
    assert (c2w[:, 1, 0].abs() < 1e-6).all()  # image right stays horizontal (roll 0) for up = +y
    assert (c2w[:, 1, 1] >= 0).all()  # image up has a non-negative world-y component


def test_look_at_rejects_eye_on_target():
    with pytest.raises(ValueError, match="coincide"):
        look_at(torch.zeros(1, 3))


# ---------------------------------------------------------------- sampling / orbit


RANGES = dict(elevation_range=(-10.0, 45.0), azimuth_range=(-180.0, 180.0), distance_range=(1.5, 2.0),
              fovy_range=(40.0, 70.0))


def test_sample_cameras_ranges_and_geometry():
    n = 4000
    cams = sample_cameras(n, **RANGES, generator=torch.Generator().manual_seed(0))
    assert isinstance(cams, Cameras)
    assert cams.c2w.shape == (n, 4, 4) and cams.fovy.shape == (n,)
    checks = [(cams.elevation, RANGES["elevation_range"]), (cams.azimuth, RANGES["azimuth_range"]),
              (cams.distance, RANGES["distance_range"]), (torch.rad2deg(cams.fovy), RANGES["fovy_range"])]
    for values, (lo, hi) in checks:
        assert values.min() >= lo - 1e-4 and values.max() <= hi + 1e-4
        # uniform: the mean is the midpoint within 5 standard errors of a uniform mean
        assert abs(values.mean().item() - (lo + hi) / 2) < 5 * (hi - lo) / math.sqrt(12 * n)
    assert cams.azimuth.max() < 180.0
    # the matrices put each camera at its (elevation, azimuth, distance), looking at the origin
    pos = camera_position(cams.elevation, cams.azimuth, cams.distance)
    torch.testing.assert_close(cams.c2w[:, :3, 3], pos, atol=1e-5, rtol=0)
    torch.testing.assert_close(cams.position, pos, atol=1e-5, rtol=0)
    _assert_rotation(cams.c2w)
    # and equal look_at's matrices (its twin) away from the poles
    torch.testing.assert_close(cams.c2w, look_at(pos), atol=1e-5, rtol=0)


def test_sample_cameras_is_seeded():
    a = sample_cameras(8, **RANGES, generator=torch.Generator().manual_seed(3))
    b = sample_cameras(8, **RANGES, generator=torch.Generator().manual_seed(3))
    c = sample_cameras(8, **RANGES, generator=torch.Generator().manual_seed(4))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert not torch.equal(a.azimuth, c.azimuth)


def test_sample_cameras_wraps_azimuth():
    cams = sample_cameras(500, (0.0, 0.0), (170.0, 190.0), (2.0, 2.0), (50.0, 50.0),
                          generator=torch.Generator().manual_seed(0))
    assert cams.azimuth.min() >= -180.0 and cams.azimuth.max() < 180.0
    assert ((cams.azimuth >= 170.0) | (cams.azimuth <= -170.0)).all()
    # the camera sits behind the object (-z) whatever the wrap
    assert (cams.c2w[:, 2, 3] <= -2.0 * math.cos(math.radians(10)) + 1e-5).all()


def test_sample_cameras_rejects_bad_range():
    with pytest.raises(ValueError, match="elevation_range"):
        sample_cameras(2, (10.0, -10.0), (-180.0, 180.0), (1.5, 2.0), (40.0, 70.0))


def test_orbit_cameras_closed_form():
    cams = orbit_cameras(8, elevation=15.0, distance=1.75, fovy=55.0)
    torch.testing.assert_close(cams.azimuth, _t(-180, -135, -90, -45, 0, 45, 90, 135))
    torch.testing.assert_close(cams.fovy, torch.full((8,), math.radians(55.0)))
    torch.testing.assert_close(cams.elevation, torch.full((8,), 15.0))
    torch.testing.assert_close(cams.c2w[:, :3, 3], camera_position(cams.elevation, cams.azimuth, cams.distance),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(cams.c2w[4, :3, 3], _t(0, 1.75 * math.sin(math.radians(15)),
                                                      1.75 * math.cos(math.radians(15))), atol=1e-6, rtol=0)
    _assert_rotation(cams.c2w)


def test_orbit_cameras_over_the_pole_keep_azimuth_orientation():
    cams = orbit_cameras(4, elevation=90.0, distance=2.0, fovy=50.0)
    assert torch.isfinite(cams.c2w).all()
    _assert_rotation(cams.c2w)
    # image right is (cos az, 0, -sin az): the view turns with the azimuth instead of snapping
    az = torch.deg2rad(cams.azimuth)
    torch.testing.assert_close(cams.c2w[:, :3, 0], torch.stack([az.cos(), 0 * az, -az.sin()], -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(-cams.c2w[:, :3, 2], _t(0, -1, 0).expand(4, 3), atol=1e-6, rtol=0)


def test_cameras_index_and_to():
    cams = orbit_cameras(5, 10.0, 2.0, 45.0)
    one = cams.index(2)
    assert one.c2w.shape == (1, 4, 4)
    torch.testing.assert_close(one.c2w[0], cams.c2w[2])
    last = cams.index(-1)
    torch.testing.assert_close(last.azimuth, cams.azimuth[-1:])
    torch.testing.assert_close(cams.index(slice(1, 3)).azimuth, cams.azimuth[1:3])
    moved = cams.to("cpu")
    for x, y in zip(moved, cams):
        assert torch.equal(x, y)


# ---------------------------------------------------------------- rays


def test_rays_centre_pixel_on_optical_axis():
    cams = sample_cameras(3, **RANGES, generator=torch.Generator().manual_seed(5))
    h, w = 5, 7
    origins, dirs = generate_rays(cams.c2w, cams.fovy, h, w)
    assert origins.shape == (3, h, w, 3) and dirs.shape == (3, h, w, 3)
    torch.testing.assert_close(dirs[:, h // 2, w // 2], -cams.c2w[:, :3, 2], atol=1e-6, rtol=0)
    torch.testing.assert_close(origins, cams.c2w[:, None, None, :3, 3].expand(3, h, w, 3))
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(3, h, w), atol=1e-6, rtol=0)


def test_rays_edge_pixels_angles():
    fovy = math.radians(60.0)
    h, w = 9, 13
    c2w = look_at(camera_position(_t(20.0), _t(-30.0), _t(2.0)))
    _, dirs = generate_rays(c2w, torch.tensor([fovy]), h, w)
    axis, right, up = -c2w[0, :3, 2], c2w[0, :3, 0], c2w[0, :3, 1]
    half = math.tan(fovy / 2)
    # top-row centre pixel: its centre is half a pixel below the top edge at fovy / 2
    top = dirs[0, 0, w // 2]
    assert math.isclose(torch.acos((top @ axis).clamp(max=1)).item(), math.atan((h - 1) / h * half), abs_tol=1e-5)
    assert top @ up > 0 and abs(top @ right) < 1e-6  # row 0 is the top of the image
    # left-column middle pixel: square pixels, so the horizontal extent is (w / h) tan(fovy / 2)
    left = dirs[0, h // 2, 0]
    assert math.isclose(torch.acos((left @ axis).clamp(max=1)).item(), math.atan((w - 1) / h * half), abs_tol=1e-5)
    assert left @ right < 0 and abs(left @ up) < 1e-6


def test_rays_project_back_to_pixel_centres():
    h, w = 6, 10  # even sizes: no pixel on the axis, centres at half-integers
    cams = sample_cameras(2, **RANGES, generator=torch.Generator().manual_seed(7))
    _, dirs = generate_rays(cams.c2w, cams.fovy, h, w)
    d_cam = torch.einsum("bkc,bhwk->bhwc", cams.c2w[:, :3, :3], dirs)  # R^T d
    focal = (0.5 * h / torch.tan(0.5 * cams.fovy))[:, None, None]
    u = focal * d_cam[..., 0] / -d_cam[..., 2] + w / 2  # pinhole projection, x right
    v = h / 2 - focal * d_cam[..., 1] / -d_cam[..., 2]  # y up, rows go down
    jj, ii = torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy")
    torch.testing.assert_close(u, (jj + 0.5).float().expand(2, h, w), atol=1e-4, rtol=0)
    torch.testing.assert_close(v, (ii + 0.5).float().expand(2, h, w), atol=1e-4, rtol=0)


def test_rays_accept_float_fovy_and_check_shapes():
    c2w = look_at(camera_position(_t(0.0), _t(0.0), _t(2.0)))
    _, a = generate_rays(c2w, 0.7, 3, 3)
    _, b = generate_rays(c2w, torch.tensor([0.7]), 3, 3)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"c2w must be \[B, 4, 4\], got \(4, 4\)"):
        generate_rays(c2w[0], 0.7, 3, 3)
    with pytest.raises(ValueError, match="fovy must be"):
        generate_rays(c2w, torch.tensor([0.7, 0.8]), 3, 3)


def test_group_cameras_are_orthogonal_views_of_one_draw():
    """MVDream's groups: four views 90 degrees apart in azimuth, one elevation / distance / fovy per group; the
    positions of a group are the first one's rotated about the up axis (y) by 90 degrees each."""
    from render.cameras import group_cameras

    base = sample_cameras(3, **RANGES, generator=torch.Generator().manual_seed(1))
    groups = group_cameras(base, 4)
    assert groups.c2w.shape == (12, 4, 4)
    for g in range(3):
        views = groups.index(slice(4 * g, 4 * g + 4))
        for k in range(4):
            assert torch.allclose(views.elevation[k], base.elevation[g])
            assert torch.allclose(views.distance[k], base.distance[g]) and torch.allclose(views.fovy[k], base.fovy[g])
            angle = math.radians(90.0 * k)  # azimuth grows from +z towards +x: rotation about +y
            rot = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
            assert torch.allclose(views.position[k], rot @ base.position[g], atol=1e-5)
        assert torch.allclose(views.c2w[0], base.c2w[g], atol=1e-6)


def test_random_cameras_sample_groups_from_config():
    from dreamfusion.config import load_config
    from dreamfusion.train.cameras import RandomCameras
    from dreamfusion.errors import ConfigError

    plain = "guidance.view_dependent=false"  # the multi-view prior reads plain prompts (it refuses view words)
    cfg = load_config("demo", ["camera.batch_size=8", "camera.n_views=4", plain])
    cams, _ = RandomCameras(cfg.camera, cfg.render, torch.Generator().manual_seed(0), torch.device("cpu")).sample(0)
    assert cams.c2w.shape[0] == 8
    spacing = torch.remainder(cams.azimuth.view(2, 4)[:, 1:] - cams.azimuth.view(2, 4)[:, :-1], 360.0)
    assert torch.allclose(spacing, torch.full_like(spacing, 90.0), atol=1e-4)
    assert not torch.allclose(cams.elevation[0], cams.elevation[4])
    with pytest.raises(ConfigError, match="multiple of camera.n_views"):
        load_config("demo", ["camera.batch_size=6", "camera.n_views=4", plain])


def _nearest_view(cams, views):
    """For each camera, the index of the closest of ``views`` and how far its camera-to-world matrix lies from it."""
    gap = (cams.c2w[:, None] - views.c2w[None]).abs().flatten(2).amax(-1)  # [B, V]
    return gap.argmin(1), gap.amin(1)


def test_snapped_training_cameras_are_the_priors_own_views(tmp_path):
    """camera.snap_to_prior: every training camera the trainer draws is one of the embedded prior's dataset
    views (the cameras its images were rendered from, so a render is registered with the prior's image of it),
    drawn uniformly; without the flag the cameras come from the camera.* ranges and miss them."""
    from dreamfusion.config import load_config
    from dreamfusion.guidance.models.prior import EmbeddedPrior
    from dreamfusion.train.trainer import Trainer

    settings = ["guidance.prior.views=16", "camera.batch_size=2", "camera.elevation_range=[-30,60]"]
    cfg = load_config("demo", [*settings, "camera.snap_to_prior=true"])
    prior = EmbeddedPrior(cfg.camera, cfg.guidance.prior, cfg.render.background, "cpu")
    trainer = Trainer(cfg, tmp_path, torch.device("cpu"))
    seen = []
    for step in range(120):
        cams, _ = trainer.cameras.sample(step)
        assert cams.c2w.shape[0] == 2
        which, gap = _nearest_view(cams, prior._cams)
        assert float(gap.max()) < 1e-6  # exactly a dataset view
        assert torch.equal(cams.fovy, prior._cams.fovy[which]) and torch.equal(cams.azimuth, prior._cams.azimuth[which])
        seen.append(which)
    counts = torch.bincount(torch.cat(seen), minlength=16)
    assert int((counts > 0).sum()) == 16 and int(counts.max()) < 3 * 240 / 16  # all of them, none favoured
    free = Trainer(load_config("demo", settings), tmp_path, torch.device("cpu"))
    _, gap = _nearest_view(free.cameras.sample(0)[0], prior._cams)
    assert float(gap.min()) > 1e-3


@pytest.mark.parametrize("settings, message", [
    (["guidance.model_type=stable_diffusion"], "use it with guidance.model_type=prior"),
    (["camera.n_views=4", "camera.batch_size=4", "guidance.view_dependent=false"], "set camera.n_views=1"),
])
def test_snapped_cameras_refuse_what_has_no_single_prior_view(settings, message):
    from dreamfusion.config import load_config
    from dreamfusion.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as info:
        load_config("demo", ["camera.snap_to_prior=true", *settings])
    assert "\n" not in str(info.value)
