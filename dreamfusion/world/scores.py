"""Measurements of an exported asset against the known scene of an embedded-prior prompt.

- **IoU**: volumetric IoU of the mesh's interior (vertical-ray parity at 96^3 cell centres over [-1, 1]^3)
  and the analytic object. A prompt of one object scores the whole mesh. A two-object prompt ('a red cube on
  a blue sphere') needs the mesh split into one part per object, by one of two rules (``colour_split`` says
  which was used):
  - *by pieces*, when the mesh has at least as many connected components (faces sharing edges) with an interior
    as the scene has objects: each object gets the component that matches it best, the assignment of distinct
    components to the objects that minimises the sum over objects of |mean colour - object colour| (RGB
    distance) + (1 - IoU with the object);
  - *by colour*, when it has fewer (the objects fused into one piece, as a 48^3 mesh of two objects 0.1 apart
    usually is): each face goes to the object whose colour is nearest its colour (RGB distance; the two colours
    of a pair differ, primitives.parse_scene refuses a pair of one colour), and each interior cell of the
    whole mesh to the object of its nearest face (by face centroid). A one-colour blob thus goes to one object
    whole and leaves the other empty.
  An object left without a part (one piece too few, or no cell of its colour) scores IoU 0 and colour error 1.
- **Colour error**: the largest channel error of the area-weighted mean surface colour against the prompt's
  colour; per object for a pair (of its component's faces, or of the faces given to it by colour); for an object with a front, of the faces in its front part (object z >=
  FRONT_Z) against the front colour and of the rest against the body colour, the larger of the two.
- **Relation** (pairs): 1 when the volume centroids of the two objects' parts (components, or colour parts)
  are in the relation's order on its axis (on: first above, y; under: below; next to: first at smaller x; in
  front of: first at larger z; behind: smaller z), else 0.
- **Janus score** (objects with a front): how many of the 4 side views show the front feature; 1 is right, 4
  is a front on every side, 0 no front at all. The mesh is seen orthographically at elevation 0 along -z
  (front, camera on +z), -x (right, camera on +x), +z (back), +x (left) on a 64 x 64 grid over [-1, 1]^2 (the
  nearest face of each pixel's ray, its colour the mean of its vertex colours). A view shows the front when more
  than half of the covered pixels in its central band (the middle half of the covered width) are nearer (RGB
  distance) the front colour than the body colour. The true object shows it only from the front: its front part
  reaches FRONT_Z = 0.25 of a half-width of 0.5, so the side views' central bands (|z| <= a quarter of the width)
  stay body-coloured.
"""

from __future__ import annotations

import numpy as np
import torch

from .primitives import (COLOURS, FRONT_Z, RELATIONS, inside, parse_scene, sdf, scene_inside, scene_palette, scene_sdf,
                         surface_label)

__all__ = ["grid_points", "mesh_occupancy", "volumetric_iou", "mean_surface_albedo", "prior_scores", "scene_scores",
           "surface_scores",
           "janus_views", "face_colours", "truth_mesh"]

JANUS_VIEWS = {"front": (2, 1.0, 0), "right": (0, 1.0, 2), "back": (2, -1.0, 0), "left": (0, -1.0, 2)}
"""view -> (depth axis, sign toward the camera, horizontal image axis)."""
JANUS_RESOLUTION = 64

_JITTER = (1.234567e-5, 2.345678e-5)  # keeps query columns off triangle edges (no double counting)


def grid_points(resolution: int, bound: float) -> np.ndarray:
    """Cell centres [R^3, 3] of a regular grid over [-bound, bound]^3, x slowest, z fastest."""
    c = (np.arange(resolution) + 0.5) / resolution * 2 * bound - bound
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)


def _column_hits(tri: np.ndarray, R: int, bound: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where vertical lines (along y) through the R x R column centres of the xz grid cross triangles [F,3,3]:
    (column index ix * R + iz, y of the crossing, triangle index), one entry per crossing."""
    h = 2 * bound / R
    tri = tri.astype(np.float64).copy()
    tri[..., 0] -= _JITTER[0]
    tri[..., 2] -= _JITTER[1]
    col = lambda v: (v + bound) / h - 0.5  # world -> column index (fractional)
    lo = np.clip(np.ceil(col(tri[..., [0, 2]].min(1))), 0, R - 1).astype(int)  # [F,2]
    hi = np.clip(np.floor(col(tri[..., [0, 2]].max(1))), 0, R - 1).astype(int)
    keep = (hi >= lo).all(1)
    tri, lo, hi, index = tri[keep], lo[keep], hi[keep], np.nonzero(keep)[0]
    span = int((hi - lo).max()) + 1 if len(tri) else 0
    hits_col, hits_y, hits_face = [np.zeros(0, int)], [np.zeros(0)], [np.zeros(0, int)]
    for ox in range(span):
        for oz in range(span):
            ix, iz = lo[:, 0] + ox, lo[:, 1] + oz
            m = (ix <= hi[:, 0]) & (iz <= hi[:, 1])
            t, px, pz = tri[m], (ix[m] + 0.5) * h - bound, (iz[m] + 0.5) * h - bound
            a, b, c = t[:, 0], t[:, 1], t[:, 2]
            # barycentric coordinates of (px, pz) in the triangle's xz projection
            d = (b[:, 0] - a[:, 0]) * (c[:, 2] - a[:, 2]) - (c[:, 0] - a[:, 0]) * (b[:, 2] - a[:, 2])
            ok = np.abs(d) > 1e-18
            d = np.where(ok, d, 1.0)
            u = ((b[:, 0] - px) * (c[:, 2] - pz) - (c[:, 0] - px) * (b[:, 2] - pz)) / d
            v = ((c[:, 0] - px) * (a[:, 2] - pz) - (a[:, 0] - px) * (c[:, 2] - pz)) / d
            w = 1 - u - v
            inside = ok & (u >= 0) & (v >= 0) & (w >= 0)
            hits_col.append((ix[m] * R + iz[m])[inside])
            hits_y.append((u * a[:, 1] + v * b[:, 1] + w * c[:, 1])[inside])
            hits_face.append(index[m][inside])
    return np.concatenate(hits_col), np.concatenate(hits_y), np.concatenate(hits_face)


def mesh_occupancy(vertices: np.ndarray, faces: np.ndarray, resolution: int, bound: float) -> np.ndarray:
    """Inside test [R,R,R] bool (x, y, z indexing) of a closed mesh on the grid of `grid_points`.

    A vertical ray from each cell centre toward +y crosses the surface an odd number of times iff the
    centre is inside: every triangle is intersected with the columns its xz footprint covers.
    """
    R, h = resolution, 2 * bound / resolution
    cols, ys, _ = _column_hits(vertices[faces], R, bound)
    occ = np.zeros((R, R, R), dtype=bool)
    if not len(cols):
        return occ
    key = np.sort(cols * 4.0 * (bound + 1) + ys)  # columns never overlap: |y| <= bound
    centres = (np.arange(R) + 0.5) * h - bound
    colid = np.arange(R * R)[:, None] * 4.0 * (bound + 1)
    above = np.searchsorted(key, colid + bound + 1, side="left") - np.searchsorted(key, colid + centres[None], side="right")
    occ = (above % 2 == 1).reshape(R, R, R)  # [x, z, y]
    return occ.transpose(0, 2, 1)


def volumetric_iou(vertices: np.ndarray, faces: np.ndarray, inside_fn, resolution: int = 96,
                   bound: float = 1.0) -> float:
    """IoU of the mesh's interior and the reference inside_fn(points [M,3] torch) -> bool [M] on a grid."""
    pred = mesh_occupancy(vertices, faces, resolution, bound).reshape(-1)
    gt = inside_fn(torch.from_numpy(grid_points(resolution, bound)).float()).numpy()
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 0.0


def face_colours(mesh) -> np.ndarray:
    """Colour [F, 3] in [0, 1] of each face of a trimesh mesh with texture or vertex colours: the mean of its
    vertices' colours (a .glb's COLOR_0 beside a material comes back from trimesh as the vertex attribute 'color')."""
    attributes = getattr(mesh.visual, "vertex_attributes", {})
    if "color" in attributes:
        colors = np.asarray(attributes["color"])[:, :3].astype(np.float64) / 255.0
    else:
        visual = mesh.visual.to_color() if hasattr(mesh.visual, "to_color") else mesh.visual  # texture -> vertex
        colors = visual.vertex_colors[:, :3].astype(np.float64) / 255.0
    return colors[mesh.faces].mean(1)


def mean_surface_albedo(mesh) -> np.ndarray:
    """Area-weighted mean colour [3] in [0,1] of a trimesh mesh with texture or vertex colours."""
    area = mesh.area_faces
    return (face_colours(mesh) * area[:, None]).sum(0) / area.sum()


def _area_mean(colours: np.ndarray, area: np.ndarray) -> np.ndarray | None:
    return (colours * area[:, None]).sum(0) / area.sum() if area.sum() > 0 else None


def janus_views(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray, body, front,
                resolution: int = JANUS_RESOLUTION) -> dict[str, float]:
    """view -> fraction of the covered pixels of its central band nearer the front colour than the body colour
    (module docstring); a view shows the front when its fraction is above 0.5. colours [F, 3] per face."""
    body, front = np.asarray(body, np.float64), np.asarray(front, np.float64)
    is_front = np.linalg.norm(colours - front, axis=1) < np.linalg.norm(colours - body, axis=1)  # [F]
    out = {}
    for view, (depth, sign, across) in JANUS_VIEWS.items():
        # lay the view's axes out as (horizontal, depth toward the camera, vertical = y) for _column_hits
        v = np.stack([vertices[:, across], sign * vertices[:, depth], vertices[:, 1]], -1)
        cols, d, face = _column_hits(v[faces], resolution, 1.0)
        if not len(cols):
            out[view] = 0.0
            continue
        order = np.lexsort((-d, cols))  # per column, the nearest crossing (largest depth) first
        cols, face = cols[order], face[order]
        first = np.r_[True, cols[1:] != cols[:-1]]
        cols, face = cols[first], face[first]
        u = cols // resolution  # horizontal index
        lo, hi = u.min(), u.max() + 1
        band = np.abs(u + 0.5 - (lo + hi) / 2) <= (hi - lo) / 4
        out[view] = float(is_front[face[band]].mean()) if band.any() else 0.0
    return out


def _load_mesh(glb_path):
    import trimesh

    scene = trimesh.load(glb_path)  # a Scene keeps the vertex colours that force="mesh" would drop
    return scene if isinstance(scene, trimesh.Trimesh) else next(iter(scene.geometry.values()))


def _components(mesh, max_components: int = 6) -> list[np.ndarray]:
    """Face indices of the mesh's connected pieces (faces sharing an edge once vertices at one position are merged:
    a UV-unwrapped export's seams split its vertices, not its surface), the largest max_components by area."""
    import trimesh

    welded = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    welded.merge_vertices(merge_tex=True, merge_norm=True)  # keeps the faces and their order
    labels = trimesh.graph.connected_component_labels(welded.face_adjacency, node_count=len(mesh.faces))
    pieces = [np.nonzero(labels == k)[0] for k in np.unique(labels)]
    pieces.sort(key=lambda f: -mesh.area_faces[f].sum())
    return pieces[:max_components]


def scene_scores(mesh, prompt: str, resolution: int = 96) -> dict[str, float]:
    """A trimesh mesh with colours against the scene the prompt asks for (module docstring): ``iou`` (mean over
    objects), ``albedo_err`` (largest), per object ``iou_<k>`` / ``albedo_err_<k>``, ``relation`` for a pair and
    ``janus`` for an object with a front."""
    scene = parse_scene(prompt)
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    colours, area = face_colours(mesh), np.asarray(mesh.area_faces)
    points = torch.from_numpy(grid_points(resolution, 1.0)).float()
    truth = scene_inside(scene, points).numpy()  # [K, R^3]
    iou = lambda occ, k: float((occ & truth[k]).sum() / max((occ | truth[k]).sum(), 1))
    if len(scene.parts) == 1:
        part = scene.parts[0]
        scores = {"iou": iou(mesh_occupancy(vertices, faces, resolution, 1.0).reshape(-1), 0)}
        if part.front is None:
            mean = _area_mean(colours, area)
            scores["albedo_err"] = 1.0 if mean is None else float(np.abs(mean - np.array(COLOURS[part.colour])).max())
            return scores
        in_front = vertices[faces].mean(1)[:, 2] >= part.centre[2] + FRONT_Z * part.scale
        errs = []
        for where, colour in ((in_front, part.front), (~in_front, part.colour)):
            mean = _area_mean(colours[where], area[where])
            errs.append(float(np.abs(mean - np.array(COLOURS[colour])).max()) if mean is not None else 1.0)
        views = janus_views(vertices, faces, colours, COLOURS[part.colour], COLOURS[part.front])
        scores.update(albedo_err=max(errs), janus=float(sum(f > 0.5 for f in views.values())),
                      **{f"front_{v}": f for v, f in views.items()})
        return scores
    K = len(scene.parts)
    targets = np.array([COLOURS[part.colour] for part in scene.parts])  # [K, 3]
    pieces = []
    for f in _components(mesh):
        occ = mesh_occupancy(vertices, faces[f], resolution, 1.0).reshape(-1)
        if occ.any():
            pieces.append((occ, _area_mean(colours[f], area[f])))
    by_colour = len(pieces) < K
    if by_colour:  # one part per object, every part possibly empty (occupancy all False, mean colour None)
        pieces = _colour_parts(vertices, faces, colours, area, targets, points.numpy(), resolution)
        best = {k: k for k in range(K)}
    else:
        best = _assign_pieces(pieces, targets, iou)
    scores, centroids = {"colour_split": float(by_colour)}, {}
    for k, part in enumerate(scene.parts):
        occ, mean = pieces[best[k]]
        if occ.any() and mean is not None:
            scores[f"iou_{k}"] = iou(occ, k)
            scores[f"albedo_err_{k}"] = float(np.abs(mean - targets[k]).max())
            centroids[k] = points.numpy()[occ].mean(0)
        else:
            scores[f"iou_{k}"], scores[f"albedo_err_{k}"] = 0.0, 1.0
    axis, sign = RELATIONS[scene.relation]
    holds = len(centroids) == 2 and sign * (centroids[0][axis] - centroids[1][axis]) > 0
    scores.update(iou=float(np.mean([scores[f"iou_{k}"] for k in range(K)])),
                  albedo_err=max(scores[f"albedo_err_{k}"] for k in range(K)), relation=float(holds))
    return scores


def _assign_pieces(pieces: list, targets: np.ndarray, iou) -> dict[int, int]:
    """object k -> index of its piece (occupancy, mean colour): the assignment of distinct pieces to the objects
    with the least sum of |mean colour - object colour| + 1 - IoU (module docstring); len(pieces) >= objects."""
    from itertools import permutations

    cost = lambda k, c: np.linalg.norm(pieces[c][1] - targets[k]) + 1.0 - iou(pieces[c][0], k)
    K = len(targets)
    return min((dict(zip(range(K), p)) for p in permutations(range(len(pieces)), K)),
               key=lambda a: sum(cost(k, c) for k, c in a.items()))


def _colour_parts(vertices, faces, colours, area, targets, grid, resolution) -> list[tuple[np.ndarray, object]]:
    """The split by colour (module docstring): per object, (occupancy [R^3] of the interior cells whose nearest
    face is nearest its colour, area-weighted mean colour of those faces or None)."""
    from scipy.spatial import cKDTree

    label = np.linalg.norm(colours[:, None] - targets[None], axis=-1).argmin(1)  # [F] nearest object colour
    occ = mesh_occupancy(vertices, faces, resolution, 1.0).reshape(-1)
    cell = np.full(occ.shape, -1)
    if occ.any():
        _, nearest = cKDTree(vertices[faces].mean(1)).query(grid[occ])
        cell[occ] = label[nearest]
    return [(cell == k, _area_mean(colours[label == k], area[label == k])) for k in range(len(targets))]


def truth_mesh(prompt: str, resolution: int = 96, colour_rule=None, bridge: float = 0.0):
    """The prompt's true scene as a trimesh mesh with vertex colours: marching cubes at `resolution` of a density
    exp(-40 sdf) at level 1 (the surface sdf = 0), coloured by the scene's surface labels (or by
    ``colour_rule(points [V,3]) -> colour names``, to build deliberately wrong assets in tests). ``bridge`` > 0
    joins a pair's objects by a rod of that radius between their centres (one piece, as trained pairs come out)."""
    import trimesh

    from ..export import extract_mesh

    scene = parse_scene(prompt)

    def distance(p):
        d = scene_sdf(scene, p)[0]
        if bridge > 0 and len(scene.parts) == 2:
            a, b = (p.new_tensor(part.centre) for part in scene.parts)
            s = (((p - a) @ (b - a)) / (b - a).dot(b - a)).clamp(0, 1)
            d = torch.minimum(d, (p - a - s[:, None] * (b - a)).norm(dim=-1) - bridge)
        return d

    density = lambda p: torch.exp(-40.0 * distance(p)).clamp(max=1e6)
    vertices, faces = extract_mesh(density, 1.0, resolution, threshold=1.0, min_component_ratio=0.0,
                                    device="cpu")  # the truth is a CPU computation
    points = torch.from_numpy(vertices).float()
    names = colour_rule(points) if colour_rule else [scene_palette(scene)[i] for i in surface_label(scene, points)]
    rgb = np.round(255 * np.array([COLOURS[n] for n in names])).astype(np.uint8)
    return trimesh.Trimesh(vertices, faces, vertex_colors=rgb, process=False)


def surface_scores(vertices: np.ndarray, faces: np.ndarray, shape: str, points: int = 20000,
                   seed: int = 0) -> dict[str, float]:
    """How close a mesh's surface lies to a primitive's, at ``points`` points sampled uniformly by area (seeded):
    ``normal_deg``, the mean angle between the mesh's face normal and the primitive's (the gradient of its SDF,
    primitives.sdf, at the point), and ``surface_dist``, the mean |SDF| (distance to the true surface)."""
    v, f = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cross = np.cross(b - a, c - a)
    area = np.linalg.norm(cross, axis=1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(f), size=points, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(points)), rng.random(points)  # uniform in a triangle
    p = (1 - r1)[:, None] * a[pick] + (r1 * (1 - r2))[:, None] * b[pick] + (r1 * r2)[:, None] * c[pick]
    normal = cross[pick] / np.maximum(area[pick], 1e-30)[:, None]
    x = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    d = sdf(shape, x)
    (grad,) = torch.autograd.grad(d.sum(), x)
    true = torch.nn.functional.normalize(grad, dim=-1).numpy()
    cos = np.clip((normal * true).sum(1), -1.0, 1.0)
    return {"normal_deg": float(np.degrees(np.arccos(cos)).mean()), "surface_dist": float(d.detach().abs().mean())}


def prior_scores(glb_path, prompt: str, resolution: int = 96) -> dict[str, float]:
    """A mesh made under the embedded prior against the prompt's known scene. A prompt of the first vocabulary
    ('a red cube'): volumetric IoU with the analytic primitive and the largest per-channel error of the mean
    surface albedo against its colour (and that albedo); any other prompt: ``scene_scores``."""
    mesh = _load_mesh(glb_path)
    scene = parse_scene(prompt)
    if not scene.legacy:
        return scene_scores(mesh, prompt, resolution)
    shape, colour = scene.parts[0].shape, scene.parts[0].colour
    iou = volumetric_iou(np.asarray(mesh.vertices), np.asarray(mesh.faces), lambda p: inside(shape, p), resolution)
    albedo = mean_surface_albedo(mesh)
    return {"iou": iou, "albedo_err": float(np.abs(albedo - np.array(COLOURS[colour])).max()),
            "albedo_r": float(albedo[0]), "albedo_g": float(albedo[1]), "albedo_b": float(albedo[2])}
