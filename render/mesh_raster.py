"""Differentiable rasterization of triangle meshes, a pure function of tensors (the refine stage's renderer).

The split follows nvdiffrast (Laine et al. 2020, "Modular Primitives for High-Performance Differentiable
Rendering"): ``rasterize_mesh`` finds the visible triangle of every pixel and its barycentric coordinates,
``interpolate`` carries vertex attributes (positions, normals, UVs) to the pixels, ``texture_lookup`` samples
a texture at interpolated UVs, and ``antialias`` blends the two sides of every silhouette edge by how far the
edge lies from the pixel centres, which is what gives the vertex positions a gradient at silhouettes (a hard
coverage mask has none).

Conventions (docs/DESIGN.md): OpenGL cameras, clip space as nvdiffrast takes it (``pos [B, V, 4]``); the
image's row 0 is its top and pixel (i, j) is sampled at its centre (j + 0.5, i + 0.5), as render/rays.py's
rays are, so a ray through a pixel centre hits the triangle this module reports. Both windings rasterize (no
back-face culling). A triangle with a vertex at or behind the camera plane (clip w <= 1e-6) is dropped, not
clipped: the object-centred cameras keep meshes in front of them.

Visibility is discrete and carries no gradient; the barycentrics of the chosen triangle are recomputed with
autograd, so ``interpolate`` is differentiable in the attributes and, through the barycentrics, in ``pos``.
Candidates are the pixels of each triangle's screen bounding box, evaluated in chunks (export's texture baker
bins its UV triangles the same way), so the cost follows the covered area, not pixels x triangles.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .tets import face_adjacency

__all__ = ["clip_positions", "rasterize_mesh", "interpolate", "texture_lookup", "antialias"]

_MIN_W = 1e-6
_MAX_CANDIDATES = 1 << 21  # pixel-triangle pairs evaluated at once


def clip_positions(vertices: Tensor, c2w: Tensor, fovy: Tensor, height: int, width: int,
                   near: float = 0.01, far: float = 100.0) -> Tensor:
    """World points [V, 3] (or [B, V, 3]) seen by OpenGL cameras ``c2w [B, 4, 4]`` with vertical field of view
    ``fovy [B]`` (radians; square pixels) -> clip-space positions [B, V, 4] (x right, y up, w = view depth)."""
    if c2w.dim() != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"clip_positions: c2w must be [B, 4, 4], got {tuple(c2w.shape)}")
    batch = c2w.shape[0]
    points = vertices.expand(batch, *vertices.shape[-2:]) if vertices.dim() == 2 else vertices
    if points.shape[0] != batch or points.shape[-1] != 3:
        raise ValueError(f"clip_positions: vertices must be [V, 3] or [B, V, 3] with B = {batch}, "
                         f"got {tuple(vertices.shape)}")
    w2c = torch.linalg.inv(c2w)
    cam = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # [B, V, 3]
    fovy = torch.as_tensor(fovy, dtype=cam.dtype, device=cam.device).expand(batch)
    fy = 1.0 / torch.tan(0.5 * fovy)  # [B]
    fx = fy * height / width
    z = cam[..., 2]
    return torch.stack([fx[:, None] * cam[..., 0], fy[:, None] * cam[..., 1],
                        (far + near) / (near - far) * z + 2 * far * near / (near - far), -z], dim=-1)


def _screen(pos: Tensor, height: int, width: int) -> Tensor:
    """Clip [..., 4] -> pixel coordinates [..., 2] (x right from the left edge, y down from the top edge)."""
    ndc = pos[..., :2] / pos[..., 3:4]
    return torch.stack([(ndc[..., 0] + 1) * (0.5 * width), (1 - ndc[..., 1]) * (0.5 * height)], dim=-1)


def _check(pos: Tensor, faces: Tensor) -> None:
    if pos.dim() != 3 or pos.shape[-1] != 4:
        raise ValueError(f"rasterize_mesh: pos must be clip-space [B, V, 4], got {tuple(pos.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3 or faces.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"rasterize_mesh: faces must be integer [F, 3], got {tuple(faces.shape)} {faces.dtype}")


def _edges(s: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, Tensor]:
    """Edge functions of the triangles ``s [K, 3, 2]`` at the points (px, py) [K]: screen-space barycentrics
    [K, 3] (vertex k's weight is the area opposite it) and the signed doubled area [K]."""
    a, b, c = s[:, 0], s[:, 1], s[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    e = []
    for p, q in ((b, c), (c, a), (a, b)):
        e.append((q[:, 0] - p[:, 0]) * (py - p[:, 1]) - (q[:, 1] - p[:, 1]) * (px - p[:, 0]))
    return torch.stack(e, dim=1) / area[:, None], area


@torch.no_grad()
def _visible(pos: Tensor, faces: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The nearest triangle of every pixel [B, H, W] (-1 where none) and its depth [B, H, W] (inf where none)."""
    batch = pos.shape[0]
    n_faces = faces.shape[0]
    tri = pos[:, faces]  # [B, F, 3, 4]
    s = _screen(tri, height, width)  # [B, F, 3, 2]
    ok = (tri[..., 3] > _MIN_W).all(-1)  # [B, F]
    lo = torch.ceil(s.amin(2) - 0.5).long()  # pixels whose centre p + 0.5 lies in the bounding box
    hi = torch.floor(s.amax(2) - 0.5).long()
    lo = torch.maximum(lo, lo.new_zeros(()))
    hi = torch.minimum(hi, torch.tensor([width - 1, height - 1], device=pos.device))
    extent = (hi - lo + 1).clamp(min=0)
    count = torch.where(ok, extent[..., 0] * extent[..., 1], 0).reshape(-1)  # [B * F]
    cum = torch.cumsum(count, 0)
    total = int(cum[-1]) if len(cum) else 0
    zbuf = torch.full((batch * height * width,), math.inf, dtype=pos.dtype, device=pos.device)
    kept_key, kept_tri, kept_depth = [], [], []
    start = 0
    flat_s, flat_w, flat_lo, flat_ext = s.reshape(-1, 3, 2), tri[..., 3].reshape(-1, 3), lo.reshape(-1, 2), \
        extent.reshape(-1, 2)
    while start < total:
        stop = min(start + _MAX_CANDIDATES, total)
        # candidates [start, stop): owner triangle (over B * F) and index inside its bounding box
        owner = torch.searchsorted(cum, torch.arange(start, stop, device=pos.device), right=True)
        offset = torch.arange(start, stop, device=pos.device) - (cum[owner] - count[owner])
        nx = flat_ext[owner, 0].clamp(min=1)
        px, py = flat_lo[owner, 0] + offset % nx, flat_lo[owner, 1] + offset // nx
        bary, area = _edges(flat_s[owner], px.to(pos.dtype) + 0.5, py.to(pos.dtype) + 0.5)
        inside = (area != 0) & (bary >= 0).all(1)
        inv_w = (bary / flat_w[owner]).sum(1)
        owner, px, py, depth = owner[inside], px[inside], py[inside], 1.0 / inv_w[inside]
        b = owner // n_faces
        key = (b * height + py) * width + px
        zbuf.scatter_reduce_(0, key, depth, reduce="amin")
        kept_key.append(key), kept_tri.append(owner % n_faces), kept_depth.append(depth)
        start = stop
    triangle = torch.full((batch * height * width,), -1, dtype=torch.long, device=pos.device)
    if kept_key:
        key, tri_id, depth = torch.cat(kept_key), torch.cat(kept_tri), torch.cat(kept_depth)
        win = depth == zbuf[key]  # ties (a pixel centre on a shared edge): the higher triangle id
        triangle.scatter_reduce_(0, key[win], tri_id[win], reduce="amax")
    return triangle.view(batch, height, width), zbuf.view(batch, height, width)


def rasterize_mesh(pos: Tensor, faces: Tensor, height: int, width: int) -> dict[str, Tensor]:
    """Rasterize triangles ``faces [F, 3]`` of clip-space vertices ``pos [B, V, 4]`` into H x W images.

    Returns ``triangle [B, H, W]`` (long, the face index, -1 where the pixel sees no triangle), ``bary
    [B, H, W, 3]`` (perspective-correct barycentric weights of the face's three vertices, zeros outside;
    differentiable in ``pos``), ``depth [B, H, W]`` (view-space depth = clip w of the visible point, 0
    outside) and ``mask [B, H, W]`` (bool).
    """
    _check(pos, faces)
    faces = faces.long()
    triangle, _ = _visible(pos, faces, height, width)
    mask = triangle >= 0
    b, i, j = torch.nonzero(mask, as_tuple=True)
    verts = pos[b[:, None], faces[triangle[mask]]]  # [N, 3, 4], with the graph
    screen_bary, _ = _edges(_screen(verts, height, width), j.to(pos.dtype) + 0.5, i.to(pos.dtype) + 0.5)
    # perspective correction: weights linear in screen space divided by w, renormalised (nvdiffrast eq. 1)
    over_w = screen_bary / verts[..., 3]
    inv_depth = over_w.sum(1, keepdim=True)
    bary = pos.new_zeros(*mask.shape, 3).index_put((b, i, j), over_w / inv_depth)
    depth = pos.new_zeros(mask.shape).index_put((b, i, j), 1.0 / inv_depth[:, 0])
    return {"triangle": triangle, "bary": bary, "depth": depth, "mask": mask}


def interpolate(attributes: Tensor, rast: dict[str, Tensor], faces: Tensor) -> Tensor:
    """Vertex attributes ``[V, C]`` (or per view ``[B, V, C]``) at every pixel -> ``[B, H, W, C]``, zeros where
    the pixel sees no triangle: the barycentric blend of the visible face's three vertices."""
    triangle, bary, mask = rast["triangle"], rast["bary"], rast["mask"]
    batch = triangle.shape[0]
    if attributes.dim() == 2:
        attributes = attributes.expand(batch, *attributes.shape)
    if attributes.dim() != 3 or attributes.shape[0] != batch:
        raise ValueError(f"interpolate: attributes must be [V, C] or [B, V, C] with B = {batch}, "
                         f"got {tuple(attributes.shape)}")
    corners = faces.long()[triangle.clamp(min=0)]  # [B, H, W, 3]
    values = torch.gather(attributes, 1, corners.reshape(batch, -1, 1).expand(-1, -1, attributes.shape[-1]))
    values = values.view(*corners.shape, attributes.shape[-1])  # [B, H, W, 3, C]
    return (bary[..., None] * values).sum(-2) * mask[..., None]


def texture_lookup(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup of ``texture [Ht, Wt, C]`` at ``uv [B, H, W, 2]`` -> [B, H, W, C]; u runs right and v up
    (v = 0 is the image's bottom row, as in .obj files), texel centres at ((x + 0.5) / Wt, 1 - (y + 0.5) / Ht),
    clamped at the borders. Differentiable in both."""
    if texture.dim() != 3 or uv.dim() != 4 or uv.shape[-1] != 2:
        raise ValueError(f"texture_lookup: texture must be [Ht, Wt, C] and uv [B, H, W, 2], "
                         f"got {tuple(texture.shape)} and {tuple(uv.shape)}")
    grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], dim=-1)  # grid_sample: y = -1 is the top row
    image = texture.permute(2, 0, 1)[None].expand(uv.shape[0], -1, -1, -1)
    out = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


def _crossing(s: Tensor, origin: Tensor, step: Tensor) -> Tensor:
    """Where the segment origin + t * step (t in [0, 1]) crosses each edge of triangles ``s [N, 3, 2]``:
    t [N, 3] (nan where it does not cross within the edge); edge k is the one opposite vertex k."""
    out = []
    for a, b in ((1, 2), (2, 0), (0, 1)):
        pa, pb = s[:, a], s[:, b]
        e = pb - pa
        r = origin - pa  # solve pa + u e = origin + t step
        den = step[:, 0] * e[:, 1] - step[:, 1] * e[:, 0]
        parallel = den == 0
        den = torch.where(parallel, torch.ones_like(den), den)  # no 0/0 in the backward of an unused branch
        t = (e[:, 0] * r[:, 1] - e[:, 1] * r[:, 0]) / den
        u = (step[:, 0] * r[:, 1] - step[:, 1] * r[:, 0]) / den
        good = ~parallel & (u >= 0) & (u <= 1) & (t >= 0) & (t <= 1)
        out.append(torch.where(good, t, torch.full_like(t, math.nan)))
    return torch.stack(out, dim=1)


def _facing(s: Tensor) -> Tensor:
    """Sign of the screen-space area of triangles ``s [N, 3, 2]``: +1 / -1 by winding (front or back facing)."""
    a, b, c = s[:, 0], s[:, 1], s[:, 2]
    return torch.sign((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


_MAX_WALK = 8  # triangles a silhouette search crosses between two pixel centres


@torch.no_grad()
def _silhouette_edges(screen: Tensor, faces: Tensor, adjacent: Tensor, b: Tensor, face: Tensor, origin: Tensor,
                      step: Tensor, end: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """From inside ``face`` (of view ``b``) along the segment origin -> origin + step, walk across the mesh's
    edges until one is a silhouette (a boundary, or between a front- and a back-facing face). Returns the face
    [N] owning that edge and the edge's index [N] in it (-1 where the segment reaches the other end first).
    ``end`` [N]: the face seen at the segment's far end (-1: none). A walk that steps into it has reached the
    end (the segment ends inside that triangle) and stops; without ``end`` it would step back and forth across
    the edge it came in by until _MAX_WALK, with the same result (tests/test_mesh_raster.py)."""
    found_face = torch.full_like(face, -1)
    found_edge = torch.full_like(face, -1)
    active = torch.arange(len(face), device=face.device)
    for _ in range(_MAX_WALK):
        if len(active) == 0:
            break
        s = screen[b[active][:, None], faces[face[active]]]  # [N, 3, 2]
        t = _crossing(s, origin[active], step[active])
        exits = torch.nan_to_num(t, nan=-1.0)
        edge = exits.argmax(1)  # the exit: the largest crossing t (the entry edge, if any, is smaller)
        crosses = exits.max(1).values >= 0
        across = adjacent[face[active], edge]
        neighbour_s = screen[b[active][:, None], faces[across.clamp(min=0)]]
        silhouette = (across < 0) | (_facing(neighbour_s) != _facing(s))
        hit = crosses & silhouette
        found_face[active[hit]] = face[active][hit]
        found_edge[active[hit]] = edge[hit]
        walk = crosses & ~silhouette
        face = face.clone()
        face[active[walk]] = across[walk]
        if end is not None:
            walk = walk & (across != end[active])
        active = active[walk]
    return found_face, found_edge


def antialias(color: Tensor, rast: dict[str, Tensor], pos: Tensor, faces: Tensor,
              adjacent: Tensor | None = None) -> Tensor:
    """Blend across silhouette edges: ``color [B, H, W, C]`` -> [B, H, W, C], differentiable in ``color`` and in
    ``pos`` (clip space, as rasterized).

    For each pair of 4-neighbour pixels that see different triangles, a walk from the nearer pixel's triangle
    along the segment between the two centres finds the first silhouette edge it crosses (a mesh boundary, or
    an edge between a front- and a back-facing triangle), at a fraction d of the way. The pixel on the side
    where that edge lies is partly covered by the other side and takes a share of its colour: |0.5 - d| of it
    (nvdiffrast's analytic antialiasing, in spirit), times the part of the edge's normal along the pair's axis,
    |n_x| or |n_y| over |n_x| + |n_y|, since a slanted edge is met by horizontal and by vertical pairs alike.
    Pairs whose segment crosses no silhouette (two triangles of one visible surface) are left alone.
    ``adjacent``: ``face_adjacency(faces)`` when the caller has it already.
    """
    triangle, depth = rast["triangle"], torch.where(rast["mask"], rast["depth"], math.inf)
    batch, height, width = triangle.shape
    faces = faces.long()
    adjacent = face_adjacency(faces) if adjacent is None else adjacent
    screen = _screen(pos, height, width)  # [B, V, 2], with the graph
    flat = color.reshape(-1, color.shape[-1])
    delta = torch.zeros_like(flat)
    for di, dj in ((0, 1), (1, 0)):
        t_p, t_q = triangle[:, :height - di, :width - dj], triangle[:, di:, dj:]
        d_p, d_q = depth[:, :height - di, :width - dj], depth[:, di:, dj:]
        b, i, j = torch.nonzero((t_p != t_q) & ((t_p >= 0) | (t_q >= 0)), as_tuple=True)
        if len(b) == 0:
            continue
        p_near = d_p[b, i, j] <= d_q[b, i, j]
        oi, oj = torch.where(p_near, i, i + di), torch.where(p_near, j, j + dj)  # the occluding pixel
        ni, nj = torch.where(p_near, i + di, i), torch.where(p_near, j + dj, j)
        origin = torch.stack([oj, oi], dim=1).to(pos.dtype) + 0.5
        step = torch.stack([nj - oj, ni - oi], dim=1).to(pos.dtype)
        face, edge = _silhouette_edges(screen.detach(), faces, adjacent, b, triangle[b, oi, oj], origin, step,
                                       end=triangle[b, ni, nj])
        keep = edge >= 0
        b, oi, oj, ni, nj, face, edge = b[keep], oi[keep], oj[keep], ni[keep], nj[keep], face[keep], edge[keep]
        origin, step = origin[keep], step[keep]
        s = screen[b[:, None], faces[face]]  # [N, 3, 2], with the graph
        d = _crossing(s, origin, step).gather(1, edge[:, None])[:, 0]
        d = torch.nan_to_num(d, nan=0.5)  # a crossing exactly at an edge's end may round out: no blend
        # an edge crossing rows and columns is met by horizontal and by vertical pairs: each kind takes the share
        # |n . step| / (|n_x| + |n_y|) of its normal n, so the coverage moves by the edge's length times its shift
        ends = s.gather(1, torch.stack([(edge + 1) % 3, (edge + 2) % 3], dim=1)[..., None].expand(-1, -1, 2))
        along = ends[:, 1] - ends[:, 0]  # the edge's direction; its normal is (-along_y, along_x)
        share = (along[:, dj].abs() / (along.abs().sum(1) + 1e-12))[:, None]
        o_key, n_key = (b * height + oi) * width + oj, (b * height + ni) * width + nj
        c_o, c_n = flat[o_key], flat[n_key]
        # the edge in the other pixel's half (d > 0.5): that pixel is covered by d - 0.5 of the occluder;
        # in the occluder's own half (d < 0.5): the occluding pixel is uncovered by 0.5 - d
        into_other = share * (d - 0.5).clamp(min=0)[:, None]
        into_own = share * (0.5 - d).clamp(min=0)[:, None]
        delta = delta.index_add(0, n_key, into_other * (c_o - c_n)).index_add(0, o_key, into_own * (c_n - c_o))
    return (flat + delta).view_as(color)
