"""Command line: `python -m dreamfusion [--config NAME|PATH] key=value ...` and its subcommands.

    python -m dreamfusion [--config NAME|PATH] key=value ...   optimize a new asset (or resume=RUN_DIR)
    python -m dreamfusion export RUN_DIR [key=value ...]       mesh + video again from the checkpoint
    python -m dreamfusion eval RUN_DIR [RUN_DIR ...] --clip-model ID_OR_FOLDER
    python -m dreamfusion view RUN_DIR                         browse the result in a web viewer
    python -m dreamfusion report RUN_DIR                       rebuild RUN_DIR/report.html
    python -m dreamfusion preview prompt=... [--config NAME] [--steps 50]   2D DDIM samples of the prompt first
    python -m dreamfusion batch PROMPTS.txt [--config NAME] [key=value ...] [--address auto|HOST:PORT]
                                [--max-parallel N]              many prompts on Ray, with a gallery

Every mistake a user can make ends in one line on stderr and exit status 2; the last line printed on
stdout is the run folder. The work itself is the run API (dreamfusion/run.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError

__all__ = ["main"]

def _help() -> str:
    from .config import all_keys, available_configs

    lines = [__doc__.strip(), "", "configs (--config NAME): " + ", ".join(available_configs()), "", "keys:"]
    for key, doc, default in all_keys():
        lines.append(f"  {key} = {default!r}\n      {doc}")
    return "\n".join(lines)


def split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """(--config NAME or None, the key=value items); any other option is a UserError."""
    name, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UserError("--config needs a NAME or a path, e.g. --config demo")
            name, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise UserError(f"unknown option '{arg}': options are --config NAME and --help; settings are key=value")
        else:
            rest.append(arg)
        i += 1
    return name, rest


def cmd_run(argv: list[str]) -> Path:
    from .config import load_config
    from .run import resume, run

    name, overrides = split_config_flag(argv)
    cfg = load_config(name, overrides)
    if cfg.resume is not None:
        return resume(cfg.resume, [o for o in overrides if not o.startswith("resume=")], config_name=name).run_dir
    return run(cfg, config_name=name, overrides=overrides).run_dir


def cmd_export(argv: list[str]) -> Path:
    from .run import export

    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        raise UserError("usage: python -m dreamfusion export RUN_DIR [export.resolution=256 ...]")
    run_dir = Path(argv[0])
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"'{run_dir}' is not a run folder (no config.yaml)")
    result = export(run_dir, argv[1:])
    for path in result.artifacts.values():
        print(f"wrote {path}", file=sys.stderr)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(_help())
        return 0
    try:
        if argv and argv[0] == "eval":
            from .evaluate import cmd_eval
            return cmd_eval(argv[1:])
        if argv and argv[0] == "view":
            from .viewer import cmd_view
            return cmd_view(argv[1:])
        if argv and argv[0] == "report":
            from .report import cmd_report
            return cmd_report(argv[1:])
        if argv and argv[0] == "batch":
            from .batch import cmd_batch
            return cmd_batch(argv[1:])
        if argv and argv[0] == "preview":
            from .preview import cmd_preview
            run_dir = cmd_preview(argv[1:])  # the image's path is the last line, as a run folder is
        else:
            run_dir = cmd_export(argv[1:]) if argv and argv[0] == "export" else cmd_run(argv)
    except UserError as exc:
        if exc.run_dir is not None:
            print(exc.run_dir)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(run_dir)
    return 0
