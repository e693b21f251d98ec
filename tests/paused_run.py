"""Tests only: ``python tests/paused_run.py STEP[:PROMPT] ARGS...`` is ``python -m dreamfusion ARGS...`` whose runs
(those of PROMPT only, when given) pause after STEP: once that step's row, preview and checkpoint are written, the
run's ``on_step`` callback writes run_dir/paused and waits until the run is stopped (its ``should_stop()``: a batch
cancelling it; SIGTERM; kill -9). A test that stops a process at a given step waits for the file, then signals: no
timing window to miss. In a batch the callback reaches the Ray workers through Ray's worker_process_setup_hook.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
PAUSED = "paused"  # the file a paused run writes into its folder, holding the step


def pause_runs(spec: str, root: str = ROOT) -> None:
    """Make every ``dreamfusion.run.run`` of this process (``run.resume`` and the CLI call it) pause as ``spec``
    (STEP or STEP:PROMPT) says; ``root`` (this checkout) goes first on sys.path, before dreamfusion is imported."""
    if sys.path[0] != root:
        sys.path.insert(0, root)
    import dreamfusion.run as api

    step, _, only = spec.partition(":")
    real = api.run

    def run(cfg, **options):
        if only in ("", cfg.prompt):
            options["on_step"] = _pause_after(int(step), options.get("should_stop"))
        return real(cfg, **options)

    api.run = run


def _pause_after(step: int, should_stop):
    def on_step(done: int, run_dir: Path) -> None:
        if done == step:
            (Path(run_dir) / PAUSED).write_text(f"{done}\n")
            while not (should_stop is not None and should_stop()):
                time.sleep(0.05)
    return on_step


def main(argv: list[str]) -> int:
    spec, args = argv[0], argv[1:]
    pause_runs(spec)
    if args[:1] == ["batch"]:  # the prompts run in Ray workers: each pauses its runs when it starts
        import ray

        init = ray.init

        def init_pausing(*a, **kw):
            hook = lambda: pause_runs(spec, ROOT)  # noqa: E731 - pickled by value (this is __main__)
            return init(*a, **kw, runtime_env={"worker_process_setup_hook": hook})

        ray.init = init_pausing
    from dreamfusion.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
