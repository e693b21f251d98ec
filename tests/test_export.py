"""dreamfusion.export: marching cubes on analytic fields, texture bake, .obj / .glb round trips, video.

Oracles: closed-form spheres (the level set of a radial field is a sphere of known radius), trimesh's
own loaders and a raw GLB reader written here, the Khronos glTF validator, and imageio reading back.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from conftest import GLTF_INSTALL, import_oracle, require_oracle
from dreamfusion.errors import UserError
from dreamfusion.export import (optical_depth, bake_texture, colorize_depth, density_grid, extract_mesh,
                                normals_to_rgb, stack_panels, vertex_colors, write_glb, write_obj, write_video)

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT / "tools" / "gltf-validator"

LO, HI = 0.01, 50.0   # density outside / inside the test spheres
RADIUS = 0.5
SOFT = 0.02           # width of the smooth sphere's transition


def smooth_sphere(points: torch.Tensor, centre=(0.0, 0.0, 0.0), radius: float = RADIUS) -> torch.Tensor:
    """log density = log LO + (log HI - log LO) * sigmoid((radius - |p - c|) / SOFT): LO outside, HI inside."""
    r = (points - torch.tensor(centre)).norm(dim=-1)
    return _blend(torch.sigmoid((radius - r) / SOFT))


def _blend(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(math.log(LO) + (math.log(HI) - math.log(LO)) * x)


def level_radius(threshold: float, radius: float = RADIUS) -> float:
    """Closed form: the radius where smooth_sphere equals threshold (inverse of the sigmoid)."""
    frac = (math.log(threshold) - math.log(LO)) / (math.log(HI) - math.log(LO))
    return radius - SOFT * math.log(frac / (1.0 - frac))


def step_sphere(points: torch.Tensor) -> torch.Tensor:
    return torch.where(points.norm(dim=-1) < RADIUS, torch.tensor(HI), torch.tensor(LO))


def red_blue(points: torch.Tensor) -> torch.Tensor:
    """Albedo: red where x > 0, blue where x <= 0."""
    return torch.where(points[:, :1] > 0, torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))


def signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    v = v.astype(np.float64)
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6.0)


# ---------------------------------------------------------------------------------------- mesh
def test_density_grid_samples_vertices_spanning_the_box():
    # density = (x + 2) + 10 (y + 2) + 100 (z + 2) identifies every sample's coordinates exactly.
    fn = lambda p: (p[:, 0] + 2) + 10 * (p[:, 1] + 2) + 100 * (p[:, 2] + 2)
    bound, r = 0.75, 9
    grid = density_grid(fn, bound, r, chunk=50, device="cpu")  # chunk smaller than R^3 and not dividing it
    axis = np.linspace(-bound, bound, r)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    np.testing.assert_allclose(grid, (x + 2) + 10 * (y + 2) + 100 * (z + 2), rtol=1e-6)


def test_optical_depth_of_constant_density_is_sigma_times_distance_to_nearest_face():
    r, h, sigma = 9, 0.25, 2.0
    tau = optical_depth(np.full((r, r, r), sigma), h)
    i = np.arange(r)
    edge = np.minimum(i, r - 1 - i)  # grid steps to the nearer face along one axis
    nearest = np.minimum(np.minimum(edge[:, None, None], edge[None, :, None]), edge[None, None, :])
    np.testing.assert_allclose(tau, sigma * h * nearest, atol=1e-12)


def test_step_sphere_auto_surface_within_two_voxels():
    bound, res = 1.0, 64
    h = 2 * bound / (res - 1)
    v, f = extract_mesh(step_sphere, bound, res, device="cpu")  # automatic level
    radius = np.linalg.norm(v, axis=1)
    assert np.all(np.abs(radius - RADIUS) <= 2 * h)
    np.testing.assert_allclose(v.min(axis=0), -RADIUS, atol=2 * h)
    np.testing.assert_allclose(v.max(axis=0), RADIUS, atol=2 * h)


def test_auto_level_carves_away_a_uniform_fog():
    # Fog of density 0.2 fills the box: its optical depth from the faces to the sphere is 0.2 * 0.5 = 0.1,
    # below the automatic level, so the mesh is the sphere alone (a density threshold below 0.2 would
    # return the whole box).
    bound, res = 1.0, 48
    h = 2 * bound / (res - 1)
    foggy = lambda p: step_sphere(p) + 0.2
    v, f = extract_mesh(foggy, bound, res, device="cpu")
    np.testing.assert_allclose(v.min(axis=0), -RADIUS, atol=2 * h)
    np.testing.assert_allclose(v.max(axis=0), RADIUS, atol=2 * h)
    # A step density puts the surface within half a voxel of the radius: volume within 3 (h/2) / r.
    assert signed_volume(v, f) == pytest.approx(4 / 3 * math.pi * RADIUS ** 3, rel=3 * (h / 2) / RADIUS)


@pytest.fixture(scope="module")
def sphere():
    """Smooth sphere at 48^3 with an explicit threshold: (vertices, faces, threshold, voxel size)."""
    bound, res, t = 1.0, 48, 1.0
    v, f = extract_mesh(smooth_sphere, bound, res, threshold=t, device="cpu")
    return v, f, t, 2 * bound / (res - 1)


def test_smooth_sphere_radius_volume_and_outward_winding(sphere):
    v, f, t, h = sphere
    assert v.dtype == np.float32 and f.dtype == np.int64
    assert LO < t < HI
    r_star = level_radius(t)  # where the surface must be for this threshold
    assert abs(r_star - RADIUS) < h
    assert np.abs(np.linalg.norm(v, axis=1) - r_star).max() < 0.1 * h
    np.testing.assert_allclose(v.min(axis=0), -RADIUS, atol=h)
    np.testing.assert_allclose(v.max(axis=0), RADIUS, atol=h)
    vol = signed_volume(v, f)
    assert vol == pytest.approx(4 / 3 * math.pi * r_star ** 3, rel=0.01)
    assert vol == pytest.approx(4 / 3 * math.pi * RADIUS ** 3, rel=0.05)
    # Outward: every face normal points away from the centre of this star-shaped surface.
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    assert np.all(np.einsum("ij,ij->i", np.cross(b - a, c - a), a + b + c) > 0)
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent


def test_floater_is_dropped_and_kept_without_the_filter():
    floater = (0.75, 0.75, 0.75)
    fn = lambda p: _blend(torch.maximum(torch.sigmoid((RADIUS - p.norm(dim=-1)) / SOFT),
                                        torch.sigmoid((0.08 - (p - torch.tensor(floater)).norm(dim=-1)) / SOFT)))
    alone_v, alone_f = extract_mesh(smooth_sphere, 1.0, 48, threshold=1.0, device="cpu")
    v, f = extract_mesh(fn, 1.0, 48, threshold=1.0, device="cpu")
    assert len(f) == len(alone_f)  # exactly the main sphere's faces are left
    np.testing.assert_allclose(np.sort(v, axis=0), np.sort(alone_v, axis=0), atol=1e-6)
    v_all, f_all = extract_mesh(fn, 1.0, 48, threshold=1.0, min_component_ratio=0.0, device="cpu")
    near = np.linalg.norm(v_all - np.array(floater), axis=1) < 0.2
    assert near.any() and len(f_all) > len(f)


def test_field_touching_the_box_gives_a_closed_mesh_on_the_box():
    big = lambda p: smooth_sphere(p, radius=2.0)  # dense over the whole [-1, 1]^3 box (corners at 1.73)
    v, f = extract_mesh(big, 1.0, 16, threshold=1.0, device="cpu")
    np.testing.assert_array_equal(v.min(axis=0), -1.0)
    np.testing.assert_array_equal(v.max(axis=0), 1.0)
    assert signed_volume(v, f) == pytest.approx(8.0, rel=1e-6)  # the cube itself
    assert trimesh.Trimesh(v, f, process=False).is_watertight


@pytest.mark.parametrize("threshold", [None, 100.0])
def test_empty_field_raises_one_line_user_error(threshold):
    fn = (lambda p: torch.full(p.shape[:1], LO)) if threshold is None else smooth_sphere
    with pytest.raises(UserError, match=r"the field is empty at threshold .*export\.threshold=") as info:
        extract_mesh(fn, 1.0, 16, threshold=threshold, device="cpu")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fn, threshold, message", [
    (lambda p: torch.full(p.shape[:1], float("nan")), None, "NaN or infinite at 4096 of 4096 grid points"),
    (smooth_sphere, 0.0, "export.threshold must be a density > 0"),
])
def test_broken_field_or_threshold_is_a_one_line_user_error(fn, threshold, message):
    with pytest.raises(UserError, match=message) as info:
        extract_mesh(fn, 1.0, 16, threshold=threshold, device="cpu")
    assert "\n" not in str(info.value)


def test_decimation_without_fast_simplification_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "fast_simplification", None)  # import now raises ImportError
    with pytest.raises(UserError, match="pip install fast-simplification") as info:
        extract_mesh(smooth_sphere, 1.0, 24, decimate_faces=200, device="cpu")
    assert "\n" not in str(info.value)


def test_decimation_reaches_the_target_and_keeps_the_shape(sphere):
    import_oracle("fast_simplification", "pip install fast-simplification (the dev extra)")
    _, full_f, t, _ = sphere
    v, f = extract_mesh(smooth_sphere, 1.0, 48, threshold=t, decimate_faces=1000, device="cpu")  # the fixture's level
    assert len(f) <= 1000 < len(full_f)
    assert signed_volume(v, f) == pytest.approx(4 / 3 * math.pi * level_radius(t) ** 3, rel=0.03)


# ---------------------------------------------------------------------------------------- texture + files
def read_glb(path: Path):
    """Minimal GLB reader (glTF 2.0 spec, section 4.4): (json, accessor(i) -> ndarray, image(i) -> ndarray)."""
    data = path.read_bytes()
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2 and length == len(data)
    json_len, json_type = struct.unpack("<II", data[12:20])
    assert json_type == 0x4E4F534A
    doc = json.loads(data[20:20 + json_len])
    bin_len, bin_type = struct.unpack("<II", data[20 + json_len:28 + json_len])
    assert bin_type == 0x004E4942
    blob = data[28 + json_len:28 + json_len + bin_len]

    def view(i):
        bv = doc["bufferViews"][i]
        return blob[bv.get("byteOffset", 0):bv.get("byteOffset", 0) + bv["byteLength"]]

    def accessor(i):
        acc = doc["accessors"][i]
        dtype = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}[acc["componentType"]]
        width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
        assert doc["bufferViews"][acc["bufferView"]].get("byteStride", width * np.dtype(dtype).itemsize) \
            == width * np.dtype(dtype).itemsize
        return np.frombuffer(view(acc["bufferView"]), dtype, acc["count"] * width,
                             acc.get("byteOffset", 0)).reshape(acc["count"], width)

    def image(i):
        return np.asarray(Image.open(io.BytesIO(view(doc["images"][i]["bufferView"]))).convert("RGB"))

    return doc, accessor, image


def sample(texture: np.ndarray, uv: np.ndarray, v_down: bool) -> np.ndarray:
    """Nearest texel at uv; v_down=True is the glTF convention (v = 0 at the top row), else OBJ's."""
    h, w = texture.shape[:2]
    col = np.clip(np.floor(uv[:, 0] * w).astype(int), 0, w - 1)
    rows = uv[:, 1] if v_down else 1.0 - uv[:, 1]
    row = np.clip(np.floor(rows * h).astype(int), 0, h - 1)
    return texture[row, col].astype(int)


def colour_match(vertices, colours, h) -> float:
    """Fraction of vertices away from the x = 0 colour edge whose sampled colour equals red_blue."""
    expected = vertex_colors(vertices, red_blue, device="cpu").astype(int)
    away = np.abs(vertices[:, 0]) > 1.5 * h
    assert away.sum() > 100
    return float((np.abs(colours - expected).max(axis=1) <= 8)[away].mean())


@pytest.fixture(scope="module")
def baked(sphere):
    v, f, _, h = sphere
    return bake_texture(v, f, red_blue, size=256, device="cpu") + (h,)


def test_bake_texture_shapes_and_vertices_on_the_mesh(sphere, baked):
    v, f, _, _ = sphere
    v2, f2, uv, tex, h = baked
    assert tex.shape == (256, 256, 3) and tex.dtype == np.uint8
    assert uv.shape == (len(v2), 2) and f2.shape == f.shape
    assert uv.min() >= 0 and uv.max() <= 1
    # Seam copies only: every baked vertex is one of the input vertices.
    np.testing.assert_array_equal(np.unique(v2, axis=0), np.unique(v, axis=0))
    assert colour_match(v2, sample(tex, uv, v_down=False), h) >= 0.95


def test_textured_obj_round_trip(tmp_path, baked):
    v2, f2, uv, tex, h = baked
    write_obj(tmp_path / "model.obj", v2, f2, uv, tex)
    assert sorted(os.listdir(tmp_path)) == ["model.mtl", "model.obj", "model_albedo.png"]  # no temp files
    assert "map_Kd model_albedo.png" in (tmp_path / "model.mtl").read_text()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "model_albedo.png")), tex)
    mesh = trimesh.load(tmp_path / "model.obj", process=False)
    np.testing.assert_allclose(mesh.bounds, [v2.min(axis=0), v2.max(axis=0)], atol=1e-7)
    image = np.asarray(mesh.visual.material.image.convert("RGB"))
    colours = sample(image, np.asarray(mesh.visual.uv), v_down=False)
    assert colour_match(np.asarray(mesh.vertices), colours, h) >= 0.95


def test_textured_glb_round_trip(tmp_path, baked):
    v2, f2, uv, tex, h = baked
    write_glb(tmp_path / "model.glb", v2, f2, uv, tex)
    assert os.listdir(tmp_path) == ["model.glb"]
    # Raw file, glTF convention (v = 0 at the top): independent of trimesh's reader.
    doc, accessor, image = read_glb(tmp_path / "model.glb")
    prim = doc["meshes"][0]["primitives"][0]
    material = doc["materials"][prim["material"]]["pbrMetallicRoughness"]
    assert material["metallicFactor"] == 0.0 and material["roughnessFactor"] == 1.0
    texture = image(doc["textures"][material["baseColorTexture"]["index"]]["source"])
    np.testing.assert_array_equal(texture, tex)
    pos = accessor(prim["attributes"]["POSITION"])
    np.testing.assert_array_equal(pos, v2)
    colours = sample(texture, accessor(prim["attributes"]["TEXCOORD_0"]), v_down=True)
    assert colour_match(pos, colours, h) >= 0.95
    normals = accessor(prim["attributes"]["NORMAL"])
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert np.all(np.einsum("ij,ij->i", normals, pos) > 0)  # outward on a sphere
    # trimesh's reader (it flips v back to the OBJ convention).
    mesh = trimesh.load(tmp_path / "model.glb", force="mesh", process=False)
    np.testing.assert_allclose(mesh.bounds, [v2.min(axis=0), v2.max(axis=0)], atol=1e-7)
    image_t = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    colours = sample(image_t, np.asarray(mesh.visual.uv), v_down=False)
    assert colour_match(np.asarray(mesh.vertices), colours, h) >= 0.95


def test_vertex_colour_round_trip_is_exact(tmp_path, sphere):
    v, f, _, _ = sphere
    vc = vertex_colors(v, red_blue, device="cpu")
    np.testing.assert_array_equal(np.unique(vc, axis=0), [[0, 0, 255], [255, 0, 0]])
    write_obj(tmp_path / "model.obj", v, f, vertex_colors=vc)
    write_glb(tmp_path / "model.glb", v, f, vertex_colors=vc)
    assert sorted(os.listdir(tmp_path)) == ["model.glb", "model.obj"]
    obj = trimesh.load(tmp_path / "model.obj", process=False)
    glb, = trimesh.load(tmp_path / "model.glb", process=False).geometry.values()
    # trimesh keeps glTF vertex colours of a primitive with a material as a vertex attribute.
    for mesh, colours in ((obj, obj.visual.vertex_colors), (glb, glb.visual.vertex_attributes["color"])):
        np.testing.assert_array_equal(np.asarray(mesh.vertices, dtype=np.float32), v)
        np.testing.assert_array_equal(mesh.faces, f)
        np.testing.assert_array_equal(np.asarray(colours)[:, :3], vc)
    doc, accessor, _ = read_glb(tmp_path / "model.glb")  # and the raw file
    attributes = doc["meshes"][0]["primitives"][0]["attributes"]
    np.testing.assert_array_equal(accessor(attributes["COLOR_0"])[:, :3], vc)
    np.testing.assert_array_equal(accessor(attributes["POSITION"]), v)


def test_writer_into_a_path_under_a_file_is_a_user_error(tmp_path, sphere):
    v, f, _, _ = sphere
    (tmp_path / "blocker").write_text("")
    with pytest.raises(UserError, match="cannot write"):
        write_glb(tmp_path / "blocker" / "model.glb", v, f)


def _validate(path: Path) -> dict:
    node = shutil.which("node")
    require_oracle(node is not None and (VALIDATOR / "node_modules" / "gltf-validator").is_dir(),
                   "the Khronos glTF validator", GLTF_INSTALL)
    run = subprocess.run([node, str(VALIDATOR / "validate.mjs"), str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode in (0, 1), run.stderr
    report = json.loads(run.stdout)
    assert run.returncode == (1 if report["numErrors"] else 0)
    return report


@pytest.mark.parametrize("colour", ["texture", "vertex", "none"])
def test_glb_passes_khronos_validator(tmp_path, sphere, baked, colour):
    if colour == "texture":
        v2, f2, uv, tex, _ = baked
        write_glb(tmp_path / "model.glb", v2, f2, uv, tex)
    else:
        v, f, _, _ = sphere
        write_glb(tmp_path / "model.glb", v, f, vertex_colors=vertex_colors(v, red_blue, device="cpu") if colour == "vertex" else None)
    report = _validate(tmp_path / "model.glb")
    assert report["numErrors"] == 0, report["messages"]
    assert report["numWarnings"] == 0, report["messages"]


def test_validator_reports_errors_of_a_broken_glb(tmp_path, sphere):
    v, f, _, _ = sphere
    write_glb(tmp_path / "model.glb", v, f)
    data = (tmp_path / "model.glb").read_bytes()
    doc, _, _ = read_glb(tmp_path / "model.glb")
    doc["accessors"][0]["count"] += 10_000_000  # indices now run past the buffer
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    json_len = struct.unpack("<I", data[12:16])[0]
    bin_chunk = data[20 + json_len:]
    data = struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(text) + len(bin_chunk)) \
        + struct.pack("<II", len(text), 0x4E4F534A) + text + bin_chunk
    (tmp_path / "broken.glb").write_bytes(data)
    assert _validate(tmp_path / "broken.glb")["numErrors"] > 0


# ---------------------------------------------------------------------------------------- video
def test_write_video_pads_to_even_and_keeps_the_colour(tmp_path):
    import imageio.v2 as imageio

    colour = np.array([200, 60, 30], dtype=np.uint8)
    frames = np.broadcast_to(colour, (6, 33, 47, 3)).copy()
    write_video(tmp_path / "orbit.mp4", frames, fps=10)
    assert os.listdir(tmp_path) == ["orbit.mp4"]
    reader = imageio.get_reader(tmp_path / "orbit.mp4", format="FFMPEG")
    meta = reader.get_meta_data()
    back = np.stack([frame for frame in reader.iter_data()])
    reader.close()
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 10
    assert back.shape == (6, 34, 48, 3)
    np.testing.assert_allclose(back.reshape(-1, 3).mean(axis=0), colour, atol=4)


def test_a_video_cut_short_by_a_full_disk_is_an_error_and_the_old_one_stays(tmp_path, monkeypatch):
    """ffmpeg out of disk stops mid-file and imageio does not raise: the cut file must not replace orbit.mp4.
    Simulated by ffmpeg's writer cutting its file in half on close, with a disk reported full."""
    import imageio.v2 as imageio

    frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    write_video(tmp_path / "orbit.mp4", frames, fps=10)
    before = (tmp_path / "orbit.mp4").read_bytes()
    real = imageio.get_writer

    def cut_writer(path, **kwargs):
        writer = real(path, **kwargs)
        close = writer.close

        def close_then_cut():
            close()
            os.truncate(path, os.path.getsize(path) // 2)
        writer.close = close_then_cut
        return writer

    monkeypatch.setattr(imageio, "get_writer", cut_writer)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(UserError) as info:
        write_video(tmp_path / "orbit.mp4", frames[::-1], fps=10)
    assert str(info.value).startswith(f"cannot write '{tmp_path / 'orbit.mp4'}': no space left on device")
    assert os.listdir(tmp_path) == ["orbit.mp4"] and (tmp_path / "orbit.mp4").read_bytes() == before


def test_stack_panels_places_panels_left_to_right():
    a = np.zeros((2, 4, 3, 3), np.uint8)
    b = np.full((2, 4, 5, 3), 7, np.uint8)
    out = stack_panels([a, b])
    assert out.shape == (2, 4, 8, 3)
    np.testing.assert_array_equal(out[:, :, :3], a)
    np.testing.assert_array_equal(out[:, :, 3:], b)
    with pytest.raises(ValueError, match="panel 1"):
        stack_panels([a, np.zeros((2, 5, 3, 3), np.uint8)])


def test_normals_to_rgb_closed_form():
    n = np.array([[1, 0, 0], [0, -1, 0], [0, 0, 1], [0, 0, 0]], np.float32).reshape(1, 1, 4, 3)
    np.testing.assert_array_equal(normals_to_rgb(n)[0, 0],
                                  [[255, 128, 128], [128, 0, 128], [128, 128, 255], [128, 128, 128]])


def test_colorize_depth_background_and_order():
    depth = np.array([[[1.0, 2.0, 3.0, 9.0]]])          # [1, 1, 4]
    opacity = np.array([[[1.0, 1.0, 1.0, 0.0]]])
    rgb = colorize_depth(torch.from_numpy(depth)[..., None], opacity)  # [N, H, W, 1] tensors are accepted
    assert rgb.shape == (1, 1, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0, 3], [255, 255, 255])  # transparent -> background
    # Same depth -> same colour, and the solid range spans the colormap: near and far differ.
    np.testing.assert_array_equal(colorize_depth(depth, opacity), rgb)
    assert np.abs(rgb[0, 0, 0].astype(int) - rgb[0, 0, 2]).sum() > 100


class SphereField(torch.nn.Module):
    """smooth_sphere density with red_blue albedo, as export_mesh sees a field."""

    bound, surface_optical_depth = 1.0, 0.3

    def density(self, points):
        return smooth_sphere(points)

    def forward(self, points):
        return {"density": smooth_sphere(points), "albedo": red_blue(points)}


@pytest.mark.parametrize("uv_max_faces", [0, 600])
def test_uv_export_decimates_before_the_unwrap_and_keeps_shape_and_colour(tmp_path, uv_max_faces):
    """export.uv_max_faces: the UV path simplifies first (a phase of its own); 0 unwraps every face."""
    import_oracle("fast_simplification", "pip install fast-simplification (the dev extra)")
    from dreamfusion.config import load_config
    from dreamfusion.artifacts import PhaseTimer, export_mesh

    t = 1.0
    cfg = load_config(None, ["export.resolution=40", "export.texture_size=256", f"export.threshold={t}",
                             f"export.uv_max_faces={uv_max_faces}"])
    full_v, full_f = extract_mesh(smooth_sphere, 1.0, 40, threshold=t, device="cpu")
    timer = PhaseTimer(quiet=True)
    paths = export_mesh(SphereField(), cfg, tmp_path, timer)
    mesh = trimesh.load(paths["obj"], process=False)
    faces = len(mesh.faces)
    if uv_max_faces:
        assert faces <= uv_max_faces < len(full_f) and "export.decimate" in timer.seconds
    else:
        assert faces == len(full_f) and "export.decimate" not in timer.seconds
    assert {"export.mesh", "export.unwrap", "export.bake", "export.write"} <= set(timer.seconds)
    volume = signed_volume(np.asarray(mesh.vertices), np.asarray(mesh.faces))
    assert volume == pytest.approx(4 / 3 * math.pi * level_radius(t) ** 3, rel=0.03)
    image = np.asarray(mesh.visual.material.image.convert("RGB"))
    colours = sample(image, np.asarray(mesh.visual.uv), v_down=False)
    assert colour_match(np.asarray(mesh.vertices), colours, 2.0 / 39) >= 0.95
