"""Command line: ``python -m dreamfusion [COMMAND] ...``, one parser tree (parser.py) and a handler per command
(commands.py).

    python -m dreamfusion [run] [--config NAME|PATH] key=value ...   optimize a new asset (or resume=RUN_DIR)
    python -m dreamfusion export | eval | view | report | preview | batch ...   (COMMAND --help: its options)

Every mistake a user can make ends in one line on stderr and exit status 2; the last line printed on
stdout is the run folder (preview: the image). The work itself is the run API (dreamfusion/run.py) and the
modules of the other commands; none of them parses argv.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from .commands import HANDLERS
from .parser import build_parser, command_table, help_text, parse_command_line

__all__ = ["main", "parse_command_line", "build_parser", "command_table"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        command, args = parse_command_line(argv, parser)
        if args is None:
            print(help_text(command, parser))
            return 0
        result = HANDLERS[command](args)
    except UserError as exc:
        if exc.run_dir is not None:
            print(exc.run_dir)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if isinstance(result, Path):
        print(result)
        return 0
    return result
