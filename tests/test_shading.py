"""DreamFusion shading: rgb = albedo * (ambient + (1 - ambient) * max(0, n . l))."""

from __future__ import annotations

import math

import pytest
import torch

from dreamfusion.fields import Field

from render.shading import random_light_dirs, shade


def _t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_lambertian_closed_form():
    angles = [0.0, 30.0, 60.0, 89.0, 90.0, 120.0, 180.0]  # light angle from the normal, degrees
    n = len(angles)
    normal = _t(0, 0, 1).expand(n, 3)
    light = torch.stack([_t(math.sin(math.radians(a)), 0.0, math.cos(math.radians(a))) for a in angles])
    albedo = torch.rand(n, 3, generator=torch.Generator().manual_seed(0))
    ambient = 0.2
    rgb = shade(albedo, normal, "lambertian", light, ambient)
    cos = torch.tensor([max(0.0, math.cos(math.radians(a))) for a in angles])
    torch.testing.assert_close(rgb, albedo * (ambient + (1 - ambient) * cos)[:, None], atol=1e-6, rtol=0)
    # back-lit points get the ambient light only
    torch.testing.assert_close(rgb[-3:], ambient * albedo[-3:], atol=1e-6, rtol=0)


def test_textureless_is_lambertian_with_white_albedo():
    g = torch.Generator().manual_seed(1)
    normal, light = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)
    albedo = torch.rand(50, 3, generator=g)
    torch.testing.assert_close(shade(albedo, normal, "textureless", light, 0.1),
                               shade(torch.ones(50, 3), normal, "lambertian", light, 0.1), atol=0, rtol=0)


def test_albedo_mode_is_identity_and_needs_no_normal():
    albedo = torch.rand(4, 3)
    assert torch.equal(shade(albedo, None, "albedo", None, 0.1), albedo)


def test_shading_stays_between_ambient_and_full_albedo():
    g = torch.Generator().manual_seed(2)
    normal, light = torch.randn(1000, 3, generator=g), torch.randn(1000, 3, generator=g)
    albedo = torch.rand(1000, 3, generator=g)
    for ambient in (0.0, 0.1, 0.5, 1.0):
        rgb = shade(albedo, normal, "lambertian", light, ambient)
        assert (rgb >= ambient * albedo - 1e-6).all() and (rgb <= albedo + 1e-6).all()
    # ambient 1 is flat albedo
    torch.testing.assert_close(shade(albedo, normal, "lambertian", light, 1.0), albedo, atol=1e-6, rtol=0)


def test_normal_and_light_are_normalised_and_broadcast():
    albedo = torch.rand(3, 3, generator=torch.Generator().manual_seed(3))
    normal = _t([0, 0.3, 0], [0, 0, 2.0], [0, 0, 0])  # premultiplied-style lengths; a zero normal
    light = _t(0, 5.0, 5.0)  # [3], 45 degrees between +y and +z
    rgb = shade(albedo, normal, "lambertian", light, 0.25)
    c = math.cos(math.radians(45))
    expected = albedo * torch.tensor([0.25 + 0.75 * c, 0.25 + 0.75 * c, 0.25])[:, None]
    torch.testing.assert_close(rgb, expected, atol=1e-6, rtol=0)
    # image-shaped inputs with one light per view
    img_albedo = albedo.reshape(1, 1, 3, 3).expand(2, 4, 3, 3)
    img_normal = normal.reshape(1, 1, 3, 3).expand(2, 4, 3, 3)
    per_view = light.reshape(1, 1, 1, 3).expand(2, 1, 1, 3)
    torch.testing.assert_close(shade(img_albedo, img_normal, "lambertian", per_view, 0.25),
                               expected.expand(2, 4, 3, 3), atol=1e-6, rtol=0)


def test_shade_errors_are_specific():
    albedo, normal, light = torch.rand(2, 3), torch.rand(2, 3), torch.rand(2, 3)
    with pytest.raises(ValueError, match="unknown shading mode 'phong': choose one of albedo, lambertian, textureless"):
        shade(albedo, normal, "phong", light, 0.1)
    with pytest.raises(ValueError, match="'lambertian' needs normals"):
        shade(albedo, None, "lambertian", light, 0.1)
    with pytest.raises(ValueError, match="'textureless' needs light_dir"):
        shade(albedo, normal, "textureless", None, 0.1)
    with pytest.raises(ValueError, match=r"ambient must be in \[0, 1\], got 1.5"):
        shade(albedo, normal, "lambertian", light, 1.5)
    with pytest.raises(ValueError, match="normal must match albedo"):
        shade(albedo, normal[:1], "lambertian", light, 0.1)


def test_shading_gradients_reach_normals():
    normal = _t(0.0, 0.0, 1.0)[None].requires_grad_(True)
    theta = math.radians(30)
    light = _t(math.sin(theta), 0.0, math.cos(theta))[None]
    rgb = shade(torch.ones(1, 3), normal, "lambertian", light, 0.0)
    rgb.sum().backward()
    # rgb = 3 (n/|n|) . l; d/dn at unit n = 3 (l - (n . l) n)
    expected = 3 * (light - math.cos(theta) * _t(0, 0, 1))
    torch.testing.assert_close(normal.grad, expected, atol=1e-6, rtol=0)


def test_random_light_dirs():
    cams = _t([0, 0, 2.0], [1.5, 0, 0], [0, -3.0, 0.1])
    a = random_light_dirs(cams, torch.Generator().manual_seed(0))
    b = random_light_dirs(cams, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3), atol=1e-6, rtol=0)
    # no noise: exactly the camera direction
    torch.testing.assert_close(random_light_dirs(cams, std=0.0), cams / cams.norm(dim=-1, keepdim=True))
    # isotropic noise: the mean light direction is parallel to the camera direction (symmetry); with
    # 20k draws the mean's transverse error is ~0.3 / sqrt(20k) ~ 0.002, allow 5x
    cam = _t(0.3, 1.0, -2.0)
    many = random_light_dirs(cam.expand(20_000, 3), torch.Generator().manual_seed(1))
    mean = many.mean(0)
    angle = torch.acos((mean / mean.norm()) @ (cam / cam.norm())).item()
    assert angle < 0.01


# --- render_views: deferred shading of the composited albedo, in closed form --------------------------

class _PlaneField(Field):
    """density = scale exp(-n . p): -grad(density) is parallel to n everywhere, so every sample's unit normal is
    n and the composited normal is opacity * n; the albedo is one colour."""

    bound = 1.0

    def __init__(self, normal, colour, scale=3.0):
        super().__init__()
        self.n, self.colour, self.scale = normal, colour, scale

    def forward(self, points):
        return {"density": self.scale * torch.exp(-(points @ self.n)), "albedo": self.colour.expand(len(points), 3)}


@pytest.mark.parametrize("mode", ["albedo", "lambertian", "textureless"])
def test_render_views_shading_closed_form(mode):
    from dreamfusion.renderer import render_views
    from render.cameras import orbit_cameras

    n = _t(1.0, 2.0, 2.0) / 3.0
    t = _t(2.0, -1.0, 0.0) / math.sqrt(5.0)  # unit, perpendicular to n
    colour = _t(0.8, 0.4, 0.2)
    # one light per view, at 0, 60 and 120 degrees from n: n . l = 1, 0.5 and -0.5 (back-lit: ambient only)
    angles = [0.0, 60.0, 120.0]
    lights = torch.stack([math.cos(math.radians(a)) * n + math.sin(math.radians(a)) * t for a in angles])
    ambient = 0.2
    field = _PlaneField(n, colour)
    cams = orbit_cameras(3, 20.0, 3.0, 40.0)
    out = render_views(field, None, cams, 8, 8, n_samples=32, shading=mode, light_dirs=lights, ambient=ambient,
                       background_kind="white")
    opacity = out["opacity"]  # [3, 8, 8, 1]
    assert (opacity > 0.5).float().mean() > 0.5  # most rays cross the dense slab: the check below is not vacuous
    if mode == "albedo":
        assert out["normal"] is None  # not rendered unless shading or need_normals asks for it
    else:
        hit = opacity[..., 0] > 1e-3
        torch.testing.assert_close(out["normal"][hit] / opacity[hit], n.expand(int(hit.sum()), 3), atol=1e-5, rtol=0)
    light = torch.tensor([ambient + (1 - ambient) * max(0.0, math.cos(math.radians(a))) for a in angles])
    light = light.view(3, 1, 1, 1) if mode != "albedo" else torch.ones(3, 1, 1, 1)
    base = torch.ones(3) if mode == "textureless" else colour
    expected = opacity * base * light + (1 - opacity) * 1.0  # white background
    torch.testing.assert_close(out["rgb"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["albedo"], opacity * colour, atol=1e-6, rtol=0)  # albedo stays unlit
