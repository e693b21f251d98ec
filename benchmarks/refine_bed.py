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
import numpy as np  # noqa: E402
import trimesh  # noqa: E402

from dreamfusion.world.primitives import COLOURS, parse_prompt, parse_scene  # noqa: E402
from dreamfusion.world.scores import _components, _load_mesh, prior_scores, surface_scores  # noqa: E402

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


def surface_colours(mesh, count: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points [N, 3], face index [N], colour [N, 3] in [0, 1]) of ``count`` points sampled uniformly by area on the
    mesh, each coloured where it lies: its base-colour texture at the interpolated UV (nearest texel), or its
    vertex colours interpolated barycentrically. A colour change inside a face shows, whatever the face size."""
    points, face = trimesh.sample.sample_surface(mesh, count, seed=seed)
    corners = mesh.triangles[face]
    bary = trimesh.triangles.points_to_barycentric(corners, points)  # [N, 3]
    faces = np.asarray(mesh.faces)[face]
    uv, material = getattr(mesh.visual, "uv", None), getattr(mesh.visual, "material", None)
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)  # a .glb's / an .obj's
    if uv is not None and image is not None:
        at = (np.asarray(uv)[faces] * bary[..., None]).sum(1)
        colour = trimesh.visual.uv_to_color(at, image)[:, :3] / 255.0
        factor = getattr(material, "baseColorFactor", None)
        return points, face, colour * (1.0 if factor is None else np.asarray(factor, dtype=np.float64)[:3] / 255.0)
    attributes = getattr(mesh.visual, "vertex_attributes", {})
    rgb = np.asarray(attributes["color"]) if "color" in attributes else np.asarray(mesh.visual.vertex_colors)
    return points, face, (rgb[faces][..., :3].astype(np.float64) / 255.0 * bary[..., None]).sum(1)


def _side_share(mesh, body: str, front: str):
    """(z, share) at points sampled on a cube's side faces (on x = +-0.5: normal within 25 degrees of +-x,
    |y| < 0.35), coloured where they lie (``surface_colours``): share is the way from the body colour (0) to
    the front colour (1)."""
    b, f = np.array(COLOURS[body]), np.array(COLOURS[front])
    points, face, colour = surface_colours(mesh)
    normal = mesh.face_normals[face]
    side = (np.abs(normal[:, 0]) > np.cos(np.radians(25))) & (np.abs(points[:, 0]) > 0.35) & \
        (np.abs(points[:, 1]) < 0.35)
    return points[side, 2], ((colour[side] - b) @ (f - b)) / ((f - b) @ (f - b))


def _profile(z, share, bins: int):
    """Bin mids and the mean share per bin over z in [-0.5, 0.5], empty bins left out."""
    edges = np.linspace(-0.5, 0.5, bins + 1)
    which = np.clip(np.digitize(z, edges) - 1, 0, bins - 1)
    total = np.bincount(which, minlength=bins)
    profile = np.bincount(which, weights=share, minlength=bins) / np.maximum(total, 1)
    filled = total > 0
    return (0.5 * (edges[1:] + edges[:-1]))[filled], profile[filled]


def front_edge_width(mesh, body: str, front: str, bins: int = 40, side=None) -> float:
    """How wide the change from the body colour to the front colour is on a cube's side faces (``_side_share``,
    or ``side`` when the caller has it already), binned by z; per bin the mean share; the width in z between the
    last bin under 0.1 and the first over 0.9 of that share, walking toward the front (+z). A sharp change gives
    about one bin (1 / bins). The scene's change (z = 0.25) lies on a bin edge, so a ramp a little wider than a
    bin may read one bin more or less."""
    mids, profile = _profile(*(side or _side_share(mesh, body, front)), bins)
    above = np.nonzero(profile > 0.9)[0]
    start = above[0] if len(above) else len(profile) - 1
    below = np.nonzero(profile[:start] < 0.1)[0]
    low = mids[below[-1]] if len(below) else mids[0]
    return float(mids[start] - low)


def front_edge_ramp(mesh, body: str, front: str, bins: int = 80, side=None) -> float:
    """The same change read without the bins' steps: the z distance between where the share profile (``bins``
    bins, made non-decreasing toward +z) crosses 0.1 and 0.9, each crossing interpolated linearly between bin
    mids. A linear ramp over a width w reads 0.8 w; a sharp change about 0.8 of a bin."""
    mids, profile = _profile(*(side or _side_share(mesh, body, front)), bins)
    rising = np.maximum.accumulate(profile)
    return float(np.interp(0.9, rising, mids) - np.interp(0.1, rising, mids))


def scores(run_dir: Path, prompt: str) -> dict[str, float]:
    glb = run_dir / MESH_GLB
    mesh = _load_mesh(glb)
    scene = parse_scene(prompt)
    if scene.legacy:
        out = {k: v for k, v in prior_scores(glb, prompt).items() if k in ("iou", "albedo_err")}
        out.update(surface_scores(mesh.vertices, mesh.faces, parse_prompt(prompt)[0]))
    else:  # an object with a front, or a pair: the bed's scores (Janus, per-object IoU, relation, colour)
        out = dict(prior_scores(glb, prompt))
        part = scene.parts[0]
        if part.shape == "cube" and getattr(part, "front", None):
            side = _side_share(mesh, part.colour, part.front)  # one sample of 200,000 points for both readings
            out["front_width"] = front_edge_width(mesh, part.colour, part.front, side=side)
            out["front_ramp"] = front_edge_ramp(mesh, part.colour, part.front, side=side)
        if len(scene.parts) > 1:  # pieces: connected components (UV seams merged) with >= 5 % of the faces
            pieces = _components(mesh, max_components=len(mesh.faces))  # the scorer's own, UV seams welded
            out["pieces"] = sum(len(faces) >= 0.05 * len(mesh.faces) for faces in pieces)
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
    ap.add_argument("--coarse-set", nargs="*", default=[], metavar="key=value", help="settings of the coarse runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for prompt in args.prompts:
        coarse = find_coarse(args.coarse_root, prompt) if args.coarse_root else None
        if coarse is None:
            coarse, _ = _command(["--config", "demo", f"prompt={prompt}", f"output_dir={args.out}", *args.coarse_set],
                                 args.threads)
        fine, seconds = _command(["refine", str(coarse), "--config", args.config, f"output_dir={args.out}",
                                  *args.set], args.threads)
        row = {"prompt": prompt, "coarse": scores(coarse, prompt), "refined": scores(fine, prompt),
               "refine_s": round(seconds, 1), "train_s": read_run_json(fine)["seconds"].get("train"),
               "coarse_dir": str(coarse), "refined_dir": str(fine)}
        rows.append(row)
        c, r = row["coarse"], row["refined"]
        if "normal_deg" not in c:
            print(f"{prompt}: " + "  ".join(f"{k} {c[k]:.4g} -> {r.get(k, float('nan')):.4g}" for k in c), flush=True)
            continue
        print(f"{prompt:18s} IoU {c['iou']:.3f} -> {r['iou']:.3f}  colour err {c['albedo_err']:.3f} -> "
              f"{r['albedo_err']:.3f}  normal {c['normal_deg']:.1f} -> {r['normal_deg']:.1f} deg  dist "
              f"{c['surface_dist']:.4f} -> {r['surface_dist']:.4f}  refine {seconds:.0f} s", flush=True)
    rows_legacy = [r for r in rows if "normal_deg" in r["coarse"]]
    if len(rows_legacy) > 1:
        rows = rows_legacy
        mean = lambda side, k: sum(r[side][k] for r in rows) / len(rows)  # noqa: E731
        print("mean               " + "  ".join(f"{k} {mean('coarse', k):.4g} -> {mean('refined', k):.4g}"
                                             for k in ("iou", "albedo_err", "normal_deg", "surface_dist")))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
