"""Many prompts: `python -m dreamfusion batch` on local Ray against the same prompts run one after another as
separate `python -m dreamfusion` processes, measured back to back in one invocation.

    python benchmarks/batch.py                           # 6 demo prompts, --max-parallel 2 (2 cores)
    python benchmarks/batch.py --prompts "a red cube" "a blue sphere" --max-parallel 2 steps=300

Prints each side's wall time, their ratio and the per-prompt IoU of both sides (the same seeds, so the same
assets up to thread-count rounding), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["a red cube", "a blue sphere", "an orange cone", "a green cylinder", "a purple torus", "a yellow cube"]


def sequential(prompts: list[str], out: Path, overrides: list[str]) -> tuple[float, list[float | None], list[float]]:
    from dreamfusion.runfolder import read_run_json

    t0 = time.perf_counter()
    ious, walls = [], []
    for prompt in prompts:
        t1 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dreamfusion", "--config", "demo", f"prompt={prompt}",
                               f"output_dir={out}", *overrides], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"sequential run of '{prompt}' failed: {proc.stderr.strip().splitlines()[-1:]}")
        walls.append(time.perf_counter() - t1)
        ious.append(read_run_json(Path(proc.stdout.strip().splitlines()[-1])).get("metrics", {}).get("iou"))
    return time.perf_counter() - t0, ious, walls


def batch(prompts: list[str], out: Path, overrides: list[str], max_parallel: int) -> tuple[float, list]:
    path = out / "bench.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(prompts) + "\n")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dreamfusion", "batch", str(path), "--config", "demo",
                           "--max-parallel", str(max_parallel), f"output_dir={out}", *overrides], cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"batch failed: {proc.stderr.strip().splitlines()[-3:]}")
    data = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "batch.json").read_text())
    return wall, [r["iou"] for r in data["runs"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", nargs="+", default=PROMPTS)
    ap.add_argument("--max-parallel", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="key=value settings for every run on both sides")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        seq_s, seq_iou, seq_walls = sequential(args.prompts, Path(tmp) / "seq", args.overrides)
        bat_s, bat_iou = batch(args.prompts, Path(tmp) / "batch", args.overrides, args.max_parallel)
    print(f"# {time.strftime('%Y-%m-%d')} | {os.cpu_count()} CPU cores | load {os.getloadavg()[0]:.2f} at the end")
    print(f"{len(args.prompts)} prompts, demo config {' '.join(args.overrides)}")
    print(f"one after another: {seq_s:.1f} s   batch (--max-parallel {args.max_parallel}): {bat_s:.1f} s   "
          f"batch / sequential = {bat_s / seq_s:.3f}")
    for p, a, b, w in zip(args.prompts, seq_iou, bat_iou, seq_walls):
        print(f"  {p:<20} IoU sequential {a:.3f}  batch {b:.3f}   sequential process {w:.1f} s")
    print(json.dumps({"benchmark": "batch", "prompts": len(args.prompts), "sequential_s": round(seq_s, 1),
                      "batch_s": round(bat_s, 1), "ratio": round(bat_s / seq_s, 3), "max_parallel": args.max_parallel,
                      "iou_sequential": seq_iou, "iou_batch": bat_iou, "sequential_walls_s": [round(w, 1) for w in seq_walls], "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
