"""The refine stage's renderer, timed: a mesh rasterized (render/mesh_raster.py: rasterize, interpolate,
antialias, forward and backward) against the volume renderer of the demo's NeRF at the same size, in one run.

    python benchmarks/mesh_raster.py                      # 4 views at 64 and 128 px, a 20,480-face sphere
    python benchmarks/mesh_raster.py --sizes 256 --faces 81920
    python benchmarks/mesh_raster.py --device cuda --rasterizers torch nvdiffrast --sizes 512 --views 1 \
        --faces 100000 --skip-volume                     # the refine step on a GPU: both mesh paths, peak memory

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
from render.mesh_raster_nvdiffrast import (antialias_nvdiffrast, interpolate_nvdiffrast,  # noqa: E402
                                           rasterize_mesh_nvdiffrast)
from render.tets import marching_tets, tet_grid  # noqa: E402


def sphere(faces: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A sphere of radius 0.6: an icosphere when ``faces`` is 20 * 4^k, else a UV sphere of about that many."""
    import trimesh

    level = round(math.log(max(faces, 20) / 20, 4))
    if faces == 20 * 4 ** level:
        mesh = trimesh.creation.icosphere(subdivisions=level, radius=0.6)
    else:
        side = max(3, round(math.sqrt(faces / 4)))
        mesh = trimesh.creation.uv_sphere(radius=0.6, count=[side, side])
    return torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces)


_PATHS = {"torch": (rasterize_mesh, interpolate, antialias),
          "nvdiffrast": (rasterize_mesh_nvdiffrast, interpolate_nvdiffrast, antialias_nvdiffrast)}


def timed(fn, warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_mib(fn, device: torch.device) -> float | None:
    """Peak CUDA memory of one call of ``fn`` in MiB (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--faces", type=int, default=20480)
    ap.add_argument("--tet-resolution", type=int, default=64)
    ap.add_argument("--n-samples", type=int, default=64, help="the volume baseline's samples per ray (the demo's)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rasterizers", nargs="+", default=["torch"], choices=sorted(_PATHS),
                    help="mesh paths to time (nvdiffrast: CUDA, installed from its git repo)")
    ap.add_argument("--skip-volume", action="store_true", help="time the mesh paths only")
    args = ap.parse_args()

    device = torch.device(args.device)
    vertices, faces = (t.to(device) for t in sphere(args.faces))
    cams = orbit_cameras(args.views, 15.0, 2.4, 45.0, device=device)
    field = build_field(load_config("demo").field, device)
    rows = []
    print(f"# {len(faces)} faces, {args.views} views, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    paths = [f"{name} fwd+bwd s | {name} peak MiB" for name in args.rasterizers]
    print(f"| px | {' | '.join(paths)} | volume fwd+bwd s | mesh / volume |")
    print("|---|" + "---|" * (2 * len(paths) + 2))
    for size in args.sizes:
        row = {"px": size}
        for name in args.rasterizers:
            rasterize, interp, smooth = _PATHS[name]

            def mesh_step():  # a refine-style step: positions, normals-sized attributes, antialiased, backward
                pos = clip_positions(vertices.requires_grad_(True), cams.c2w, cams.fovy, size, size)
                rast = rasterize(pos, faces, size, size)
                colour = interp(vertices.abs(), rast, faces)
                smooth(colour, rast, pos, faces).sum().backward()
                vertices.grad = None

            row[f"{name}_s"] = timed(mesh_step, args.warmup, args.iters, device)
            row[f"{name}_peak_mib"] = peak_mib(mesh_step, device)

        def volume_step():
            out = render_views(field, None, cams, size, size, n_samples=args.n_samples)
            out["rgb"].sum().backward()
            field.zero_grad(set_to_none=True)

        row["volume_s"] = None if args.skip_volume else timed(volume_step, args.warmup, args.iters, device)
        mesh_s = row[f"{args.rasterizers[0]}_s"]
        row["ratio"] = None if row["volume_s"] is None else mesh_s / row["volume_s"]
        rows.append(row)
        cells = [f"{row[f'{n}_s']:.3f} | {'-' if row[f'{n}_peak_mib'] is None else round(row[f'{n}_peak_mib'])}"
                 for n in args.rasterizers]
        volume = "- | -" if row["volume_s"] is None else f"{row['volume_s']:.3f} | {row['ratio']:.2f}"
        print(f"| {size} | {' | '.join(cells)} | {volume} |")
    grid, tets = tet_grid(args.tet_resolution, device=device)
    sdf = grid.norm(dim=-1) - 0.6
    tets_s = timed(lambda: marching_tets(grid, sdf, tets), args.warmup, args.iters, device)
    print(f"marching tetrahedra at {args.tet_resolution}^3 cells ({len(tets)} tetrahedra): {tets_s:.3f} s")
    print(json.dumps({"faces": len(faces), "views": args.views, "rows": rows, "tet_resolution": args.tet_resolution,
                      "marching_tets_s": tets_s}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
