"""Cameras around the object: positions from angles, OpenGL look-at, random and orbit batches.

Conventions (docs/DESIGN.md): world is y up; the object's front faces +z. A camera at azimuth 0,
elevation 0 sits on +z; azimuth 90 puts it on +x; elevation > 0 is above. Camera-to-world matrices
are OpenGL style: the camera looks along its local -z, local +y is image up, local +x image right.
Angles are degrees everywhere except ``Cameras.fovy``, which is radians.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["Cameras", "camera_position", "look_at", "sample_cameras", "group_cameras", "orbit_cameras"]


class Cameras(NamedTuple):
    """A batch of B pinhole cameras."""

    c2w: Tensor  # [B, 4, 4] camera-to-world, OpenGL axes
    fovy: Tensor  # [B] vertical field of view, radians
    elevation: Tensor  # [B] degrees
    azimuth: Tensor  # [B] degrees in [-180, 180)
    distance: Tensor  # [B] distance from the origin

    @property
    def position(self) -> Tensor:
        """Camera centres in world space, [B, 3]."""
        return self.c2w[:, :3, 3]

    def to(self, device) -> "Cameras":
        return Cameras(*(x.to(device) for x in self))

    def index(self, idx) -> "Cameras":
        """The cameras selected by ``idx`` (int, slice, index or bool tensor); an int keeps the batch dim."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return Cameras(*(x[idx] for x in self))


def _wrap_azimuth(azimuth_deg: Tensor) -> Tensor:
    """Azimuth in degrees wrapped to [-180, 180)."""
    return torch.remainder(azimuth_deg + 180.0, 360.0) - 180.0


def _unit_direction(elevation_deg: Tensor, azimuth_deg: Tensor) -> Tensor:
    el, az = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], dim=-1)


def camera_position(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """``distance * (cos(el) sin(az), sin(el), cos(el) cos(az))``: [B] x3 -> [B, 3]."""
    elevation_deg, azimuth_deg, distance = torch.broadcast_tensors(
        torch.as_tensor(elevation_deg, dtype=torch.float32),
        torch.as_tensor(azimuth_deg, dtype=torch.float32),
        torch.as_tensor(distance, dtype=torch.float32))
    return distance[..., None] * _unit_direction(elevation_deg, azimuth_deg)


def _normalize(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def _c2w_from_axes(x: Tensor, y: Tensor, z: Tensor, eye: Tensor) -> Tensor:
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, eye
    c2w[:, 3, 3] = 1.0
    return c2w


def look_at(eye: Tensor, target: Optional[Tensor] = None, up: Sequence[float] = (0.0, 1.0, 0.0)) -> Tensor:
    """OpenGL camera-to-world matrices of cameras at ``eye`` [B, 3] looking at ``target`` [B, 3].

    ``target=None`` is the origin. Local -z points from eye to target, local +x = up x z (image right),
    local +y = z x x. When the view is parallel to ``up`` (a camera straight above or below the target)
    the right axis is taken as the limit from azimuth 0, i.e. image right = +x for the default up:
    finite and orthonormal, no NaN.
    """
    if eye.dim() != 2 or eye.shape[-1] != 3:
        raise ValueError(f"look_at: eye must be [B, 3], got {tuple(eye.shape)}")
    if target is None:
        target = torch.zeros_like(eye)
    target = target.to(eye).expand_as(eye)
    up_t = _normalize(torch.as_tensor(up, dtype=eye.dtype, device=eye.device)).expand_as(eye)
    offset = eye - target
    if bool((offset.norm(dim=-1) == 0).any()):
        raise ValueError("look_at: eye and target coincide, the view direction is undefined")
    z = _normalize(offset)  # camera looks along -z, so +z points from target back to the eye
    x = torch.cross(up_t, z, dim=-1)
    x_norm = x.norm(dim=-1, keepdim=True)
    # Degenerate (view parallel to up): use "front" (world +z made perpendicular to up, or world +x)
    # flipped by the side we look from; e.g. from straight above, image up is -z and right is +x.
    front = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    front = front - (front * up_t).sum(-1, keepdim=True) * up_t
    if float(front.norm(dim=-1).min()) < 1e-6:
        front = torch.tensor([1.0, 0.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
        front = front - (front * up_t).sum(-1, keepdim=True) * up_t
    side = torch.sign((z * up_t).sum(-1, keepdim=True))
    fallback_up = -side * _normalize(front)
    x_fallback = torch.cross(fallback_up, z, dim=-1)
    x = torch.where(x_norm < 1e-6, x_fallback, x)
    x = _normalize(x)
    y = torch.cross(z, x, dim=-1)
    return _c2w_from_axes(x, y, z, eye)


def _orbit_c2w(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """look_at(camera_position(...)) written from the angles: right = (cos az, 0, -sin az) exactly,
    so cameras at elevation +-90 keep the image orientation of their azimuth."""
    z = _unit_direction(elevation_deg, azimuth_deg)
    az = torch.deg2rad(azimuth_deg)
    x = torch.stack([torch.cos(az), torch.zeros_like(az), -torch.sin(az)], dim=-1)
    y = torch.cross(z, x, dim=-1)
    return _c2w_from_axes(x, y, z, distance[:, None] * z)


def _check_range(name: str, value: Sequence[float]) -> tuple[float, float]:
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"{name} must be (min, max) with min <= max, got {tuple(value)}")
    return float(value[0]), float(value[1])


def sample_cameras(n: int, elevation_range: Sequence[float], azimuth_range: Sequence[float],
                   distance_range: Sequence[float], fovy_range: Sequence[float],
                   generator: Optional[torch.Generator] = None, device=None) -> Cameras:
    """``n`` cameras looking at the origin, each quantity uniform in its (min, max) range.

    Elevation, azimuth and fovy ranges are in degrees (elevation is uniform in angle, not in area on
    the sphere); distance in scene units. Draws come from ``generator`` (on its own device), then move
    to ``device``, so a seeded CPU generator gives the same cameras on every device.
    """
    if n <= 0:
        raise ValueError(f"sample_cameras: n must be positive, got {n}")
    ranges = [_check_range(name, r) for name, r in (
        ("elevation_range", elevation_range), ("azimuth_range", azimuth_range),
        ("distance_range", distance_range), ("fovy_range", fovy_range))]
    if ranges[2][0] <= 0:
        raise ValueError(f"distance_range must be positive, got {tuple(distance_range)}")
    gen_device = generator.device if generator is not None else device
    u = torch.rand(4, n, generator=generator, device=gen_device).to(device)
    lo = torch.tensor([r[0] for r in ranges], device=u.device)[:, None]
    hi = torch.tensor([r[1] for r in ranges], device=u.device)[:, None]
    elevation, azimuth, distance, fovy_deg = lo + (hi - lo) * u
    azimuth = _wrap_azimuth(azimuth)
    return Cameras(_orbit_c2w(elevation, azimuth, distance), torch.deg2rad(fovy_deg), elevation, azimuth, distance)


def group_cameras(cams: Cameras, n_views: int) -> Cameras:
    """Each of ``cams``' B cameras as a group of ``n_views`` (B * n_views cameras, group by group): the same
    elevation, distance and field of view, azimuths 360 / n_views degrees apart starting at the camera's own
    (MVDream's four orthogonal views for n_views = 4)."""
    if n_views < 1:
        raise ValueError(f"group_cameras: n_views must be positive, got {n_views}")
    step = 360.0 * torch.arange(n_views, device=cams.azimuth.device, dtype=cams.azimuth.dtype) / n_views
    azimuth = _wrap_azimuth((cams.azimuth[:, None] + step).reshape(-1))
    elevation, distance, fovy = (x.repeat_interleave(n_views) for x in (cams.elevation, cams.distance, cams.fovy))
    return Cameras(_orbit_c2w(elevation, azimuth, distance), fovy, elevation, azimuth, distance)


def orbit_cameras(n: int, elevation: float, distance: float, fovy: float, device=None) -> Cameras:
    """``n`` cameras on a circle: azimuth -180 + 360 k / n degrees, fixed elevation (deg), distance, fovy (deg)."""
    if n <= 0:
        raise ValueError(f"orbit_cameras: n must be positive, got {n}")
    azimuth = _wrap_azimuth(-180.0 + 360.0 * torch.arange(n, device=device, dtype=torch.float32) / n)
    elevation_t = torch.full((n,), float(elevation), device=device)
    distance_t = torch.full((n,), float(distance), device=device)
    fovy_t = torch.full((n,), math.radians(fovy), device=device)
    return Cameras(_orbit_c2w(elevation_t, azimuth, distance_t), fovy_t, elevation_t, azimuth, distance_t)
