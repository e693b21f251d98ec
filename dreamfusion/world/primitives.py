"""The world's vocabulary: analytic primitives, their colours, scenes of them, and their renders (the embedded
prior, dreamfusion/guidance/models/prior.py, draws them; scores.py measures assets against them).

Geometry is in the world (glTF) frame: y up, front toward +z (docs/DESIGN.md). Three prompt forms:

- ``a <colour> <shape>``: one primitive at the origin, full size (the first vocabulary; the demo's prompts).
- ``a <colour> <shape> with a <colour> front``: one primitive whose front part (object z >= FRONT_Z) has the
  second colour, so the object looks different from the front, the sides and the back (a Janus problem can be
  seen and counted: scores.py).
- ``a <colour> <shape> <relation> a <colour> <shape>``: two primitives at PAIR_SCALE of full size, centres at
  +-PAIR_OFFSET on the relation's axis (RELATIONS): ``on`` puts the first at +y and the second at -y, ``under``
  the reverse; ``next to`` puts the first at -x (left, seen from the front) and the second at +x; ``in front of``
  the first at +z, the second at -z; ``behind`` the reverse. The smallest gap between the two is 0.1 (two spheres
  of radius 0.3 at 0.7 apart), so the true scene is two separate pieces. The two colours of a pair differ (a pair
  of one colour is refused: the scores split a fused asset by colour).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["SHAPES", "COLOURS", "RELATIONS", "Part", "Scene", "parse_prompt", "parse_scene", "sdf", "inside",
           "render_alpha", "scene_inside", "scene_sdf", "scene_palette", "surface_label", "render_scene"]

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
BOUNDING_RADIUS = 0.9  # every shape and scene lies inside this sphere (the cube corner is at 0.866)
FRONT_Z = 0.25  # object points with z >= FRONT_Z (object frame, full size) carry the front colour
PAIR_SCALE = 0.5  # each object of a two-object scene at half size ...
PAIR_OFFSET = 0.35  # ... centred at +-PAIR_OFFSET on the relation's axis
# relation -> (axis, sign): the first object sits at sign * PAIR_OFFSET on the axis, the second at the opposite
RELATIONS = {"on": (1, 1.0), "under": (1, -1.0), "next to": (0, -1.0), "in front of": (2, 1.0), "behind": (2, -1.0)}
_FILLER = {"a", "an", "the", "one", "single"}


class Part(NamedTuple):
    """One object of a scene: a primitive scaled by `scale` about its centre, placed at `centre`."""

    shape: str
    colour: str
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    front: str | None = None  # colour of the front part (object z >= FRONT_Z), None for a plain object


class Scene(NamedTuple):
    """What a prompt asks for: its parts and the relation between the two of a pair (None otherwise)."""

    parts: tuple[Part, ...]
    relation: str | None = None

    @property
    def legacy(self) -> bool:
        """A prompt of the first vocabulary ('a red cube'): one plain full-size object."""
        return len(self.parts) == 1 and self.parts[0].front is None


def _unknown(prompt: str) -> UserError:
    return UserError(
        f"the embedded prior does not know '{prompt}': it knows 'a <colour> <shape>', 'a <colour> <shape> with a "
        f"<colour> front' and 'a <colour> <shape> <relation> a <colour> <shape>' with colour in {', '.join(COLOURS)}, "
        f"shape in {', '.join(SHAPES)} and relation in {', '.join(RELATIONS)} (e.g. \"a red cube\", \"a red cube on "
        f"a blue sphere\"); other prompts need Stable Diffusion: guidance.model_type=stable_diffusion")


def _object(words: list[str]) -> tuple[str, str] | None:
    """['red', 'cube'] -> ('cube', 'red'), else None (filler words already removed)."""
    if len(words) == 2 and words[0] in COLOURS and words[1] in SHAPES:
        return words[1], words[0]
    return None


def parse_scene(prompt: str) -> Scene:
    """The scene a prompt asks for (module docstring); anything else is a one-line UserError listing the vocabulary."""
    words = [w for w in re.findall(r"[a-z]+", prompt.lower()) if w not in _FILLER]
    text = " ".join(words)
    one = _object(words)
    if one is not None:
        return Scene((Part(one[0], one[1]),))
    if len(words) == 5 and words[2] == "with" and words[4] == "front" and words[3] in COLOURS:
        one = _object(words[:2])
        if one is not None:
            return Scene((Part(one[0], one[1], front=words[3]),))
    for relation, (axis, sign) in RELATIONS.items():
        head, sep, tail = f" {text} ".partition(f" {relation} ")
        if sep:
            first, second = _object(head.split()), _object(tail.split())
            if first is not None and second is not None:
                if first[1] == second[1]:
                    raise UserError(f"'{prompt}': the two objects of a pair need different colours (the metrics tell "
                                    f"them apart by colour), e.g. 'a {first[1]} {first[0]} {relation} a "
                                    f"{next(c for c in COLOURS if c != first[1])} {second[0]}'")
                centre = [0.0, 0.0, 0.0]
                centre[axis] = sign * PAIR_OFFSET
                other = tuple(0.0 - c for c in centre)
                return Scene((Part(first[0], first[1], tuple(centre), PAIR_SCALE),
                              Part(second[0], second[1], other, PAIR_SCALE)), relation)
    raise _unknown(prompt)


def parse_prompt(prompt: str) -> tuple[str, str]:
    """'a red cube' -> ('cube', 'red'): a prompt of the first vocabulary; anything else is a one-line UserError."""
    scene = parse_scene(prompt)
    if not scene.legacy:
        raise UserError(f"'{prompt}' is not one plain object ('a <colour> <shape>'): use parse_scene")
    return scene.parts[0].shape, scene.parts[0].colour


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


def _sphere_trace(distance, origins: Tensor, dirs: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """(ray index [H], hit point [H,3]) of the rays [N,3] (unit dirs) that reach the surface of the distance bound
    ``distance(points [M,3]) -> [M]``. Marching starts where the ray enters the sphere of radius BOUNDING_RADIUS
    that holds every shape and scene and stops where it leaves it; only rays still marching are evaluated."""
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - BOUNDING_RADIUS ** 2
    disc = b * b - c
    active = (disc > 0).nonzero()[:, 0]
    root = disc[active].sqrt()
    t, t_exit = (-b[active] - root).clamp(min=0), -b[active] + root
    rays, points = [], []
    for _ in range(iterations):
        if active.numel() == 0:
            break
        at = origins[active] + t[:, None] * dirs[active]
        d = distance(at)
        done = d < 1e-4
        rays.append(active[done])
        points.append(at[done])
        t = t + d.clamp(min=1e-4)
        keep = ~done & (t < t_exit)
        active, t, t_exit = active[keep], t[keep], t_exit[keep]
    if not rays:
        return active.new_zeros(0), origins.new_zeros(0, 3)
    return torch.cat(rays), torch.cat(points)


@torch.no_grad()
def render_alpha(shape: str, origins: Tensor, dirs: Tensor, iterations: int = 128) -> Tensor:
    """Silhouette [N] in {0, 1} of rays [N,3] (unit dirs) by sphere tracing the shape's distance bound."""
    hit = torch.zeros(origins.shape[0], dtype=torch.bool, device=origins.device)
    rays, _ = _sphere_trace(lambda p: sdf(shape, p), origins, dirs, iterations)
    hit[rays] = True
    return hit.to(origins.dtype)


def _local(part: Part, p: Tensor) -> Tensor:
    """World points [M,3] -> the part's own full-size frame."""
    return (p - p.new_tensor(part.centre)) / part.scale


def scene_inside(scene: Scene, p: Tensor) -> Tensor:
    """Inside test [K, M] bool of points [M,3] for each of the scene's K parts (the IoU oracle)."""
    return torch.stack([inside(part.shape, _local(part, p)) for part in scene.parts])


def scene_sdf(scene: Scene, p: Tensor) -> tuple[Tensor, Tensor]:
    """(distance bound [M] of the union, index [M] of the nearest part); a scaled bound is a bound."""
    d = torch.stack([sdf(part.shape, _local(part, p)) * part.scale for part in scene.parts])
    best = d.min(0)
    return best.values, best.indices


def scene_palette(scene: Scene) -> list[str]:
    """The colour of each surface label: parts' colours, then the front colours, in part order."""
    return [part.colour for part in scene.parts] + [part.front for part in scene.parts if part.front]


def surface_label(scene: Scene, p: Tensor) -> Tensor:
    """Index [M] into scene_palette of the colour at surface points [M,3]."""
    _, nearest = scene_sdf(scene, p)
    label = nearest.clone()
    slot = len(scene.parts)
    for k, part in enumerate(scene.parts):
        if part.front:
            label[(nearest == k) & (_local(part, p)[:, 2] >= FRONT_Z)] = slot
            slot += 1
    return label


@torch.no_grad()
def render_scene(scene: Scene, origins: Tensor, dirs: Tensor, iterations: int = 128) -> Tensor:
    """Colour label [N] long of rays [N,3] (unit dirs): an index into scene_palette, -1 where the ray misses;
    sphere tracing of the union's distance bound."""
    label = torch.full((origins.shape[0],), -1, dtype=torch.long, device=origins.device)
    rays, points = _sphere_trace(lambda p: scene_sdf(scene, p)[0], origins, dirs, iterations)
    label[rays] = surface_label(scene, points)
    return label
