"""What each command does with its parsed arguments: a call of its work function, imported when it runs.

A handler returns a Path (printed as the last line of stdout, exit status 0) or an exit status (the work
function printed its own output). UserErrors propagate to ``main`` (one line, exit status 2).
"""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

from ..errors import UserError

__all__ = ["HANDLERS"]


def cmd_run(args: Namespace) -> Path:
    from ..config import load_config
    from ..run import resume, run

    cfg = load_config(args.config, args.settings)
    if cfg.resume is not None:
        rest = [o for o in args.settings if not o.startswith("resume=")]
        return resume(cfg.resume, rest, config_name=args.config).run_dir
    return run(cfg, config_name=args.config, overrides=args.settings).run_dir


def cmd_export(args: Namespace) -> Path:
    from ..run import export

    from ..runfolder import CONFIG, is_run_folder

    run_dir = Path(args.run_dir)
    if not is_run_folder(run_dir):
        raise UserError(f"'{run_dir}' is not a run folder (no {CONFIG})")
    result = export(run_dir, args.settings)
    for path in result.artifacts.values():
        print(f"wrote {path}", file=sys.stderr)
    return run_dir


def cmd_refine(args: Namespace) -> Path:
    from ..run import refine

    return refine(Path(args.run_dir), args.config, args.settings).run_dir


def cmd_eval(args: Namespace) -> int:
    from ..clip_eval import evaluate_runs

    json_path = Path(args.json) if args.json is not None else None
    return evaluate_runs([Path(r) for r in args.runs], args.clip_model, views=args.views, resolution=args.resolution,
                         json_path=json_path, device=args.device)


def cmd_view(args: Namespace) -> int:
    from ..viewer import view_run

    return view_run(Path(args.run_dir), host=args.host, port=args.port)


def cmd_report(args: Namespace) -> Path:
    from ..report import rebuild_report

    return rebuild_report(Path(args.run_dir))


def cmd_preview(args: Namespace) -> Path:
    """The preview image's path is the last line printed, as a run folder is."""
    from ..config import load_config
    from ..preview import write_preview

    return write_preview(load_config(args.config, args.settings), args.steps)


def cmd_batch(args: Namespace) -> int:
    """Prints the batch folder last; exit status 0 when every prompt is done, 1 otherwise."""
    from ..batch import run_batch

    batch_dir, batch = run_batch(args.prompts_file, args.config, args.settings, args.address, args.max_parallel,
                                 args.cpus_per_worker)
    c = batch["counts"]
    print(f"batch: {c['done']} done, {c['failed']} failed of {len(batch['runs'])}", file=sys.stderr)
    for row in batch["runs"]:
        if row["status"] == "failed":
            print(f"  failed: {row['prompt']}: {row['error']}", file=sys.stderr)
    print(batch_dir)
    return 0 if c["done"] == len(batch["runs"]) else 1


HANDLERS = {"run": cmd_run, "export": cmd_export, "refine": cmd_refine, "eval": cmd_eval, "view": cmd_view, "report": cmd_report,
            "preview": cmd_preview, "batch": cmd_batch}
