"""The refine stage measured on the embedded prior: each demo prompt coarse (the demo) then refined.

    python benchmarks/refine_bed.py --coarse-root DIR        # refine the demo runs already in DIR (one per prompt)
    python benchmarks/refine_bed.py                          # run the demos first (outputs under --out)
    python benchmarks/refine_bed.py --prompts "a purple torus" --set steps=100 --config demo-refine

Per prompt, for the coarse mesh and the refined one: volumetric IoU against the analytic primitive, the error of the
mean surface albedo (world/scores.py prior_scores, as run.json records them), and at 20,000 points sampled on the
surface the mean angle between the mesh's normals and the primitive's and the mean distance to the true surface
(world/scores.py surface_scores). The refine stage runs the real command (`python -m dreamfusion refine RUN_DIR
--config ...`) in a subprocess; its seconds are that command's wall time (start-up, conversion, training, export,
video, report).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamfusion.runfolder import MESH_GLB, read_run_json, slugify  # noqa: E402
from dreamfusion.world.primitives import parse_prompt  # noqa: E402
from dreamfusion.world.scores import _load_mesh, prior_scores, surface_scores  # noqa: E402

PROMPTS = ["a red cube", "a blue sphere", "an orange cone", "a green cylinder", "a purple torus",
           "a white sphere", "a yellow cube", "a black cone"]


def _command(args: list[str], threads: int) -> tuple[Path, float]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dreamfusion", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{proc.stderr[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1]), seconds


def scores(run_dir: Path, prompt: str) -> dict[str, float]:
    glb = run_dir / MESH_GLB
    mesh = _load_mesh(glb)
    out = {k: v for k, v in prior_scores(glb, prompt).items() if k in ("iou", "albedo_err")}
    out.update(surface_scores(mesh.vertices, mesh.faces, parse_prompt(prompt)[0]))
    out["faces"] = len(mesh.faces)
    return out


def find_coarse(root: Path, prompt: str) -> Path | None:
    slug = slugify(prompt)
    runs = sorted(p for p in root.glob(f"{slug}-*") if not p.name.startswith(f"{slug}-refine")
                  and read_run_json(p).get("status") == "done")
    return runs[-1] if runs else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", nargs="*", default=PROMPTS)
    ap.add_argument("--coarse-root", type=Path, default=None, help="a folder holding finished demo runs to reuse")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "refine-bed")
    ap.add_argument("--config", default="demo-refine")
    ap.add_argument("--set", nargs="*", default=[], metavar="key=value", help="settings of the refine runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for prompt in args.prompts:
        coarse = find_coarse(args.coarse_root, prompt) if args.coarse_root else None
        if coarse is None:
            coarse, _ = _command(["--config", "demo", f"prompt={prompt}", f"output_dir={args.out}"], args.threads)
        fine, seconds = _command(["refine", str(coarse), "--config", args.config, f"output_dir={args.out}",
                                  *args.set], args.threads)
        row = {"prompt": prompt, "coarse": scores(coarse, prompt), "refined": scores(fine, prompt),
               "refine_s": round(seconds, 1), "train_s": read_run_json(fine)["seconds"].get("train"),
               "coarse_dir": str(coarse), "refined_dir": str(fine)}
        rows.append(row)
        c, r = row["coarse"], row["refined"]
        print(f"{prompt:18s} IoU {c['iou']:.3f} -> {r['iou']:.3f}  colour err {c['albedo_err']:.3f} -> "
              f"{r['albedo_err']:.3f}  normal {c['normal_deg']:.1f} -> {r['normal_deg']:.1f} deg  dist "
              f"{c['surface_dist']:.4f} -> {r['surface_dist']:.4f}  refine {seconds:.0f} s", flush=True)
    if len(rows) > 1:
        mean = lambda side, k: sum(r[side][k] for r in rows) / len(rows)  # noqa: E731
        print("mean               " + "  ".join(f"{k} {mean('coarse', k):.4g} -> {mean('refined', k):.4g}"
                                             for k in ("iou", "albedo_err", "normal_deg", "surface_dist")))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
