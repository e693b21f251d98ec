"""Mesh files: Wavefront .obj (+ .mtl + albedo .png) and binary glTF .glb.

Inputs are plain arrays in the world frame of docs/DESIGN.md (glTF frame, y up), so no axis change is
made. `uv` follows the OBJ convention (v = 0 at the bottom of the texture image, see texture.py);
`texture` is uint8 [H, W, 3] with row 0 at the top. Every file is written to a temporary name in the
destination folder and moved into place (dreamfusion.io.atomic_write), so a reader never sees a half-written file.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from dreamfusion.io import atomic_write

__all__ = ["write_obj", "write_glb"]


def _check(vertices, faces, uv, texture, vertex_colors):
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"expected vertices [V, 3], got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"expected faces [F, 3] with F > 0, got {faces.shape}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"face indices must lie in [0, {len(vertices)}), got [{faces.min()}, {faces.max()}]")
    if (uv is None) != (texture is None):
        raise ValueError("uv and texture go together: pass both or neither")
    if uv is not None and vertex_colors is not None:
        raise ValueError("pass either uv + texture or vertex_colors, not both")
    if uv is not None:
        uv = np.asarray(uv, dtype=np.float32)
        texture = np.asarray(texture)
        if uv.shape != (len(vertices), 2):
            raise ValueError(f"expected uv [{len(vertices)}, 2], got {uv.shape}")
        if texture.dtype != np.uint8 or texture.ndim != 3 or texture.shape[2] != 3:
            raise ValueError(f"expected texture uint8 [H, W, 3], got {texture.dtype} {texture.shape}")
    if vertex_colors is not None:
        vertex_colors = np.asarray(vertex_colors)
        if vertex_colors.dtype != np.uint8 or vertex_colors.shape != (len(vertices), 3):
            raise ValueError(f"expected vertex_colors uint8 [{len(vertices)}, 3], got "
                             f"{vertex_colors.dtype} {vertex_colors.shape}")
    return vertices, faces, uv, texture, vertex_colors


def _smooth_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals [V, 3], unit length. Copies of a position (UV seams) are welded
    first so the shading does not show the seams; a vertex with no area gets +y."""
    _, weld = np.unique(vertices, axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    v = vertices.astype(np.float64)
    face_n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])  # |n| = 2 area
    acc = np.zeros((weld.max() + 1, 3))
    for k in range(3):
        np.add.at(acc, weld[faces[:, k]], face_n)
    n = acc[weld]
    length = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(length > 0, n / np.where(length > 0, length, 1.0), [0.0, 1.0, 0.0])
    return n.astype(np.float32)


def _png_bytes(texture: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(texture, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _rows(fmt: str, array: np.ndarray) -> str:
    buf = io.StringIO()
    np.savetxt(buf, array, fmt=fmt)
    return buf.getvalue()


def write_obj(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None,
              texture: np.ndarray | None = None, vertex_colors: np.ndarray | None = None) -> None:
    """Wavefront OBJ with smooth normals.

    Textured (uv [V, 2] + texture uint8 [H, W, 3]): writes PATH (`vt` = uv, OBJ convention), PATH with
    suffix .mtl (`map_Kd`) and `<stem>_albedo.png` next to it, e.g. model.obj + model.mtl + model_albedo.png.
    With vertex_colors uint8 [V, 3]: `v x y z r g b` lines (colours / 255). Faces are counter-clockwise
    seen from outside (1-based `f v/vt/vn`). Positions are written with 9 significant digits (exact float32).
    """
    path = Path(path)
    vertices, faces, uv, texture, vertex_colors = _check(vertices, faces, uv, texture, vertex_colors)
    normals = _smooth_normals(vertices, faces)
    lines = ["# dreamfusion mesh export (world frame: y up, front +z)\n"]
    if uv is not None:
        mtl_path = path.with_suffix(".mtl")
        png_path = path.with_name(f"{path.stem}_albedo.png")
        atomic_write(png_path, _png_bytes(texture))
        mtl = ("# dreamfusion albedo material\n"
               "newmtl albedo\n"
               "Ka 1.000 1.000 1.000\nKd 1.000 1.000 1.000\nKs 0.000 0.000 0.000\n"
               "d 1.0\nillum 1\n"
               f"map_Kd {png_path.name}\n")
        atomic_write(mtl_path, mtl.encode())
        lines.append(f"mtllib {mtl_path.name}\n")
    if vertex_colors is not None:
        lines.append(_rows("v %.9g %.9g %.9g %.9g %.9g %.9g",
                           np.concatenate([vertices, vertex_colors.astype(np.float64) / 255.0], axis=1)))
    else:
        lines.append(_rows("v %.9g %.9g %.9g", vertices))
    if uv is not None:
        lines.append(_rows("vt %.9g %.9g", uv))
    lines.append(_rows("vn %.6g %.6g %.6g", normals))
    f1 = faces + 1
    if uv is not None:
        lines.append("usemtl albedo\n")
        lines.append(_rows("f %d/%d/%d %d/%d/%d %d/%d/%d", np.repeat(f1, 3, axis=1)))
    else:
        lines.append(_rows("f %d//%d %d//%d %d//%d", np.repeat(f1, 2, axis=1)))
    atomic_write(path, "".join(lines).encode())


def write_glb(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None,
              texture: np.ndarray | None = None, vertex_colors: np.ndarray | None = None) -> None:
    """Binary glTF 2.0 (.glb) via trimesh, with smooth normals and a PBR material (metallic 0, roughness 1).

    Textured: baseColorTexture = texture (PNG inside the .glb); uv in the OBJ convention, trimesh writes
    `1 - v` as glTF requires. With vertex_colors: a COLOR_0 attribute and a white base colour.
    Passes the Khronos glTF validator with 0 errors (tests/test_export.py runs it).
    """
    import trimesh
    from PIL import Image

    path = Path(path)
    vertices, faces, uv, texture, vertex_colors = _check(vertices, faces, uv, texture, vertex_colors)
    normals = _smooth_normals(vertices, faces)
    if uv is not None:
        material = trimesh.visual.material.PBRMaterial(
            name="albedo", baseColorTexture=Image.fromarray(texture, mode="RGB"),
            baseColorFactor=[255, 255, 255, 255], metallicFactor=0.0, roughnessFactor=1.0)
        visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    elif vertex_colors is not None:
        rgba = np.concatenate([vertex_colors, np.full((len(vertices), 1), 255, np.uint8)], axis=1)
        visual = trimesh.visual.ColorVisuals(vertex_colors=rgba)
    else:
        visual = None
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_normals=normals, visual=visual, process=False)
    if uv is None:
        # ColorVisuals carry no material; give the same matte PBR one explicitly.
        mesh.visual.material = trimesh.visual.material.PBRMaterial(
            name="albedo", baseColorFactor=[255, 255, 255, 255], metallicFactor=0.0, roughnessFactor=1.0)
    data = trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh), include_normals=True)
    atomic_write(path, data)
