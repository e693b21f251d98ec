"""Splat files: the standard 3DGS .ply (round trip, header, property order) and antimatter15's .splat layout."""

from __future__ import annotations

import struct

import pytest
import torch

from render.cameras import orbit_cameras

from dreamfusion.config import FieldConfig, GaussianConfig
from dreamfusion.fields import build_field
from dreamfusion.fields.gaussian import GaussianField
from dreamfusion.renderer import render_views


def _field(count: int = 200, **kw) -> GaussianField:
    torch.manual_seed(0)
    return build_field(FieldConfig(type="gaussian", gaussian=GaussianConfig(count=count, **kw)))


# -- .ply / .splat -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sh_degree", [0, 1])
def test_ply_round_trip_header_and_order(tmp_path, sh_degree):
    from dreamfusion.export.ply import read_ply, write_ply

    field = _field(count=7, sh_degree=sh_degree)
    with torch.no_grad():
        for p in field.parameters():
            p.copy_(torch.randn_like(p))
    path = write_ply(tmp_path / "splats.ply", field)
    raw = path.read_bytes()
    header = raw[:raw.index(b"end_header\n") + len(b"end_header\n")].decode("ascii")
    rest = [f"f_rest_{i}" for i in range(3 * ((sh_degree + 1) ** 2 - 1))]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert header == ("ply\nformat binary_little_endian 1.0\nelement vertex 7\n"
                      + "".join(f"property float {n}\n" for n in names) + "end_header\n")
    assert len(raw) == len(header) + 7 * 4 * len(names)
    row0 = struct.unpack(f"<{len(names)}f", raw[len(header):len(header) + 4 * len(names)])
    assert row0[:3] == pytest.approx(field.means[0].tolist()) and row0[3:6] == (0.0, 0.0, 0.0)
    assert row0[-4:] == pytest.approx(field.quats[0].tolist())
    back = read_ply(path)
    torch.testing.assert_close(back["means"], field.means.detach())
    torch.testing.assert_close(back["log_scales"], field.log_scales.detach())
    torch.testing.assert_close(back["quats"], field.quats.detach())
    torch.testing.assert_close(back["opacity_logits"], field.opacity_logits.detach())
    torch.testing.assert_close(back["sh_dc"], field.sh_dc.detach())
    if sh_degree:
        torch.testing.assert_close(back["sh_rest"], field.sh_rest.detach())
    # a field loaded from the .ply renders like the original
    fresh = _field(count=2, sh_degree=sh_degree)
    fresh.load_state_dict(back)
    cams = orbit_cameras(1, 10.0, 2.0, 50.0)
    with torch.no_grad():
        torch.testing.assert_close(render_views(fresh, None, cams, 8, 8)["rgb"],
                                   render_views(field, None, cams, 8, 8)["rgb"])


def test_splat_file_layout(tmp_path):
    from dreamfusion.export.ply import write_splat

    field = _field(count=3)
    with torch.no_grad():
        field.log_scales.uniform_(-4, -2)
        field.opacity_logits.uniform_(-2, 2)
        field.sh_dc.uniform_(-1, 1)
        field.quats.copy_(torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, -0.5, 0.5], [0.0, 0.6, 0.0, -0.8]]))
    path = write_splat(tmp_path / "a.splat", field)
    raw = path.read_bytes()
    assert len(raw) == 3 * 32
    opacity = torch.sigmoid(field.opacity_logits).detach().double()
    order = torch.argsort(-(field.scales.detach().double().prod(-1) * opacity))  # largest first
    expected_q = {0: (255, 128, 128, 128), 1: (192, 192, 64, 192), 2: (128, 205, 128, 26)}
    for row, i in enumerate(order.tolist()):
        rec = raw[32 * row:32 * (row + 1)]
        x, y, z, s0, s1, s2 = struct.unpack("<6f", rec[:24])
        assert (x, y, z) == pytest.approx(field.means[i].tolist())
        assert (s0, s1, s2) == pytest.approx(field.scales[i].tolist(), rel=1e-6)
        colour = (0.5 + 0.28209479177387814 * field.sh_dc[i].detach().double()).clamp(0, 1) * 255
        assert tuple(rec[24:27]) == tuple(round(float(c)) for c in colour)
        assert rec[27] == round(float(opacity[i]) * 255)
        assert tuple(rec[28:32]) == expected_q[i]
