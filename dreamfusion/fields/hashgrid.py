"""Multiresolution hash encoding (Instant-NGP, Müller et al. 2022, §3) in plain PyTorch, and its tcnn twin.

Level ``l`` has resolution ``R_l = floor(base_resolution * per_level_scale**l)`` (cells per side of the
unit cube, ``R_l + 1`` vertices) and a table of ``T_l = min(2**log2_hashmap_size, (R_l + 1)**3)`` entries
of ``n_features_per_level`` features, initialised U(-1e-4, 1e-4) (paper §4). A level whose dense grid
fits its table is indexed densely, ``i = x + y (R+1) + z (R+1)^2``; the others use the spatial hash of
the paper's eq. (4), ``(x * 1 xor y * 2654435761 xor z * 805459861) mod T``. The features of the cell's
8 corners are trilinearly interpolated and the levels concatenated: ``[M, L * F]``.

CPU speed: the levels share one table (``embeddings``, level ``l`` at row ``offsets[l]``); the dense
levels and the hashed levels each go through one index computation, one gather and one interpolation
spanning all their levels (no Python loop over levels or points). With ``F = 2`` an entry is read as one
complex number and the table is viewed as 1-D, so the gather and its backward (an ``index_add_``) take
their 1-D fast paths (2-3x the speed of the ``[N, 1]`` row copies and ``scatter_add_``); the corner index
is int32. Large tensors keep the points as their last, contiguous axis, so broadcasting stays vectorised.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import FieldConfig
from ..settings import check_choice
from ..errors import ConfigError

__all__ = ["HashGrid", "TcnnHashGrid", "make_hashgrid", "level_resolutions", "level_table_sizes"]

_PRIMES = (1, 2654435761, 805459861)  # Instant-NGP eq. (4); pi_1 = 1 keeps x-neighbours close in memory
_NO_GRAD_CHUNK = 2 ** 18  # points per pass without autograd (~0.6 GB of temporaries at the default config)


def level_resolutions(n_levels: int, base_resolution: int, per_level_scale: float) -> list[int]:
    """R_l = floor(base_resolution * per_level_scale**l): cells per side of level l."""
    return [int(math.floor(base_resolution * per_level_scale ** level)) for level in range(n_levels)]


def level_table_sizes(resolutions: list[int], log2_hashmap_size: int) -> list[int]:
    """T_l = min(2**log2_hashmap_size, (R_l + 1)**3); level l is hashed iff (R_l + 1)**3 > 2**log2_hashmap_size."""
    return [min(2 ** log2_hashmap_size, (res + 1) ** 3) for res in resolutions]


class HashGrid(nn.Module):
    """Points ``[M, 3]`` in ``[-bound, bound]^3`` (clamped to the box) -> features ``[M, n_levels * F]``."""

    def __init__(self, bound: float = 1.0, n_levels: int = 16, n_features_per_level: int = 2,
                 log2_hashmap_size: int = 19, base_resolution: int = 16, per_level_scale: float = 1.447):
        super().__init__()
        if min(n_levels, n_features_per_level, log2_hashmap_size, base_resolution) < 1 or per_level_scale <= 0:
            raise ConfigError(f"hash grid sizes must be positive, got n_levels={n_levels}, "
                              f"n_features_per_level={n_features_per_level}, log2_hashmap_size={log2_hashmap_size}, "
                              f"base_resolution={base_resolution}, per_level_scale={per_level_scale}")
        self.bound = float(bound)
        self.n_levels = n_levels
        self.n_features_per_level = n_features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.output_dim = n_levels * n_features_per_level
        self.resolutions = level_resolutions(n_levels, base_resolution, per_level_scale)
        if min(self.resolutions) < 1:
            raise ConfigError(f"hash grid level resolutions must be >= 1, got {self.resolutions}: "
                              f"raise field.hashgrid.base_resolution or field.hashgrid.per_level_scale")
        self.table_sizes = level_table_sizes(self.resolutions, log2_hashmap_size)
        self.hashed = [(res + 1) ** 3 > 2 ** log2_hashmap_size for res in self.resolutions]
        self.offsets = [sum(self.table_sizes[:level]) for level in range(n_levels)]
        self.embeddings = nn.Parameter(
            torch.empty(sum(self.table_sizes), n_features_per_level).uniform_(-1e-4, 1e-4))  # [N, F]
        self._int32_index = sum(self.table_sizes) < 2 ** 31  # every row number fits an int32
        # Levels come in two groups, dense then hashed (in level order within each); each group is
        # encoded with tensors spanning its levels. Per level: resolution, table offset, and the index
        # multiplier of each axis (dense strides 1, R+1, (R+1)^2, or the hash primes).
        self._groups: list[tuple[str, bool]] = []
        for name, hashed in (("dense", False), ("hashed", True)):
            levels = [level for level in range(n_levels) if self.hashed[level] == hashed]
            if not levels:
                continue
            res = torch.tensor([self.resolutions[level] for level in levels])
            if hashed:
                mult = torch.tensor(_PRIMES).expand(len(levels), 3).contiguous()
            else:
                mult = torch.stack([torch.ones_like(res), res + 1, (res + 1) ** 2], 1)
            self.register_buffer(f"_{name}_res", res, persistent=False)  # [Lg]
            self.register_buffer(f"_{name}_mult", mult, persistent=False)  # [Lg, 3]
            self.register_buffer(f"_{name}_offset", torch.tensor([self.offsets[lv] for lv in levels]), persistent=False)
            # R_l is monotonic in l, so each group is one run of levels: its slice of the output
            self._groups.append((name, hashed, slice(min(levels), max(levels) + 1)))

    def forward(self, points: Tensor) -> Tensor:  # [M, 3] -> [M, L * F]
        if points.dim() != 2 or points.shape[-1] != 3:
            raise ValueError(f"HashGrid expects points [M, 3], got {list(points.shape)}")
        n_points = points.shape[0]
        if n_points > _NO_GRAD_CHUNK and not torch.is_grad_enabled():  # export / preview: bound the temporaries
            return torch.cat([self(chunk) for chunk in points.split(_NO_GRAD_CHUNK)])
        unit = ((points.t().to(self.embeddings.dtype) + self.bound) / (2.0 * self.bound)).clamp(0.0, 1.0)  # [3, M]
        table = self.embeddings
        if table.device.type == "cpu" and table.is_floating_point() and self.n_features_per_level % 2 == 0:
            table = torch.view_as_complex(table.view(table.shape[0], -1, 2))  # an entry as F/2 complex numbers
            if self.n_features_per_level == 2:  # 1-D: index_select and its backward take their fast 1-D paths
                table = table.view(-1)
        unit = unit.contiguous()
        feats = unit.new_empty(n_points, self.n_levels, self.n_features_per_level)  # [M, L, F]
        for name, hashed, levels in self._groups:  # each group's [Lg, M, F] written once into its levels
            feats[:, levels] = self._encode_group(unit, table, name, hashed).transpose(0, 1)
        return feats.view(n_points, self.output_dim)

    def _encode_group(self, unit: Tensor, table: Tensor, name: str, hashed: bool) -> Tensor:
        """Interpolated features of one group of levels: unit points ``[3, M]`` -> ``[Lg, M, F]``."""
        res, mult, offset = (getattr(self, f"_{name}_{key}") for key in ("res", "mult", "offset"))
        n_levels, n_points, n_feat = res.shape[0], unit.shape[1], self.n_features_per_level
        res_f = res.to(unit.dtype).view(-1, 1, 1)
        pos = unit.unsqueeze(0) * res_f  # [Lg, 3, M]
        with torch.no_grad():  # lower cell corner; a point on the upper face (u = 1) takes the last cell, frac = 1
            corner = torch.minimum(pos.floor(), res_f - 1)
        frac = pos - corner  # [Lg, 3, M]; d frac / d pos = 1 (floor is locally constant)
        index = self._corner_index(corner.long(), mult, offset, hashed)  # [Lg, 2, 2, 2, M]

        gathered = table.index_select(0, index.view(-1))
        if gathered.is_complex():
            gathered = torch.view_as_real(gathered)
        # A point's features stay interleaved: the last axis is M * F, contiguous.
        gathered = gathered.view(n_levels, 2, 2, 2, n_points * n_feat)
        if n_feat == 2:  # each weight twice, interleaved like the features; as a complex number, one fast pass
            weights = torch.view_as_real(torch.complex(frac, frac)).view(n_levels, 3, n_points * n_feat)
        else:
            weights = frac.unsqueeze(-1).expand(-1, -1, -1, n_feat).reshape(n_levels, 3, n_points * n_feat)
        return _Trilerp.apply(gathered, weights).view(n_levels, n_points, n_feat)

    @torch.no_grad()
    def _corner_index(self, corner: Tensor, mult: Tensor, offset: Tensor, hashed: bool) -> Tensor:
        """Table rows of the 8 corners: lower corners ``[Lg, 3, M]`` -> ``[Lg, 2, 2, 2, M]`` (x, y, z bits)."""
        step = torch.arange(2, device=corner.device).view(1, 1, 2, 1)
        terms = (corner.unsqueeze(2) + step).mul_(mult.view(-1, 3, 1, 1))  # [Lg, 3, 2, M]: lower / upper per axis
        if hashed:
            # (a ^ b ^ c) mod 2^k = (a mod 2^k) ^ (b mod 2^k) ^ (c mod 2^k): mask the per-axis terms.
            terms.bitwise_and_(2 ** self.log2_hashmap_size - 1)
        if self._int32_index:  # the 8x larger corner index in int32: half the memory traffic, same values
            terms = terms.to(torch.int32)
            offset = offset.to(torch.int32)
        if hashed:
            index = torch.bitwise_xor(terms[:, 0, :, None], terms[:, 1, None, :])  # [Lg, 2, 2, M]
            index = torch.bitwise_xor(index[:, :, :, None], terms[:, 2, None, None])  # [Lg, 2, 2, 2, M]
            return index.add_(offset.view(-1, 1, 1, 1, 1))
        terms[:, 0].add_(offset.view(-1, 1, 1))
        index = torch.add(terms[:, 0, :, None], terms[:, 1, None, :])
        return torch.add(index[:, :, :, None], terms[:, 2, None, None])


def _trilerp(corners: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Trilinear interpolation as three lerps, z then y then x; lerp(a, b, w) = a + w (b - a).

    corners ``[Lg, 2, 2, 2, S]`` (x, y, z corner bits), weights ``[Lg, 3, S]`` (fx, fy, fz)
    -> out ``[Lg, S]``, and the intermediates cz ``[Lg, 2, 2, S]`` (z done), cy ``[Lg, 2, S]`` (z, y done).
    """
    wx, wy, wz = weights.unbind(1)
    cz = torch.lerp(corners[:, :, :, 0], corners[:, :, :, 1], wz[:, None, None])
    cy = torch.lerp(cz[:, :, 0], cz[:, :, 1], wy[:, None])
    return torch.lerp(cy[:, 0], cy[:, 1], wx), cz, cy


def _trilerp_vjp(grad: Tensor, corners: Tensor, weights: Tensor, cz: Tensor, cy: Tensor,
                 need_corners: bool, need_weights: bool) -> tuple[Tensor | None, Tensor | None]:
    """Vector-Jacobian product of :func:`_trilerp` in differentiable ops (so it has a backward itself).

    d lerp(a, b, w) = (1 - w) da + w db + (b - a) dw, hence d out / d c_xyz = W_x W_y W_z with
    W_0 = 1 - w, W_1 = w, and d out / d w_a = the other two axes' bilinear interpolation of the
    difference along a: slope_x = cy_1 - cy_0, slope_y = lerp_x(cz_x1 - cz_x0), slope_z = bilerp_xy(c_xy1 - c_xy0).
    """
    wx, wy, wz = weights.unbind(1)  # [Lg, S]
    grad_corners = grad_weights = None
    if need_corners:
        grad_cy = torch.stack([1 - wx, wx], 1) * grad[:, None]  # [Lg, 2, S]
        grad_cz = grad_cy[:, :, None] * torch.stack([1 - wy, wy], 1)[:, None]  # [Lg, 2, 2, S]
        grad_corners = grad_cz[:, :, :, None] * torch.stack([1 - wz, wz], 1)[:, None, None]  # [Lg, 2, 2, 2, S]
    if need_weights:
        dz = corners[:, :, :, 1] - corners[:, :, :, 0]  # [Lg, 2, 2, S]
        dz = torch.lerp(dz[:, :, 0], dz[:, :, 1], wy[:, None])  # [Lg, 2, S]
        dy = cz[:, :, 1] - cz[:, :, 0]  # [Lg, 2, S]
        slopes = torch.stack([cy[:, 1] - cy[:, 0], torch.lerp(dy[:, 0], dy[:, 1], wx),
                              torch.lerp(dz[:, 0], dz[:, 1], wx)], 1)  # [Lg, 3, S]
        grad_weights = slopes * grad[:, None]
    return grad_corners, grad_weights


class _Trilerp(torch.autograd.Function):
    """:func:`_trilerp` with a hand-written backward: the corner gradient is written once (autograd's
    lerp / unbind backward makes several full-size temporaries and a stack), and the weight gradient is
    only computed when the points need one. Under ``create_graph=True`` (normals from the density
    gradient) the backward recomputes the intermediates from the inputs, so autograd traces it."""

    @staticmethod
    def forward(ctx, corners: Tensor, weights: Tensor) -> Tensor:
        out, cz, cy = _trilerp(corners, weights)
        ctx.save_for_backward(corners, weights, cz, cy)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        corners, weights, cz, cy = ctx.saved_tensors
        grad = grad.contiguous()  # arrives as a transposed view of [M, L, F]
        if torch.is_grad_enabled():  # create_graph: saved intermediates carry no graph, recompute them
            _, cz, cy = _trilerp(corners, weights)
        return _trilerp_vjp(grad, corners, weights, cz, cy, ctx.needs_input_grad[0], ctx.needs_input_grad[1])


class TcnnHashGrid(nn.Module):
    """The same encoding through tiny-cuda-nn's fused CUDA kernel (``HashGrid`` settings, tcnn's own
    grid alignment: values differ from :class:`HashGrid` by tcnn's half-cell offset, training behaves alike)."""

    def __init__(self, bound: float = 1.0, n_levels: int = 16, n_features_per_level: int = 2,
                 log2_hashmap_size: int = 19, base_resolution: int = 16, per_level_scale: float = 1.447):
        super().__init__()
        tcnn = _import_tcnn()
        self.bound = float(bound)
        self.n_levels = n_levels
        self.n_features_per_level = n_features_per_level
        self.output_dim = n_levels * n_features_per_level
        self.encoding = tcnn.Encoding(3, {
            "otype": "HashGrid", "n_levels": n_levels, "n_features_per_level": n_features_per_level,
            "log2_hashmap_size": log2_hashmap_size, "base_resolution": base_resolution,
            "per_level_scale": per_level_scale,
        }, dtype=torch.float32)

    def forward(self, points: Tensor) -> Tensor:  # [M, 3] -> [M, L * F]
        if points.dim() != 2 or points.shape[-1] != 3:
            raise ValueError(f"TcnnHashGrid expects points [M, 3], got {list(points.shape)}")
        unit = ((points + self.bound) / (2.0 * self.bound)).clamp(0.0, 1.0)
        return self.encoding(unit).float()


def _import_tcnn():
    try:
        import tinycudann as tcnn
    except ImportError as exc:
        raise ConfigError(
            "field.hashgrid.backend=tcnn needs tinycudann, which is not on PyPI: build it on a CUDA machine with "
            "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch, "
            f"or use field.hashgrid.backend=torch ({exc})") from None
    return tcnn


def _tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return False
    return True


def make_hashgrid(cfg: FieldConfig, device: torch.device | str = "cpu") -> nn.Module:
    """tcnn when ``backend == 'tcnn'`` (or ``'auto'`` on CUDA with tinycudann importable), else the torch grid; settings from ``cfg.hashgrid``."""
    device = torch.device(device)
    h = cfg.hashgrid
    kwargs = dict(bound=cfg.bound, n_levels=h.n_levels, n_features_per_level=h.n_features_per_level,
                  log2_hashmap_size=h.log2_hashmap_size, base_resolution=h.base_resolution,
                  per_level_scale=h.per_level_scale)
    backend = check_choice(h, "backend", "field.hashgrid.backend")
    use_tcnn = backend == "tcnn" or (backend == "auto" and device.type == "cuda" and _tcnn_available())
    if use_tcnn:
        if device.type != "cuda":
            raise ConfigError(f"field.hashgrid.backend=tcnn needs a CUDA device, got {device}; "
                              f"use field.hashgrid.backend=torch")
        return TcnnHashGrid(**kwargs).to(device)
    return HashGrid(**kwargs).to(device)
