"""The command line's one parser tree: ``python -m dreamfusion [COMMAND] ...``, one argparse subparser per command.

Each command has a usage line, options (every one with help text; the formatter adds its default) and examples,
the first of which is the README's. ``parse_command_line(argv) -> (command, namespace)`` picks the command (``run``
when the first argument is not a command's name, e.g. a key=value setting or --config) and parses the rest of the
line with options and positionals in any order. Settings (key=value) stay the strings typed: config/loader.py reads
them. A mistake raises a one-line UserError (what is wrong, then the command's usage), never argparse's usage dump
and SystemExit.
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Callable, NamedTuple

from ..errors import UserError

__all__ = ["PROG", "COMMANDS", "Command", "build_parser", "parse_command_line", "help_text", "command_table"]

PROG = "python -m dreamfusion"


class Command(NamedTuple):
    name: str
    summary: str  # one line: the command list and the README's table
    usage: str  # after PROG
    examples: tuple[str, ...]  # full command lines; the first is the README table's
    description: str = ""


COMMANDS = (
    Command("run", "optimize a new asset from a prompt (the default command), or continue one with resume=RUN_DIR",
            "[run] [--config NAME|PATH] [key=value ...]",
            (f'{PROG} --config demo prompt="a red cube"', f'{PROG} prompt="a peacock on a surfboard" steps=5000',
             f"{PROG} resume=RUN_DIR steps=12000"),
            "Optimizes a field for the prompt and exports it; the run folder is the last line printed.\n"
            "resume=RUN_DIR continues a run from its last checkpoint in the same folder (other settings on top)."),
    Command("export", "mesh and video again from a run's checkpoint, without the diffusion model",
            "export RUN_DIR [key=value ...]",
            (f"{PROG} export RUN_DIR export.resolution=256", f"{PROG} export RUN_DIR export.texture=vertex")),
    Command("refine", "the refine stage of a finished run: its surface as a textured mesh, rasterized and optimized",
            "refine RUN_DIR [--config NAME|PATH] [key=value ...]",
            (f"{PROG} refine RUN_DIR --config demo-refine", f"{PROG} refine RUN_DIR steps=5000"),
            "Starts a new run folder (under the run's output_dir) from the run's exported surface and albedo; without\n"
            "--config the refine config follows the run: demo-refine (embedded prior), gaussian-refine, prolificdreamer-\n"
            "refine (VSD) or magic3d-refine. The new run folder is the last line printed."),
    Command("eval", "CLIP score and R-precision of finished runs, with a CLIP other than the guidance one",
            "eval RUN_DIR [RUN_DIR ...] --clip-model ID_OR_FOLDER [--views N] [--resolution PX] [--json PATH] "
            "[--device auto|cpu|cuda]",
            (f"{PROG} eval RUN_DIR OTHER_RUN_DIR --clip-model openai/clip-vit-base-patch32",
             f"{PROG} eval RUN_DIR --clip-model ~/models/clip-b32 --views 16 --json scores.json"),
            "The table goes to stderr, the JSON report to stdout or to --json PATH."),
    Command("view", 'browse a run\'s splats and mesh in a web viewer (pip install -e ".[viewer]")',
            "view RUN_DIR [--port 8080] [--host 127.0.0.1]",
            (f"{PROG} view RUN_DIR --port 8080", f"{PROG} view RUN_DIR --host 0.0.0.0 --port 9000"),
            "Prints the URL and serves until Ctrl-C."),
    Command("report", "rebuild RUN_DIR/report.html from the run folder",
            "report RUN_DIR", (f"{PROG} report RUN_DIR",)),
    Command("preview", "2D DDIM samples of the prompt from four views, before a 3D run",
            "preview [--config NAME|PATH] [--steps 50] [key=value ...]",
            (f'{PROG} preview --config demo prompt="a green cone"',
             f'{PROG} preview prompt="a corgi" --steps 30 guidance.preview_scale=7.5'),
            "Writes <output_dir>/preview-<prompt>-<time>.png (front, right, back, left) and prints its path last.\n"
            "Takes the same key=value settings as run."),
    Command("batch", 'many prompts on Ray, with a gallery (pip install -e ".[ray]")',
            "batch PROMPTS.txt [--config NAME|PATH] [key=value ...] [--address auto|HOST:PORT] [--max-parallel N] "
            "[--cpus-per-worker N]",
            (f"{PROG} batch props.txt --config demo --max-parallel 2",
             f"{PROG} batch props.txt --address auto --cpus-per-worker 4 steps=3000"),
            "PROMPTS.txt holds one prompt a line (# comments; a line may end with seed=N). Running the same command\n"
            "again skips finished prompts and resumes the others. Exit status 1 when a prompt failed."),
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option's help ends with its default (when it has one)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """One line per mistake: argparse's messages reworded, the command's usage after them; no SystemExit."""

    def __init__(self, *args, epilog_fn: Callable[[], str] | None = None, **kwargs):
        super().__init__(*args, formatter_class=_Formatter, allow_abbrev=False, **kwargs)
        self.epilog_fn = epilog_fn

    def format_help(self) -> str:
        if self.epilog_fn is not None:  # built on demand: the config keys' docs import the config schema
            self.epilog = self.epilog_fn()
        return super().format_help()

    def error(self, message: str):
        m = re.fullmatch(r"argument (\S+): (.*)", message, re.S)
        if m:
            flag, text = m.group(1).split("/")[-1], m.group(2)
            if text == "expected one argument":
                message = f"{flag} needs a value"
            else:
                message = f"{flag} {text}" if text.startswith("must ") else f"{flag}: {text}"
        raise UserError(f"{message}; {self.format_usage().strip()}")

    def options(self) -> str:
        """'--port PORT, --host HOST and --help': the options a user can pass."""
        names = [a.option_strings[-1] + (f" {a.metavar or a.dest.upper()}" if a.nargs != 0 else "")
                 for a in self._actions if a.option_strings and a.dest != "help"] + ["--help"]
        return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


# -- value types: each failure is a message argparse prefixes with the flag --------------------------------

def _integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    if lo == 1 and hi is None:
        wanted = "a positive integer"
    elif lo is not None and hi is not None:
        wanted = f"an integer in [{lo}, {hi}]"
    else:
        wanted = "an integer"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got '{text}'")
        return value
    parse.__name__ = "integer"
    return parse


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, got '{text}'")
        return text
    parse.__name__ = "choice"
    return parse


# -- the tree ------------------------------------------------------------------------------------------------

def _keys_help() -> str:
    from ..config import all_keys, available_configs

    lines = ["configs (--config NAME): " + ", ".join(available_configs()), "", "keys:"]
    for key, doc, default in all_keys():
        lines.append(f"  {key} = {default!r}\n      {doc}")
    return "\n".join(lines)


def _examples(command: Command) -> str:
    return "examples:\n" + "\n".join(f"  {e}" for e in command.examples)


def _settings(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("settings", nargs="*", metavar="key=value", help=what)


def _config(parser: argparse.ArgumentParser, where: str = "python -m dreamfusion run --help lists them",
            without: str = "dreamfusion") -> None:
    parser.add_argument("--config", metavar="NAME|PATH", default=None,
                        help=f"a config by name ({where}) or a YAML file; without it: {without}")


def _run_dir(parser: argparse.ArgumentParser, what: str = "a run folder made by python -m dreamfusion") -> None:
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help=what)


def _add_options(name: str, p: argparse.ArgumentParser) -> None:
    settings_doc = "config settings (the keys below), e.g. prompt=\"a red cube\" steps=600"
    if name == "run":
        _config(p, "listed below")
        _settings(p, settings_doc + "; resume=RUN_DIR continues that run")
    elif name == "export":
        _run_dir(p)
        _settings(p, "settings for this export on top of the run's config.yaml, e.g. export.resolution=256")
    elif name == "refine":
        _run_dir(p)
        _config(p, without="the one that follows the run (see above)")
        _settings(p, "settings on top of the run's config.yaml and the refine config, e.g. steps=2000")
    elif name == "eval":
        p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folders to score (their prompts compete "
                       "for R-precision)")
        p.add_argument("--clip-model", metavar="ID_OR_FOLDER", default=None,
                       help="the evaluation CLIP, a hub id or a local folder (required); not the guidance CLIP")
        p.add_argument("--views", metavar="N", type=_integer(1), default=8, help="views per run on the evaluation orbit")
        p.add_argument("--resolution", metavar="PX", type=_integer(1), default=None,
                       help="render size in pixels; without it: the CLIP's input size")
        p.add_argument("--json", metavar="PATH", default=None,
                       help="write the JSON report to PATH; without it: to stdout")
        p.add_argument("--device", metavar="auto|cpu|cuda", type=_one_of("auto", "cpu", "cuda"), default="auto",
                       help="where to render and embed")
    elif name == "view":
        _run_dir(p, "a run folder with splats.ply, a Gaussian checkpoint or mesh/model.glb")
        p.add_argument("--port", metavar="PORT", type=_integer(), default=8080, help="the port to serve on")
        p.add_argument("--host", metavar="HOST", default="127.0.0.1",
                       help="the address to serve on (0.0.0.0: every interface)")
    elif name == "report":
        _run_dir(p)
    elif name == "preview":
        _config(p, "listed below")
        p.add_argument("--steps", metavar="N", type=_integer(1, 1000), default=50, help="DDIM steps")
        _settings(p, settings_doc)
    elif name == "batch":
        p.add_argument("prompts_file", nargs="?", metavar="PROMPTS.txt", help="the prompts, one a line")
        _config(p)
        _settings(p, "settings for every prompt (not prompt=), e.g. steps=3000")
        p.add_argument("--address", metavar="auto|HOST:PORT", default=None,
                       help="join a running Ray cluster; without it: start a local Ray instance")
        p.add_argument("--max-parallel", metavar="N", type=_integer(1), default=None,
                       help="Ray actors at most; without it: one per GPU on CUDA, else CPUs / --cpus-per-worker")
        p.add_argument("--cpus-per-worker", metavar="N", type=_integer(1), default=1,
                       help="CPU cores per actor when it runs on the CPU")


def build_parser() -> argparse.ArgumentParser:
    """The tree: a parser whose subparsers (``parser.commands``, by name) are the commands of COMMANDS."""
    top = _Parser(prog=PROG, usage="%(prog)s [COMMAND] [options] [key=value ...]",
                  description="Text to 3D by optimization. Without a COMMAND the arguments are run's (below); "
                              f"{PROG} COMMAND --help\nshows a command's options and examples. Every mistake ends "
                              "in one line on stderr and exit status 2.")
    sub = top.add_subparsers(title="commands", metavar="COMMAND", dest="command", parser_class=_Parser)
    for command in COMMANDS:
        keys = command.name in ("run", "preview")
        epilog = (lambda c=command, k=keys: _examples(c) + ("\n\n" + _keys_help() if k else ""))
        sub.add_parser(command.name, prog=f"{PROG} {command.name}", help=command.summary, usage=f"{PROG} {command.usage}",
                       description=command.summary + (".\n" + command.description if command.description else "."),
                       epilog_fn=epilog)
        _add_options(command.name, sub.choices[command.name])
    top.commands = sub.choices
    return top


def _check(command: str, parser: _Parser, ns: argparse.Namespace) -> None:
    """What argparse cannot say: a missing RUN_DIR, one prompts file, eval's required runs and CLIP."""
    if "run_dir" in ns and (ns.run_dir is None or (command in ("export", "refine") and "=" in ns.run_dir)):
        parser.error(f"{command} needs RUN_DIR, a run folder made by {PROG}")
    if command == "eval":
        if not ns.runs:
            parser.error("eval needs at least one run folder")
        if not ns.clip_model:
            parser.error("eval needs --clip-model ID_OR_FOLDER: a CLIP other than the guidance one, "
                         "e.g. --clip-model openai/clip-vit-base-patch32 (or a local folder)")
    if command == "batch":  # the file is the argument without '=', wherever it stands (as before)
        items = ([ns.prompts_file] if ns.prompts_file is not None else []) + ns.settings
        files = [a for a in items if "=" not in a]
        if len(files) != 1:
            parser.error(f"batch needs one prompts file, got {len(files)}")
        ns.prompts_file, ns.settings = files[0], [a for a in items if "=" in a]


def parse_command_line(argv: list[str], parser: argparse.ArgumentParser | None = None) \
        -> tuple[str, argparse.Namespace | None]:
    """(command, its arguments), or (command, None) when the line asks for help ('' for the top-level help)."""
    parser = parser or build_parser()
    argv = list(argv)
    if argv and argv[0] in parser.commands:
        command, rest = argv[0], argv[1:]
    elif argv and not argv[0].startswith("-") and "=" not in argv[0]:
        close = difflib.get_close_matches(argv[0], list(parser.commands), n=1)
        raise UserError(f"unknown command '{argv[0]}': commands are {', '.join(parser.commands)}"
                        + (f"; did you mean {close[0]}?" if close else "; settings are key=value, e.g. prompt=\"a red cube\""))
    else:
        command, rest = "", argv
    if any(a in ("-h", "--help") for a in rest):
        return command, None
    sub: _Parser = parser.commands[command or "run"]
    ns, extra = sub.parse_known_intermixed_args(rest)
    for arg in extra:
        if arg.startswith("-"):
            raise UserError(f"unknown option '{arg}'; {sub.format_usage().strip()} (options are {sub.options()})")
        sub.error(f"unexpected argument '{arg}'")
    _check(command or "run", sub, ns)
    return command or "run", ns


def help_text(command: str, parser: argparse.ArgumentParser | None = None) -> str:
    """A command's --help; '' gives the top level's: the commands, then run's help (run is the default)."""
    parser = parser or build_parser()
    if command:
        return parser.commands[command].format_help()
    return parser.format_help() + "\nrun (the default command):\n" + parser.commands["run"].format_help()


def command_table() -> str:
    """The README's command table (markdown): command, what it does, its first example."""
    rows = ["| command | what it does | example |", "|---|---|---|"]
    rows += [f"| `{c.name}` | {c.summary} | `{c.examples[0]}` |" for c in COMMANDS]
    return "\n".join(rows)
