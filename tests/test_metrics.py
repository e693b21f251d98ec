"""The measurement oracles of dreamfusion/world/scores.py, against analytic shapes.

Oracles: boxes whose faces lie on grid-cell boundaries (the cell-centre count is then exact, so the IoU is
the exact volume ratio), an icosphere against the exact volume of the polyhedron and against a
concentric ball (IoU = (r / R)^3), trimesh's own ray-cast containment, and area-weighted colours of
triangles with known areas.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from dreamfusion.world.primitives import COLOURS
from dreamfusion.world.scores import grid_points, mean_surface_albedo, mesh_occupancy, surface_scores, volumetric_iou


def _box(lo, hi) -> trimesh.Trimesh:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return trimesh.creation.box(bounds=np.stack([lo, hi]))


def _inside_box(lo, hi):
    lo, hi = torch.tensor(lo), torch.tensor(hi)
    return lambda p: ((p >= lo) & (p <= hi)).all(-1)


def _iou(mesh, inside_fn, resolution=96):
    return volumetric_iou(np.asarray(mesh.vertices), np.asarray(mesh.faces), inside_fn, resolution)


def test_grid_points_are_cell_centres_x_slowest():
    pts = grid_points(4, 1.0)
    assert pts.shape == (64, 3)
    np.testing.assert_allclose(pts[0], [-0.75, -0.75, -0.75])
    np.testing.assert_allclose(pts[1], [-0.75, -0.75, -0.25])  # z fastest
    np.testing.assert_allclose(pts[16], [-0.25, -0.75, -0.75])  # x slowest


def test_box_against_itself_and_a_shifted_box_on_cell_boundaries():
    # resolution 96 over [-1, 1]: cells 1/48 wide, so +-0.5 and a 0.25 shift fall on cell boundaries
    lo, hi = (-0.5, -0.5, -0.5), (0.5, 0.5, 0.5)
    box = _box(lo, hi)
    assert _iou(box, _inside_box(lo, hi)) == 1.0
    # shifted by 0.25 in x: overlap 0.75, union 1.25 -> 0.6 exactly
    assert _iou(box, _inside_box((-0.25, -0.5, -0.5), (0.75, 0.5, 0.5))) == pytest.approx(0.6, abs=1e-12)
    # shifted in x and z: overlap 0.75 * 0.75 = 0.5625, union 2 - 0.5625
    assert _iou(box, _inside_box((-0.25, -0.5, -0.75), (0.75, 0.5, 0.25))) == pytest.approx(0.5625 / 1.4375,
                                                                                           abs=1e-12)
    # disjoint: 0
    assert _iou(box, _inside_box((0.6, 0.6, 0.6), (0.9, 0.9, 0.9))) == 0.0


def test_box_off_the_grid_is_close_to_the_exact_ratio():
    # a 0.2 shift is 9.6 cells: the ratio is no longer exact, but within a cell layer of it
    box = _box((-0.5, -0.4, -0.3), (0.5, 0.4, 0.3))
    iou = _iou(box, _inside_box((-0.3, -0.4, -0.3), (0.7, 0.4, 0.3)))
    exact = 0.8 / 1.2
    assert iou == pytest.approx(exact, abs=0.5 * 2 / 96 / 0.8)  # half a cell of the 0.8 overlap length


def test_icosphere_fills_its_exact_volume_and_a_concentric_ball_gives_the_radius_cubed():
    radius = 0.8
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    everything = lambda p: torch.ones(p.shape[0], dtype=torch.bool)
    # IoU against the whole cube = the fraction of the cube inside the polyhedron
    assert _iou(sphere, everything) == pytest.approx(sphere.volume / 8.0, rel=0.01)
    assert sphere.volume == pytest.approx(4 / 3 * math.pi * radius ** 3, rel=0.01)  # the polyhedron is a ball
    # a concentric ball of radius r inside it: IoU = (r / R)^3
    r = 0.5
    ball = lambda p: p.norm(dim=-1) <= r
    assert _iou(sphere, ball) == pytest.approx((r / radius) ** 3 * (4 / 3 * math.pi * radius ** 3) / sphere.volume,
                                               rel=0.02)


def test_mesh_occupancy_of_a_torus_differs_from_the_analytic_one_only_at_the_polygons_sag():
    big, small, sections = 0.55, 0.25, 32
    mesh = trimesh.creation.torus(major_radius=big, minor_radius=small, major_sections=sections,
                                  minor_sections=sections)  # not convex, with a hole; vertices on the torus
    res = 64
    occ = mesh_occupancy(np.asarray(mesh.vertices), np.asarray(mesh.faces), res, 1.0).reshape(-1)
    p = grid_points(res, 1.0)
    distance = np.sqrt((np.hypot(p[:, 0], p[:, 1]) - big) ** 2 + p[:, 2] ** 2) - small  # signed, to the torus
    sag = (big + small + small) * (1 - math.cos(math.pi / sections))  # chords of the ring and of the tube
    assert np.array_equal(occ[np.abs(distance) > sag], (distance < 0)[np.abs(distance) > sag])
    assert occ.sum() == pytest.approx((distance < 0).sum(), rel=0.02)  # and the count near the surface splits


def test_mean_surface_albedo_of_vertex_colours_is_area_weighted():
    # two separate triangles: areas 0.5 and 2, all-red and all-blue vertices
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 1], [0, 2, 1]], dtype=float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    colours = np.array([[255, 0, 0, 255]] * 3 + [[0, 0, 255, 255]] * 3, dtype=np.uint8)
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=colours, process=False)
    np.testing.assert_allclose(mean_surface_albedo(mesh), [0.5 / 2.5, 0.0, 2.0 / 2.5], atol=1e-12)


def test_mean_surface_albedo_of_a_texture_is_the_texel_colour():
    colour = (200, 120, 40)
    image = Image.new("RGB", (8, 8), colour)
    mesh = _box((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    uv = np.random.default_rng(0).uniform(0.1, 0.9, (len(mesh.vertices), 2))
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    np.testing.assert_allclose(mean_surface_albedo(mesh), np.array(colour) / 255.0, atol=1e-12)


def test_surface_scores_closed_forms():
    """The refine stage's surface measures: the cube's own mesh lies on it (0 degrees, 0 distance); inward faces
    are 180 degrees off; a concentric sphere of radius 0.7 is 0.1 from the prior's 0.6 sphere everywhere, its
    normals the true ones up to the facets' tilt."""
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    assert surface_scores(box.vertices, box.faces, "cube") == pytest.approx({"normal_deg": 0.0, "surface_dist": 0.0},
                                                                            abs=1e-9)
    inward = surface_scores(box.vertices, box.faces[:, ::-1], "cube")
    assert inward["normal_deg"] == pytest.approx(180.0, abs=1e-6)
    ball = trimesh.creation.icosphere(subdivisions=5, radius=0.7)
    out = surface_scores(ball.vertices, ball.faces, "sphere")
    assert out["surface_dist"] == pytest.approx(0.1, abs=1e-3) and out["normal_deg"] < 1.0


def _side_textured_cube(column_share):
    """A unit cube of 12 triangles (each side face one quad) whose texture runs along z: u = z + 0.5 on the x = +-0.5
    faces; column i of a 400 x 4 image has the front share column_share(u) between white and red."""
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    u = (np.arange(400) + 0.5) / 400
    share = np.clip(column_share(u), 0, 1)[None, :, None]
    white, red = np.array(COLOURS["white"]), np.array(COLOURS["red"])  # the scorer's own: share 0 and 1
    image = Image.fromarray(np.round(255 * (white + share * (red - white))).repeat(4, 0).astype(np.uint8))
    uv = np.stack([box.vertices[:, 2] + 0.5, np.full(len(box.vertices), 0.5)], 1)
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    return box


def test_front_edge_width_reads_the_colour_inside_large_faces():
    """benchmarks/refine_bed.py front_edge_width samples colours on the surface: a sharp change at z = 0.25 in the
    middle of a face spanning the whole side is one bin (0.025) wide, a linear ramp over z in [0.15, 0.35] is the
    distance between its 0.1 and 0.9 points' bins (0.15 +- a bin); per-face mean colours would see neither."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "refine_bed.py"
    spec = importlib.util.spec_from_file_location("refine_bed_script", script)
    bed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bed)
    front_edge_width = bed.front_edge_width

    sharp = _side_textured_cube(lambda u: (u >= 0.75).astype(float))
    assert front_edge_width(sharp, "white", "red") == pytest.approx(0.025, abs=1e-9)
    ramp = _side_textured_cube(lambda u: (u - 0.65) / 0.2)
    assert 0.125 - 1e-9 <= front_edge_width(ramp, "white", "red") <= 0.175 + 1e-9
    # the interpolated reading: 0.8 of the ramp's width (0.16), the sharp change within a bin of 0.0125
    assert bed.front_edge_ramp(ramp, "white", "red") == pytest.approx(0.16, abs=0.005)
    assert bed.front_edge_ramp(sharp, "white", "red") <= 0.0125
