"""Many prompts on Ray: ``python -m dreamfusion batch PROMPTS.txt [--config NAME] [key=value ...]
[--address auto|HOST:PORT] [--max-parallel N] [--cpus-per-worker N]`` (``pip install "dreamfusion[ray]"``).

Without --address a local Ray instance is started; with one the batch joins that cluster. Each Ray actor
keeps the guidance model loaded and runs prompt after prompt (one GPU per actor on CUDA, --cpus-per-worker
cores per actor on CPU). See driver.py for the batch folder.
"""

from __future__ import annotations

import sys

from ..errors import UserError
from .driver import plan, run_batch
from .prompts import PromptLine, read_prompts

__all__ = ["cmd_batch", "run_batch", "plan", "read_prompts", "PromptLine"]

USAGE = ("usage: python -m dreamfusion batch PROMPTS.txt [--config NAME] [key=value ...] "
         "[--address auto|HOST:PORT] [--max-parallel N] [--cpus-per-worker N]")


def _positive(flag: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UserError(f"{flag} must be a positive integer, got '{value}'; {USAGE}")
    return number


def _parse(argv: list[str]) -> dict:
    out = {"config": None, "address": None, "max_parallel": None, "cpus_per_worker": 1, "overrides": []}
    files, i = [], 0
    flags = {"--config": "config", "--address": "address", "--max-parallel": "max_parallel",
             "--cpus-per-worker": "cpus_per_worker"}
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag in flags:
            if not eq:
                if i + 1 >= len(argv):
                    raise UserError(f"{flag} needs a value; {USAGE}")
                value, i = argv[i + 1], i + 1
            key = flags[flag]
            out[key] = _positive(flag, value) if key in ("max_parallel", "cpus_per_worker") else value
        elif arg.startswith("-"):
            raise UserError(f"unknown option '{arg}'; {USAGE}")
        elif "=" in arg:
            out["overrides"].append(arg)
        else:
            files.append(arg)
        i += 1
    if len(files) != 1:
        raise UserError(f"batch needs one prompts file; {USAGE}")
    if any(o.startswith("prompt=") for o in out["overrides"]):
        raise UserError("prompt= does not apply to a batch: the prompts come from the file, one a line")
    out["prompts_file"] = files[0]
    return out


def cmd_batch(argv: list[str]) -> int:
    """The ``batch`` subcommand: prints the batch folder last; exit 0 when every prompt is done, 1 otherwise."""
    args = _parse(argv)
    batch_dir, batch = run_batch(args["prompts_file"], args["config"], args["overrides"], args["address"],
                                 args["max_parallel"], args["cpus_per_worker"])
    c = batch["counts"]
    print(f"batch: {c['done']} done, {c['failed']} failed of {len(batch['runs'])}", file=sys.stderr)
    for row in batch["runs"]:
        if row["status"] == "failed":
            print(f"  failed: {row['prompt']}: {row['error']}", file=sys.stderr)
    print(batch_dir)
    return 0 if c["done"] == len(batch["runs"]) else 1
