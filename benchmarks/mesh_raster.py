"""The refine stage's renderer, timed: a mesh rasterized (render/mesh_raster.py: rasterize, interpolate,
antialias, forward and backward) against the volume renderer of the demo's NeRF at the same size, in one run.

    python benchmarks/mesh_raster.py                      # 4 views at 64 and 128 px, a 20,480-face sphere
    python benchmarks/mesh_raster.py --sizes 256 --faces 81920

Also times marching tetrahedra (render/tets.py) of a sphere's SDF on the grid the refine stage uses.
Prints one row per size and a JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamfusion.config import load_config  # noqa: E402
from dreamfusion.fields import build_field  # noqa: E402
from dreamfusion.renderer import render_views  # noqa: E402
from render.cameras import orbit_cameras  # noqa: E402
from render.mesh_raster import antialias, clip_positions, interpolate, rasterize_mesh  # noqa: E402
from render.tets import marching_tets, tet_grid  # noqa: E402


def sphere(faces: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An icosphere of radius 0.6 with about ``faces`` faces (20 * 4^k)."""
    import trimesh

    level = max(0, round(math.log(max(faces, 20) / 20, 4)))
    mesh = trimesh.creation.icosphere(subdivisions=level, radius=0.6)
    return torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces)


def timed(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--faces", type=int, default=20480)
    ap.add_argument("--tet-resolution", type=int, default=64)
    ap.add_argument("--n-samples", type=int, default=64, help="the volume baseline's samples per ray (the demo's)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()

    vertices, faces = sphere(args.faces)
    cams = orbit_cameras(args.views, 15.0, 2.4, 45.0)
    field = build_field(load_config("demo").field, "cpu")
    rows = []
    print(f"# {len(faces)} faces, {args.views} views, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| px | mesh fwd+bwd s | volume fwd+bwd s | mesh / volume |")
    print("|---|---|---|---|")
    for size in args.sizes:
        def mesh_step():
            pos = clip_positions(vertices.requires_grad_(True), cams.c2w, cams.fovy, size, size)
            rast = rasterize_mesh(pos, faces, size, size)
            colour = interpolate(vertices.abs(), rast, faces)
            antialias(colour, rast, pos, faces).sum().backward()
            vertices.grad = None

        def volume_step():
            out = render_views(field, None, cams, size, size, n_samples=args.n_samples)
            out["rgb"].sum().backward()
            field.zero_grad(set_to_none=True)

        mesh_s, volume_s = timed(mesh_step, args.warmup, args.iters), timed(volume_step, args.warmup, args.iters)
        rows.append({"px": size, "mesh_s": mesh_s, "volume_s": volume_s, "ratio": mesh_s / volume_s})
        print(f"| {size} | {mesh_s:.3f} | {volume_s:.3f} | {mesh_s / volume_s:.2f} |")
    grid, tets = tet_grid(args.tet_resolution)
    sdf = grid.norm(dim=-1) - 0.6
    tets_s = timed(lambda: marching_tets(grid, sdf, tets), args.warmup, args.iters)
    print(f"marching tetrahedra at {args.tet_resolution}^3 cells ({len(tets)} tetrahedra): {tets_s:.3f} s")
    print(json.dumps({"faces": len(faces), "views": args.views, "rows": rows, "tet_resolution": args.tet_resolution,
                      "marching_tets_s": tets_s}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
