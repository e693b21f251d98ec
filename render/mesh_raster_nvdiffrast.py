"""Mesh rasterization with nvdiffrast's CUDA rasterizer (Laine et al. 2020): the fast twin of render/mesh_raster.py.

Same contract as the plain-PyTorch functions: ``rasterize_mesh_nvdiffrast`` returns the rast dict (``triangle``,
``bary``, ``depth``, ``mask``) that ``render.mesh_raster.interpolate`` also takes, and ``interpolate_nvdiffrast`` /
``antialias_nvdiffrast`` take the same arguments as their twins. nvdiffrast is imported lazily, CUDA only; it is
not on PyPI and its licence (NVIDIA Source Code License) allows non-commercial use only, so it is never a
dependency: ``pip install git+https://github.com/NVlabs/nvdiffrast.git --no-build-isolation`` (0.4.0 compiles
its kernels at install time, ``import nvdiffrast.torch`` loads them).

nvdiffrast's API (NVlabs/nvdiffrast 0.4.0, nvdiffrast/torch/ops.py docstrings and docs/index.html):
- ``dr.RasterizeCudaContext(device)``: the CUDA rasterizer's state, one per device.
- ``dr.rasterize(glctx, pos, tri, resolution)`` with ``pos [B, V, 4]`` float32 clip space ("instanced mode"),
  ``tri [F, 3]`` int32, ``resolution = (height, width)`` -> ``(rast, rast_db)``, both ``[B, H, W, 4]``; rast holds
  ``(u, v, z/w, triangle_id)`` where "the first vertex in the vertex index triplet obtains (u, v) = (1, 0), the
  second vertex (u, v) = (0, 1) and the third vertex (u, v) = (0, 0)", "triangle_id is the triangle index, offset
  by one", and "pixels where no triangle was rasterized will receive a zero in all channels" (docs, Rasterization).
  The barycentrics are perspective-correct (csrc/common/rasterize.cu: "Perspective correct, normalized
  barycentrics") and carry gradients to ``pos``; z/w "does not propagate gradients to the vertex position input".
- ``dr.interpolate(attr, rast, tri)`` -> ``(out [B, H, W, C], derivatives)``; zeros where no triangle.
- ``dr.texture(tex [B, Ht, Wt, C], uv [B, H, W, 2], filter_mode, boundary_mode)``: (s, t) = (0, 0) at the
  texture's bottom-left, memory row 0 its bottom row (docs, Coordinate systems). Not used here: the project's
  textures go through ``render.mesh_raster.texture_lookup`` (grid_sample) on both paths.
- ``dr.antialias(color, rast, pos, tri)`` -> color of the same shape, differentiable in color and pos.

The mapping between nvdiffrast's conventions and ours (``from_nvdiffrast``; the tests check it on a simulated
nvdiffrast output built from the brute-force ray oracle):
- clip space: the same (OpenGL: x right, y up, w = view depth; ``clip_positions`` makes it for both paths).
- image rows: nvdiffrast's memory order is bottom-up ("row 0 of a tensor containing an image is the bottom row",
  docs, Coordinate systems), ours top-down: every image crossing the boundary is flipped along H. Pixel centres
  agree: nvdiffrast samples x_ndc = 2 (px + 0.5) / W - 1 (csrc/torch/torch_rasterize.cpp, ``p.xs``, ``p.xo``).
- barycentric order: our ``bary[..., k]`` weighs vertex k of the face, so ``bary = (u, v, 1 - u - v)``.
- triangle id: ours = nvdiffrast's - 1 (so -1 where none); ids above 2^24 are stored as float bit patterns
  (csrc/common/common.h ``triidx_to_float``), so meshes of more faces are refused.
- depth: ours is the view depth w of the visible point, nvdiffrast's z/w is NDC depth (and is clamped to
  [-1, 1]); w is recovered exactly as the barycentric blend of the three vertices' w (barycentrics being
  perspective-correct), not from z/w, which loses ~1e-5 to float32 near z/w = 1.
- the view frustum: nvdiffrast clips triangles to it (csrc/common/cudaraster/impl/TriangleSetup.inl, "Clip to
  view frustum"), so nothing nearer than clip_positions' near plane (0.01) or beyond its far plane (100) is seen;
  the PyTorch twin drops triangles reaching behind the camera and does not clip at near or far. Object-centred
  cameras keep meshes well inside both, so the two agree in this project's use.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["nvdiffrast_available", "import_nvdiffrast", "from_nvdiffrast", "rasterize_mesh_nvdiffrast",
           "interpolate_nvdiffrast", "antialias_nvdiffrast"]

NVDIFFRAST_INSTALL = "pip install git+https://github.com/NVlabs/nvdiffrast.git --no-build-isolation"
_MAX_FACES = 1 << 24  # triangle ids + 1 up to 2^24 are exact floats in nvdiffrast's rast


def import_nvdiffrast():
    """``nvdiffrast.torch``, or an ImportError that says how to install it."""
    try:
        import nvdiffrast.torch as dr
    except ImportError as exc:
        raise ImportError(f"the nvdiffrast mesh rasterizer needs nvdiffrast ({exc}): {NVDIFFRAST_INSTALL} "
                          f"(non-commercial licence)") from None
    return dr


def nvdiffrast_available() -> bool:
    """True when CUDA is available and nvdiffrast imports (the condition for using this fast path)."""
    if not torch.cuda.is_available():
        return False
    try:
        import_nvdiffrast()
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _context(device: torch.device):
    """One ``RasterizeCudaContext`` per CUDA device, made on first use (it holds the rasterizer's buffers)."""
    return import_nvdiffrast().RasterizeCudaContext(device=device)


def from_nvdiffrast(raw: Tensor, pos: Tensor, faces: Tensor) -> dict[str, Tensor]:
    """nvdiffrast's rast ``[B, H, W, 4]`` (bottom-up rows: u, v, z/w, triangle id + 1) of clip-space ``pos
    [B, V, 4]`` and ``faces [F, 3]`` -> our rast dict (render.mesh_raster.rasterize_mesh's contract), keeping the
    graph of u and v; ``nvdiffrast`` holds the raw tensor for interpolate_nvdiffrast and antialias_nvdiffrast."""
    flipped = raw.flip(1)  # row 0 = the image's top
    triangle = flipped[..., 3].round().long() - 1
    mask = triangle >= 0
    u, v = flipped[..., 0], flipped[..., 1]
    bary = torch.stack([u, v, 1.0 - u - v], dim=-1) * mask[..., None]
    corners = faces.long()[triangle.clamp(min=0)]  # [B, H, W, 3]
    w = torch.gather(pos[..., 3], 1, corners.reshape(pos.shape[0], -1)).view(corners.shape)
    depth = (bary * w).sum(-1) * mask  # perspective-correct weights blend w exactly
    return {"triangle": triangle, "bary": bary, "depth": depth, "mask": mask, "nvdiffrast": raw}


def _cuda_inputs(pos: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    if not pos.is_cuda:
        raise ValueError(f"the nvdiffrast mesh rasterizer needs CUDA tensors, got pos on {pos.device}")
    if pos.dim() != 3 or pos.shape[-1] != 4:
        raise ValueError(f"rasterize_mesh_nvdiffrast: pos must be clip-space [B, V, 4], got {tuple(pos.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3 or len(faces) > _MAX_FACES:
        raise ValueError(f"rasterize_mesh_nvdiffrast: faces must be [F, 3] with F <= 2^24, got {tuple(faces.shape)}")
    return pos.float().contiguous(), faces.to(device=pos.device, dtype=torch.int32).contiguous()


def rasterize_mesh_nvdiffrast(pos: Tensor, faces: Tensor, height: int, width: int) -> dict[str, Tensor]:
    """render.mesh_raster.rasterize_mesh on nvdiffrast's CUDA context: triangle, bary, depth, mask (float32)."""
    dr = import_nvdiffrast()
    pos32, tri = _cuda_inputs(pos, faces)
    raw, _ = dr.rasterize(_context(pos.device), pos32, tri, (height, width), grad_db=False)
    return from_nvdiffrast(raw, pos32, tri)


def interpolate_nvdiffrast(attributes: Tensor, rast: dict[str, Tensor], faces: Tensor) -> Tensor:
    """render.mesh_raster.interpolate by ``dr.interpolate`` on a rast from rasterize_mesh_nvdiffrast."""
    dr = import_nvdiffrast()
    attr = attributes.float().contiguous()
    out, _ = dr.interpolate(attr if attr.dim() == 3 else attr[None], rast["nvdiffrast"],
                            faces.to(device=attr.device, dtype=torch.int32).contiguous())
    return out.flip(1)


def antialias_nvdiffrast(color: Tensor, rast: dict[str, Tensor], pos: Tensor, faces: Tensor,
                         adjacent: Tensor | None = None) -> Tensor:
    """render.mesh_raster.antialias by ``dr.antialias`` (colour flipped to nvdiffrast's bottom-up rows and back;
    ``adjacent`` is not needed: nvdiffrast finds the silhouettes itself)."""
    dr = import_nvdiffrast()
    pos32, tri = _cuda_inputs(pos, faces)
    out = dr.antialias(color.float().flip(1).contiguous(), rast["nvdiffrast"], pos32, tri)
    return out.flip(1)
