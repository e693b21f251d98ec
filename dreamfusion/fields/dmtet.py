"""DMTet surface field (Shen et al. 2021; Magic3D's fine stage, arXiv 2211.10440 §3.2): a signed distance and a
deformation stored at the vertices of a tetrahedral grid, the surface extracted by marching tetrahedra, and an
albedo texture field (the hash grid and a small MLP) queried at surface points.

    grid'    = grid + max_deform * tanh(deformation)       each vertex moves at most ``max_deform`` cells
    surface  = marching_tets(grid', sdf, tets)             vertices [M, 3], faces [K, 3], outward
    albedo   = sigmoid(MLP(HashGrid(x)))                   at the points the rasterizer sees

The surface is differentiable in ``sdf`` and ``deformation`` (render/tets.py), so a rasterized render's
gradient reaches the geometry through the visible points' positions and the silhouettes' antialiasing.
Its own regularisers (``regularizers``) are the normal consistency of adjacent faces, 1 - cos of their
normals (threestudio's magic3d-refine weight 1e4 on it), and the uniform Laplacian of the surface vertices
(stable-dreamfusion --dmtet: 0.5). They read the surface of the last ``surface()`` call, so a training step
extracts it once.

The tetrahedral grid is generated at run time (render/tets.py); the field holds no mesh files.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from render.tets import face_adjacency, marching_tets, tet_grid

from .base import Field
from .decoder import check_points
from .hashgrid import make_hashgrid

__all__ = ["DMTetField", "normal_consistency", "laplacian"]


class DMTetField(Field):
    """A surface field (DESIGN.md "Fields"): ``surface() -> (vertices [M, 3], faces [K, 3])`` and
    ``albedo(points [M, 3]) -> [M, C]``; ``forward`` gives the albedo and a density read off the SDF for the
    volumetric callers (a sharp step at the surface, for export's and the scores' inside tests)."""

    rasterized = True

    def __init__(self, cfg, device: torch.device | str = "cpu", albedo_channels: int = 3):
        super().__init__()
        settings = cfg.dmtet
        self.bound = float(cfg.bound)
        self.albedo_channels = albedo_channels
        self.resolution = int(settings.resolution)
        grid, tets = tet_grid(self.resolution, device=device)
        self.register_buffer("grid", grid * self.bound)  # [N, 3] spanning [-bound, bound]^3
        self.register_buffer("tets", tets)  # [T, 4]
        cell = 2 * self.bound / self.resolution
        self.max_deform = float(settings.max_deform) * cell
        # a sphere of radius init_radius until a coarse run's SDF is loaded (conversion)
        self.sdf = nn.Parameter(grid.norm(dim=-1) * self.bound - float(settings.init_radius))
        self.deformation = nn.Parameter(torch.zeros_like(grid))
        self.train_geometry = bool(settings.train_geometry)  # false: texture only (DreamGaussian's stage 2)
        self.normal_edge = float(settings.normal_edge)  # > 0: edge-preserving normal consistency
        self.sdf.requires_grad_(self.train_geometry)
        self.deformation.requires_grad_(self.train_geometry)
        self.encoding = make_hashgrid(cfg, device)
        width = cfg.hidden_dim
        self.mlp = nn.Sequential(nn.Linear(self.encoding.output_dim, width), nn.ReLU(inplace=True),
                                 nn.Linear(width, albedo_channels)).to(device)
        self._surface: tuple[Tensor, Tensor] | None = None
        self._adjacency: Tensor | None = None

    def vertices(self) -> Tensor:
        """The deformed grid [N, 3]."""
        return self.grid + self.max_deform * torch.tanh(self.deformation)

    def surface(self) -> tuple[Tensor, Tensor]:
        """The zero level set: vertices [M, 3] (with the graph to sdf and deformation) and faces [K, 3]."""
        self._surface = marching_tets(self.vertices(), self.sdf, self.tets)
        self._adjacency = None
        return self._surface

    def adjacency(self) -> Tensor:
        """face_adjacency of the last ``surface()``'s faces, made once (the renderer's antialiasing and the normal
        consistency both walk it)."""
        if self._adjacency is None:
            self._adjacency = face_adjacency(self._surface[1])
        return self._adjacency

    def albedo(self, points: Tensor) -> Tensor:  # [M, 3] -> [M, C]
        check_points(points)
        raw = self.mlp(self.encoding(points))
        return torch.sigmoid(raw) if self.albedo_channels == 3 else raw

    def forward(self, points: Tensor) -> dict[str, Tensor]:
        """Albedo, and a density of 1e3 inside the surface and 0 outside, read off the SDF interpolated
        trilinearly on the undeformed grid (an approximation for volumetric callers; renders rasterize)."""
        check_points(points)
        n = self.resolution + 1
        volume = self.sdf.view(1, 1, n, n, n)  # grid index order z, y, x (render/tets.py)
        where = (points / self.bound).view(1, -1, 1, 1, 3)
        value = torch.nn.functional.grid_sample(volume, where, align_corners=True).view(-1)
        inside = (points.abs() <= self.bound).all(-1) & (value < 0)
        return {"density": inside.to(points.dtype) * 1e3, "albedo": self.albedo(points)}

    def param_groups(self, optim_cfg) -> list[dict]:
        """Adam groups: the SDF and the deformation at ``optim.dmtet_lr`` (unless the geometry is fixed), the
        texture's hash table at ``encoding_lr`` and its MLP at ``network_lr``."""
        geometry = [{"name": "geometry", "params": [self.sdf, self.deformation], "lr": optim_cfg.dmtet_lr}]
        return (geometry if self.train_geometry else []) + [
            {"name": "encoding", "params": list(self.encoding.parameters()), "lr": optim_cfg.encoding_lr},
            {"name": "network", "params": list(self.mlp.parameters()), "lr": optim_cfg.network_lr}]

    def regularizers(self) -> dict[str, Tensor]:
        if not self.train_geometry or self._surface is None or len(self._surface[1]) == 0:
            return {}
        vertices, faces = self._surface
        return {"loss_normal_consistency": normal_consistency(vertices, faces, self.adjacency(), self.normal_edge),
                "loss_laplacian": laplacian(vertices, faces)}


def _face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    return torch.nn.functional.normalize(torch.linalg.cross(b - a, c - a), dim=-1, eps=1e-12)


def normal_consistency(vertices: Tensor, faces: Tensor, across: Tensor | None = None, edge: float = 0.0) -> Tensor:
    """Mean over the edges shared by two faces of x = 1 - cos(angle between their normals): 0 for a flat sheet.
    ``across``: ``face_adjacency(faces)`` when the caller has it already. ``edge`` c > 0: the mean of
    c x / (x + c) instead (Geman-McClure), equal to x for bends far below c and at most c for a sharp edge,
    so a cube's edges are not rounded off (field.dmtet.normal_edge)."""
    across = face_adjacency(faces) if across is None else across  # [K, 3]
    own = torch.arange(len(faces), device=faces.device)[:, None].expand_as(across)
    pair = across > own  # each shared edge once (boundary edges have -1)
    if not bool(pair.any()):
        return vertices.new_zeros(())
    normals = _face_normals(vertices, faces)
    bend = 1 - (normals[own[pair]] * normals[across[pair]]).sum(-1)
    return (edge * bend / (bend + edge)).mean() if edge > 0 else bend.mean()


def laplacian(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean squared length of the uniform Laplacian: each vertex against the mean of its edge neighbours."""
    edges = torch.sort(torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), dim=1).values
    n = len(vertices)
    key = torch.unique(edges[:, 0] * n + edges[:, 1])  # each undirected edge once (1-D: unique(dim=0) is slow)
    edges = torch.stack([key // n, key % n], dim=1)
    both = torch.cat([edges, edges.flip(1)])  # each undirected edge from both ends
    total = torch.zeros_like(vertices).index_add(0, both[:, 0], vertices[both[:, 1]])
    count = torch.zeros(len(vertices), device=vertices.device, dtype=vertices.dtype).index_add(
        0, both[:, 0], torch.ones(len(both), device=vertices.device, dtype=vertices.dtype))
    used = count > 0
    offset = total[used] / count[used, None] - vertices[used]
    return (offset ** 2).sum(-1).mean()
