"""Export speed on one trained run: the old path (every face unwrapped, the video rendered from the field itself)
against the fast settings (export.uv_max_faces, render.eval_grid), measured back to back in one process.

    python benchmarks/export.py                      # trains the demo's "a red cube" first (~70 s on 2 cores)
    python benchmarks/export.py RUN_DIR --resolution 128 --texture-size 1024
    python benchmarks/export.py --set steps=2 --set render.eval_grid=16 --resolution 16 --frames 2   # smoke

For each setting: seconds per export phase (mesh, decimate, unwrap, bake, write, grid, video), the mesh's
IoU and colour error under the embedded prior (world.scores.prior_scores), and the PSNR of 12 orbit frames
rendered as the video renders them against the same frames rendered from the field itself. Ends with a
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamfusion.artifacts import PhaseTimer, export_run  # noqa: E402
from dreamfusion.world.scores import prior_scores  # noqa: E402
from dreamfusion.renderer import eval_view, render_views_chunked, skip_grid  # noqa: E402
from dreamfusion.run import load_run  # noqa: E402
from render.cameras import orbit_cameras  # noqa: E402

SETTINGS = [("old path: every face unwrapped, video from the field", ["export.uv_max_faces=0", "render.eval_grid=0"]),
            ("uv_max_faces=20000 (default), eval_grid=128", ["export.uv_max_faces=20000", "render.eval_grid=128"]),
            ("uv_max_faces=10000, eval_grid=96", ["export.uv_max_faces=10000", "render.eval_grid=96"])]
MESH_PHASES = ("export.mesh", "export.decimate", "export.unwrap", "export.bake", "export.write")


def train_demo(out: Path, overrides: list[str]) -> Path:
    proc = subprocess.run([sys.executable, "-m", "dreamfusion", "--config", "demo", "prompt=a red cube",
                           f"output_dir={out}", *overrides], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"demo run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@torch.no_grad()
def frames_psnr(loaded, grid: int, frames: int, side: int) -> float | None:
    """PSNR (dB) of orbit frames from eval_view(field, grid) against the field's own render; None for grid 0."""
    if not grid:
        return None
    cfg, field = loaded.cfg, loaded.field.eval()
    cams = orbit_cameras(frames, cfg.camera.eval_elevation, cfg.camera.eval_distance, cfg.camera.eval_fovy,
                         device=loaded.device)
    kw = dict(n_samples=cfg.render.n_samples, background_kind="white")
    want = render_views_chunked(field, loaded.background, cams, side, side, occupancy=skip_grid(field, kw["n_samples"]), **kw)
    view = eval_view(field, grid)
    got = render_views_chunked(view, loaded.background, cams, side, side, occupancy=skip_grid(view, kw["n_samples"]), **kw)
    mse = float(((got["rgb"].clamp(0, 1) - want["rgb"].clamp(0, 1)) ** 2).mean())
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", help="a finished run folder (default: train the demo's red cube)")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--texture-size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=60, help="orbit video frames")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting of the demo run trained first and of every export (last word: overrides SETTINGS)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        source = Path(args.run_dir) if args.run_dir else train_demo(Path(tmp) / "train", args.set)
        rows = []
        for label, overrides in SETTINGS:
            work = Path(tmp) / f"export{len(rows)}"
            shutil.copytree(source, work)
            over = [f"export.resolution={args.resolution}", f"export.texture_size={args.texture_size}",
                    f"export.video_frames={args.frames}", *overrides, *args.set]
            loaded = load_run(work, overrides=over)
            timer = PhaseTimer(quiet=True)
            written, errors = export_run(loaded.field, loaded.cfg, work, loaded.device, timer)
            if errors:
                raise SystemExit(f"{label}: {errors}")
            s = timer.seconds
            scores = prior_scores(written["glb"], loaded.cfg.prompt)
            grid = loaded.cfg.render.eval_grid
            rows.append({"setting": label, "overrides": overrides, "seconds": s,
                         "mesh_s": round(sum(s.get(k, 0.0) for k in MESH_PHASES), 2),
                         "video_s": round(s.get("export.grid", 0.0) + s["export.video"], 2),
                         "iou": round(scores["iou"], 4), "albedo_err": round(scores["albedo_err"], 4),
                         "psnr_db": frames_psnr(loaded, grid, min(12, args.frames), loaded.cfg.export.video_resolution)})
    base = rows[0]
    print(f"# {time.strftime('%Y-%m-%d')} | {os.cpu_count()} CPU cores | load {os.getloadavg()[0]:.2f} at the end | "
          f"torch {torch.__version__} | export.resolution={args.resolution} texture {args.texture_size} px, "
          f"{args.frames} frames")
    print("| setting | mesh + UV texture s | x faster | video s (grid + frames) | x faster | IoU | albedo err | "
          "video PSNR vs field |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        psnr = f"{r['psnr_db']:.1f} dB" if r["psnr_db"] is not None else "(the field itself)"
        print(f"| {r['setting']} | {r['mesh_s']:.2f} | {base['mesh_s'] / r['mesh_s']:.1f} | {r['video_s']:.2f} | "
              f"{base['video_s'] / r['video_s']:.1f} | {r['iou']:.3f} | {r['albedo_err']:.3f} | {psnr} |")
    print(json.dumps({"benchmark": "export", "resolution": args.resolution, "texture_size": args.texture_size,
                      "frames": args.frames, "rows": rows, "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
