"""The embedded prior's vocabulary: analytic primitives, their colours, and their silhouettes.

Geometry is in the world (glTF) frame: y up, centred at the origin.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["SHAPES", "COLOURS", "parse_prompt", "sdf", "inside", "render_alpha"]

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.10, 0.20, 0.85),
    "yellow": (0.90, 0.75, 0.10),
    "orange": (0.95, 0.50, 0.10),
    "purple": (0.50, 0.15, 0.70),
    "white": (0.90, 0.90, 0.90),
    "black": (0.08, 0.08, 0.08),
}
SHAPES = ("cube", "sphere", "cone", "cylinder", "torus")

CONE_TAN = 0.5  # base radius 0.5 over height 1.0
BOUNDING_RADIUS = 0.9  # every shape lies inside this sphere (the cube corner is at 0.866)


def parse_prompt(prompt: str) -> tuple[str, str]:
    """'a red cube' -> ('cube', 'red'); anything else is a one-line UserError listing the vocabulary."""
    words = re.findall(r"[a-z]+", prompt.lower())
    shapes = [w for w in words if w in SHAPES]
    colours = [w for w in words if w in COLOURS]
    filler = {"a", "an", "the", "one", "single"}
    extra = [w for w in words if w not in SHAPES and w not in COLOURS and w not in filler]
    if len(shapes) != 1 or len(colours) != 1 or extra:
        raise UserError(
            f"the embedded prior does not know '{prompt}': it knows 'a <colour> <shape>' with colour in "
            f"{', '.join(COLOURS)} and shape in {', '.join(SHAPES)} (e.g. \"a red cube\"); "
            f"other prompts need guidance.type=sds with Stable Diffusion")
    return shapes[0], colours[0]


def sdf(shape: str, p: Tensor) -> Tensor:
    """Signed distance (or a lower bound of it outside, enough for sphere tracing) [M] of points [M,3]."""
    x, y, z = p.unbind(-1)
    rho = torch.sqrt(x * x + z * z)
    if shape == "sphere":
        return p.norm(dim=-1) - 0.6
    if shape == "cube":
        q = p.abs() - 0.5
        return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)
    if shape == "cylinder":
        d = torch.stack([rho - 0.45, y.abs() - 0.5], -1)
        return d.clamp(min=0).norm(dim=-1) + d.max(dim=-1).values.clamp(max=0)
    if shape == "torus":
        return torch.sqrt((rho - 0.5) ** 2 + y * y) - 0.2
    if shape == "cone":
        # Distance to the infinite cone's side line in the (rho, h) half plane, h = 0.5 - y below the apex:
        # rho cos(theta) - h sin(theta) with tan(theta) = 0.5; a lower bound above the apex too.
        cos_t, sin_t = 1 / math.sqrt(1 + CONE_TAN ** 2), CONE_TAN / math.sqrt(1 + CONE_TAN ** 2)
        side = rho * cos_t - (0.5 - y) * sin_t
        base = -0.5 - y  # the plane y = -0.5
        return torch.maximum(side, base)
    raise ValueError(f"unknown shape {shape}")


def inside(shape: str, p: Tensor) -> Tensor:
    """Exact inside test [M] bool of points [M,3] (the IoU oracle)."""
    x, y, z = p.unbind(-1)
    rho = torch.sqrt(x * x + z * z)
    if shape == "sphere":
        return p.norm(dim=-1) <= 0.6
    if shape == "cube":
        return (p.abs() <= 0.5).all(dim=-1)
    if shape == "cylinder":
        return (rho <= 0.45) & (y.abs() <= 0.5)
    if shape == "torus":
        return (rho - 0.5) ** 2 + y * y <= 0.04
    if shape == "cone":
        return (y.abs() <= 0.5) & (rho <= CONE_TAN * (0.5 - y))
    raise ValueError(f"unknown shape {shape}")


@torch.no_grad()
def render_alpha(shape: str, origins: Tensor, dirs: Tensor, iterations: int = 128) -> Tensor:
    """Silhouette [N] in {0, 1} of rays [N,3] (unit dirs) by sphere tracing the shape's distance bound.

    Marching starts where the ray enters the sphere of radius BOUNDING_RADIUS that holds every shape and
    stops where it leaves it; only rays still marching are evaluated.
    """
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - BOUNDING_RADIUS ** 2
    disc = b * b - c
    hit = torch.zeros(origins.shape[0], dtype=torch.bool, device=origins.device)
    active = (disc > 0).nonzero()[:, 0]
    root = disc[active].sqrt()
    t, t_exit = (-b[active] - root).clamp(min=0), -b[active] + root
    for _ in range(iterations):
        if active.numel() == 0:
            break
        d = sdf(shape, origins[active] + t[:, None] * dirs[active])
        done = d < 1e-4
        hit[active[done]] = True
        t = t + d.clamp(min=1e-4)
        keep = ~done & (t < t_exit)
        active, t, t_exit = active[keep], t[keep], t_exit[keep]
    return hit.to(origins.dtype)
