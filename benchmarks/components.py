"""Time each fast path against its plain-PyTorch twin, and the export.

    python benchmarks/components.py                      # everything that runs on this device
    python benchmarks/components.py --only hashgrid,export --device cpu

- hashgrid: the torch HashGrid vs tiny-cuda-nn (when ``tinycudann`` imports, CUDA), default field config
  (16 levels x 2, 2^19, base 16, scale 1.447), forward + backward on ``--points`` points (default one
  64 x 64 view at 128 samples per ray).
- sampling: ``render.volume.render_rays`` (128 stratified samples per ray) vs nerfacc's occupancy-grid
  marching (``render.volume_nerfacc``, CUDA only) on the blob-initialised NeRF field, 64 x 64 rays,
  forward + backward.
- gaussians: ``render.gaussians.rasterize_gaussians`` with backend torch vs gsplat (CUDA), DreamGaussian's
  start (5,000 Gaussians in a ball of radius 0.5, opacity 0.1) at 128 x 128: forward alone (a viewer's
  frame, reported as frames/s) and forward + backward (a training step). Issue 6's figures:
  ``--gaussians 20000 --gaussian-resolution 256`` (CPU) and ``--gaussian-resolution 512`` (gsplat).
- export: marching cubes at 256^3 (``extract_mesh``, automatic level) and the UV texture bake at 1024
  (``bake_texture``: xatlas + rasterization) on a closed-form sphere field.

Warm-up iterations are excluded; CUDA work is synchronised around every timed region. Prints a table
and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repo, when it is not pip-installed

import torch  # noqa: E402

from sds_step import Clock, device_name  # noqa: E402

COMPONENTS = ("hashgrid", "sampling", "gaussians", "export")


def timeit(fn, clock: Clock, warmup: int, iters: int) -> dict:
    for _ in range(warmup):
        fn()
    times, cpu = [], 0.0
    for _ in range(iters):
        start, cpu_start = clock(), time.process_time()
        fn()
        times.append(clock() - start)
        cpu += time.process_time() - cpu_start
    out = {"mean_ms": 1e3 * statistics.fmean(times), "min_ms": 1e3 * min(times), "n": iters}
    if not clock.cuda:  # share of the threads' capacity this process got (see sds_step.ms_stats)
        out["cpu_share"] = cpu / (torch.get_num_threads() * sum(times))
    return out


def bench_hashgrid(args, device, clock) -> list[dict]:
    from dreamfusion.config import FieldConfig
    from dreamfusion.fields.hashgrid import HashGrid, TcnnHashGrid, _tcnn_available

    cfg = FieldConfig()
    grid_cfg = cfg.hashgrid
    kwargs = dict(bound=cfg.bound, n_levels=grid_cfg.n_levels, n_features_per_level=grid_cfg.n_features_per_level,
                  log2_hashmap_size=grid_cfg.log2_hashmap_size, base_resolution=grid_cfg.base_resolution,
                  per_level_scale=grid_cfg.per_level_scale)
    points = torch.rand(args.points, 3, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    impls = {"torch": lambda: HashGrid(**kwargs)}
    rows = []
    if device.type == "cuda" and _tcnn_available():
        impls["tcnn"] = lambda: TcnnHashGrid(**kwargs)
    else:
        why = "needs CUDA" if device.type != "cuda" else "tinycudann does not import (not on PyPI)"
        rows.append({"component": "hashgrid", "impl": "tcnn", "skipped": why})
    for name, make in impls.items():
        grid = make().to(device)
        weight = torch.randn(grid.output_dim, device=device)

        def step():
            (grid(points) @ weight).sum().backward()

        rows.append({"component": "hashgrid", "impl": name, "work": f"{args.points} points fwd+bwd",
                     **timeit(step, clock, args.warmup, args.iters)})
    return rows


def bench_sampling(args, device, clock) -> list[dict]:
    from dreamfusion.config import FieldConfig
    from dreamfusion.fields import build_field
    from render.cameras import orbit_cameras
    from render.rays import generate_rays
    from render.volume import render_rays

    field = build_field(FieldConfig(), device)
    cams = orbit_cameras(1, 15.0, 1.75, 55.0, device=device)
    origins, dirs = generate_rays(cams.c2w, cams.fovy, 64, 64)
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    gen = torch.Generator("cpu").manual_seed(0)
    rows = []

    def torch_step():
        out = render_rays(field, origins, dirs, field.bound, args.n_samples, perturb=True, generator=gen)
        (out["albedo"].sum() + out["opacity"].sum()).backward()

    rows.append({"component": "sampling", "impl": "torch", "work": f"64x64 rays x {args.n_samples} samples fwd+bwd",
                 **timeit(torch_step, clock, args.warmup, args.iters)})
    from render.volume_nerfacc import make_estimator, nerfacc_available, render_rays_nerfacc, update_estimator

    if not nerfacc_available():
        rows.append({"component": "sampling", "impl": "nerfacc", "skipped": "nerfacc's occupancy grid needs CUDA"})
        return rows
    step_size = 2.0 * field.bound / args.n_samples  # the torch path's bin width along an axis through the box
    estimator = make_estimator(field.bound, 128, device)
    estimator.train()
    with torch.no_grad():
        for i in range(4):  # warm-up updates evaluate every cell: the grid then reflects the blob
            update_estimator(estimator, field.density, step=i, render_step_size=step_size, n=1)
    counted = {}

    def nerfacc_step():
        out = render_rays_nerfacc(field, origins, dirs, field.bound, estimator, step_size, perturb=True)
        counted["samples"] = int(out["t"].shape[0])
        (out["albedo"].sum() + out["opacity"].sum()).backward()

    timing = timeit(nerfacc_step, clock, args.warmup, args.iters)
    rows.append({"component": "sampling", "impl": "nerfacc",
                 "work": f"64x64 rays, step {step_size:.4f} ({counted['samples']} samples kept) fwd+bwd", **timing})
    return rows


def bench_gaussians(args, device, clock) -> list[dict]:
    try:
        from render.gaussians import rasterize_gaussians
    except ImportError as exc:
        return [{"component": "gaussians", "impl": "all", "skipped": f"render.gaussians not importable ({exc})"}]
    from render.cameras import orbit_cameras

    n, res = args.gaussians, args.gaussian_resolution
    gen = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    radius = 0.5 * torch.rand(n, 1, generator=gen) ** (1 / 3)  # uniform in the ball
    params = {
        "means": direction * radius,
        "quats": torch.randn(n, 4, generator=gen),
        "log_scales": torch.full((n, 3), math.log(0.02)) + 0.3 * torch.randn(n, 3, generator=gen),
        "logit_opacities": torch.full((n,), math.log(0.1 / 0.9)),
        "colors": torch.rand(n, 3, generator=gen),
    }
    params = {k: v.to(device).requires_grad_(True) for k, v in params.items()}
    cams = orbit_cameras(1, 15.0, 2.0, 49.1, device=device)
    rows = []
    for backend in ("torch", "gsplat"):
        if backend == "gsplat" and device.type != "cuda":
            rows.append({"component": "gaussians", "impl": "gsplat", "skipped": "gsplat has no CPU rasterizer"})
            continue

        def rasterize():
            return rasterize_gaussians(params["means"], params["quats"], params["log_scales"].exp(),
                                       torch.sigmoid(params["logit_opacities"]), params["colors"], cams.c2w,
                                       cams.fovy, res, res, backend=backend)

        def forward():  # what a viewer pays per frame
            with torch.no_grad():
                rasterize()

        def train_step():
            out = rasterize()
            (out["rgb"].sum() + out["alpha"].sum()).backward()

        for mode, fn in (("fwd", forward), ("fwd+bwd", train_step)):
            try:
                timing = timeit(fn, clock, args.warmup, args.iters)
            except (RuntimeError, TypeError) as exc:  # gsplat missing / its CUDA build failing; an API change
                rows.append({"component": "gaussians", "impl": backend, "skipped": str(exc).splitlines()[0][:160]})
                break
            rows.append({"component": "gaussians", "impl": backend,
                         "work": f"{n} Gaussians, {res}x{res}, {mode}: {1e3 / timing['mean_ms']:.2f} frames/s",
                         "frames_per_s": 1e3 / timing["mean_ms"], **timing})
    return rows


def bench_export(args, device, clock) -> list[dict]:
    from dreamfusion.export import bake_texture, extract_mesh

    def density_fn(points):  # a sphere of radius 0.5 with a smooth 1/50 edge, peak density 50
        return 50.0 * torch.sigmoid(50.0 * (0.5 - points.norm(dim=-1)))

    def albedo_fn(points):
        return (points * 0.5 + 0.5).clamp(0, 1)

    mesh = {}

    def marching():
        mesh["v"], mesh["f"] = extract_mesh(density_fn, 1.0, args.mesh_resolution, device=device)

    def bake():
        bake_texture(mesh["v"], mesh["f"], albedo_fn, size=args.texture_size, device=device)

    # Export runs once per run: one timed run each, no warm-up beyond the first call's imports.
    rows = [{"component": "export", "impl": "marching cubes",
             "work": f"{args.mesh_resolution}^3 grid, automatic level", **timeit(marching, clock, 0, 1)}]
    rows[-1]["work"] += f" -> {len(mesh['f'])} faces"
    rows.append({"component": "export", "impl": "texture bake", "work": f"{args.texture_size}^2 texture, "
                 f"{len(mesh['f'])} faces (xatlas + raster)", **timeit(bake, clock, 0, 1)})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--only", default=",".join(COMPONENTS), help=f"comma-separated subset of {','.join(COMPONENTS)}")
    p.add_argument("--points", type=int, default=64 * 64 * 128, help="hash grid points per pass")
    p.add_argument("--n-samples", type=int, default=128, help="torch sampler: samples per ray")
    p.add_argument("--gaussians", type=int, default=5000)
    p.add_argument("--gaussian-resolution", type=int, default=128)
    p.add_argument("--mesh-resolution", type=int, default=256)
    p.add_argument("--texture-size", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    args = p.parse_args(argv)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(COMPONENTS))
    if unknown:
        p.error(f"unknown component(s) {', '.join(unknown)}: choose from {', '.join(COMPONENTS)}")
    clock = Clock(device)
    benches = {"hashgrid": bench_hashgrid, "sampling": bench_sampling, "gaussians": bench_gaussians,
               "export": bench_export}
    rows = []
    for name in chosen:
        rows += benches[name](args, device, clock)
    print(f"# components  device={device_name(device)}  torch={torch.__version__}  warmup={args.warmup}  "
          f"iters={args.iters}  loadavg={os.getloadavg()[0]:.1f}")
    print(f"{'component':<11}{'impl':<16}{'mean ms':>11}{'min ms':>11}{'cpu share':>10}  work")
    for r in rows:
        if "skipped" in r:
            print(f"{r['component']:<11}{r['impl']:<16}{'skipped':>11}{'':>21}  {r['skipped']}")
        else:
            share = f"{100 * r['cpu_share']:.0f} %" if "cpu_share" in r else "-"
            print(f"{r['component']:<11}{r['impl']:<16}{r['mean_ms']:>11.1f}{r['min_ms']:>11.1f}{share:>10}  "
                  f"{r['work']}")
    print(json.dumps({"benchmark": "components", "device": device_name(device), "device_type": device.type,
                      "torch": torch.__version__, "date": args.date, "threads": torch.get_num_threads(),
                      "warmup": args.warmup, "iters": args.iters, "rows": rows}))


if __name__ == "__main__":
    main()
