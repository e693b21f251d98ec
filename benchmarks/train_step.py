"""The demo's training step, this checkout against an earlier commit, alternated in one run.

    python benchmarks/train_step.py                        # against 1b3cf1c (before the hash-grid rework)
    python benchmarks/train_step.py --baseline HEAD~3 --rounds 4 --steps 60
    python benchmarks/train_step.py --baseline none --rounds 1 --steps 1 --warmup 0 --set render.width=8   # smoke

The baseline commit is checked out into a temporary git worktree. Each round times ``--steps`` training
steps of ``python -m dreamfusion --config demo`` (its Trainer, prompt ``--prompt``, after 20 warm-up
steps) in a fresh process of each tree, one after the other, so both see the same machine load. Prints
the median step per round and per tree, their ratio, and whether the two trees' fields are bit-identical
after the same steps (a speed-up that changes no result). ``--baseline none`` times this checkout alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from sds_step import device_name  # noqa: E402

CHILD = r"""
import json, statistics, sys, tempfile, time
import torch
from dreamfusion.config import load_config
from dreamfusion.guidance import build_guidance
from dreamfusion.train import Trainer
prompt, steps, state_path, warmup = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
cfg = load_config("demo", [f"prompt={prompt}", *sys.argv[5:]])
trainer = Trainer(cfg, tempfile.mkdtemp(), torch.device("cpu"), guidance=build_guidance(cfg, torch.device("cpu")))
for _ in range(warmup):
    trainer.train_step()
times = []
for _ in range(steps):
    start = time.perf_counter()
    trainer.train_step()
    times.append(time.perf_counter() - start)
torch.save(trainer.field.state_dict(), state_path)
print(json.dumps({"median_ms": 1000 * statistics.median(times)}))
"""


def time_tree(tree: Path, args, state: Path) -> float:
    """Median ms per step of the tree's demo Trainer in a fresh process; its field saved to ``state``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, "-c", CHILD, args.prompt, str(args.steps), str(state), str(args.warmup),
                           *args.set], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["median_ms"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="1b3cf1c", help="git commit to compare against")
    ap.add_argument("--prompt", default="a red cube")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per process")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of the demo config")
    args = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} | {device_name(torch.device('cpu'))} | torch {torch.__version__} | "
          f"prompt '{args.prompt}', {args.steps} timed steps per process")
    if args.baseline == "none":
        with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
            times = [time_tree(ROOT, args, Path(tmp) / "new.pt") for _ in range(args.rounds)]
        print(f"this checkout: median of {args.rounds} rounds {statistics.median(times):.1f} ms per step")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            rows = {"baseline": [], "this checkout": []}
            print(f"| round | baseline ({args.baseline}) median ms | this checkout median ms | ratio |")
            print("|---|---:|---:|---:|")
            for r in range(args.rounds):
                b = time_tree(base, args, Path(tmp) / "base.pt")
                n = time_tree(ROOT, args, Path(tmp) / "new.pt")
                rows["baseline"].append(b)
                rows["this checkout"].append(n)
                print(f"| {r + 1} | {b:.1f} | {n:.1f} | {n / b:.3f} |", flush=True)
            a, b = torch.load(Path(tmp) / "base.pt"), torch.load(Path(tmp) / "new.pt")
            same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            mb, mn = statistics.median(rows["baseline"]), statistics.median(rows["this checkout"])
            print(f"median of rounds: baseline {mb:.1f} ms, this checkout {mn:.1f} ms, ratio {mn / mb:.3f}; "
                  f"fields bit-identical after {args.warmup + args.steps} steps: {same}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
