"""Deliberately broken variants of the code (issue 32) and the tests that must fail on each: the changes the
audit of the GPU path, the oracles, the bed and the architecture step found uncaught, kept so that the catch can
be shown again. Not part of the suite (each variant costs a test run):

    python tests/mutants.py            # every variant: apply it, run its tests (they must fail), restore
    python tests/mutants.py janus      # the variants whose name holds 'janus'

Each variant replaces one exact text of one file (it must occur there once: a stale entry stops with its name);
the file is written back whatever happens. A variant that its tests pass is reported and the exit status is 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (file, the text, the broken text, the pytest arguments that must fail)
MUTANTS = {
    "1 linspace without device= (file order: Stable Diffusion first)": (
        "dreamfusion/renderer/baked.py", "torch.linspace(-bound, bound, r, device=device)",
        "torch.linspace(-bound, bound, r)", ["tests/test_devices.py", "-k", "alike"]),
    "2 grad_accum made with device='cpu'": (
        "dreamfusion/train/densify.py", "self.grad_accum = torch.zeros(count, device=device)",
        'self.grad_accum = torch.zeros(count, device="cpu")', ["tests/test_devices.py", "-k", "cpu_device_default"]),
    "3 a crash lists the checkpoint whether or not it exists": (
        "dreamfusion/run.py", "    if (record.run_dir / CHECKPOINT).is_file():", "    if True:",
        ["tests/test_run_failures.py", "-k", "training"]),
    "4 the non-finite counter never resets": (
        "dreamfusion/train/trainer.py", "            self._nonfinite_run = 0\n", "",
        ["tests/test_run_api.py", "-k", "apart"]),
    "4 a skipped step still runs the densify post-step": (
        "dreamfusion/train/trainer.py",
        "            self.strategy.step_post_optimizer(self.field, self.optimizer, out, self.step)  # e.g. clone / split\n"
        "        else:  # skipped: no Adam step, no densification\n",
        "        else:  # skipped: no Adam step, no densification\n"
        "            self.strategy.step_post_optimizer(self.field, self.optimizer, out, self.step)\n",
        ["tests/test_densify.py", "-k", "skipped_step_changes"]),
    "4 skipped_steps reset on resume": (
        "dreamfusion/train/trainer.py", 'int(state["skipped_steps"])', "0",
        ["tests/test_run_api.py", "-k", "carry_over"]),
    "5 checkpoint_every declared [0, inf)": (
        "dreamfusion/config/schema.py", 'checkpoint_every: int = ranged(500, "[1, inf)")',
        'checkpoint_every: int = ranged(500, "[0, inf)")', ["tests/test_config.py", "-k", "zero"]),
    "5 max_nonfinite_steps declared [0, inf)": (
        "dreamfusion/config/schema.py", 'max_nonfinite_steps: int = ranged(20, "[1, inf)")',
        'max_nonfinite_steps: int = ranged(20, "[0, inf)")', ["tests/test_config.py", "-k", "zero"]),
    "6 the colour split at K pieces": (
        "dreamfusion/world/scores.py", "by_colour = len(pieces) < K", "by_colour = len(pieces) <= K",
        ["tests/test_scenes.py", "-k", "as_many_pieces"]),
    "6 pieces assigned by colour alone": (
        "dreamfusion/world/scores.py", "np.linalg.norm(pieces[c][1] - targets[k]) + 1.0 - iou(pieces[c][0], k)",
        "np.linalg.norm(pieces[c][1] - targets[k])", ["tests/test_scenes.py", "-k", "as_many_pieces"]),
    "6 janus band two thirds wide": (
        "dreamfusion/world/scores.py", "<= (hi - lo) / 4", "<= (hi - lo) / 3", ["tests/test_scenes.py", "-k", "janus_band"]),
    "6 janus threshold 0.3": (
        "dreamfusion/world/scores.py", "sum(f > 0.5 for f in views.values())", "sum(f > 0.3 for f in views.values())",
        ["tests/test_scenes.py", "-k", "janus_band"]),
    "7 (W/2, H/2) swapped": (
        "dreamfusion/train/densify.py", "grad.new_tensor([0.5 * W, 0.5 * H])", "grad.new_tensor([0.5 * H, 0.5 * W])",
        ["tests/test_densify.py", "-k", "half_the_width"]),
    "7 densify one step late": (
        "dreamfusion/train/trainer.py",
        "self.strategy.step_post_optimizer(self.field, self.optimizer, out, self.step)  # e.g. clone / split",
        "self.strategy.step_post_optimizer(self.field, self.optimizer, out, self.step + 1)  # e.g. clone / split",
        ["tests/test_densify.py", "-k", "third_step"]),
    "7 split children at the parent": (
        "dreamfusion/train/densify.py", '"means": field.means[split_idx].repeat(2, 1) + offsets',
        '"means": field.means[split_idx].repeat(2, 1)', ["tests/test_densify.py", "-k", "split_children"]),
    "8 an integer option's upper bound exclusive": (
        "dreamfusion/cli/parser.py", "(hi is not None and value > hi)", "(hi is not None and value >= hi)",
        ["tests/test_cli_tree.py", "-k", "bounded"]),
    "8 an integer option's lower bound exclusive": (
        "dreamfusion/cli/parser.py", "(lo is not None and value < lo)", "(lo is not None and value <= lo)",
        ["tests/test_cli_tree.py", "-k", "bounded"]),
    "10 a resume does not hold its run folder": (
        "dreamfusion/run.py", '            held.enter_context(hold(run_dir, "training"))  # a second process on the folder is refused here\n',
        "", ["tests/test_run_api.py", "-k", "kill_9"]),
    "10 the run-folder lock is never taken": (
        "dreamfusion/runfolder.py", "        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n", "        pass\n",
        ["tests/test_runfolder_lock.py"]),
    "11 the log plot's EMA taken of y": (
        "dreamfusion/report/plot.py", "smoothed = iter(10 ** v if log_y else v for v in ema(fy))",
        "smoothed = iter(ema([y for y, k in zip(ys, keep) if k]))", ["tests/test_report.py", "-k", "log_axis"]),
    "12 threestudio's guidance convention": (
        "dreamfusion/guidance/models/prediction.py", "return eps_uncond + scale * (eps_cond - eps_uncond)",
        "return eps_cond + scale * (eps_cond - eps_uncond)", ["tests/test_sds.py", "-k", "convention"]),
}


def caught(name: str) -> bool:
    """Apply the variant, run its tests, restore the file: whether the tests failed."""
    rel, text, broken, args = MUTANTS[name]
    path = ROOT / rel
    source = path.read_text()
    if source.count(text) != 1:
        raise SystemExit(f"{name}: the text to break occurs {source.count(text)} times in {rel}, not once")
    try:
        path.write_text(source.replace(text, broken))
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    finally:
        path.write_text(source)
    return rc == 1  # 1: tests failed (not 2-5: interrupted, usage, no tests collected)


def main(argv: list[str]) -> int:
    names = [n for n in MUTANTS if not argv or any(a in n for a in argv)]
    missed = []
    for name in names:
        ok = caught(name)
        print(f"{'caught' if ok else 'MISSED'}  {name}", flush=True)
        missed += [] if ok else [name]
    print(f"{len(names) - len(missed)} of {len(names)} caught")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
