"""The command line's one parser tree (dreamfusion/cli/): every command's help, its routing, its one-line errors,
and the README's command table.

Oracles: the parser's own actions (each option must show in its command's --help with its default, and in its
usage line); the command lines users type today, each routed to its work function (monkeypatched: nothing trains)
with the arguments written out by hand; the README's table parsed back and run through the parser.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from dreamfusion.cli import build_parser, command_table, main, parse_command_line
from dreamfusion.cli.parser import COMMANDS, PROG
from dreamfusion.config import all_keys
from dreamfusion.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
NAMES = [c.name for c in COMMANDS]


def run_cli(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def test_the_tree_has_the_eight_commands():
    assert NAMES == ["run", "export", "refine", "eval", "view", "report", "preview", "batch"]
    assert list(build_parser().commands) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_command_help_lists_every_option_with_its_default_and_examples(name):
    rc, out, err = run_cli([name, "--help"])
    assert rc == 0 and err == ""
    parser = build_parser().commands[name]
    text = " ".join(out.split())  # argparse wraps the help column
    for action in parser._actions:
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help text"
        if action.option_strings:
            assert all(s in out for s in action.option_strings), (name, action.option_strings)
            if action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in text, (name, action.option_strings)
        else:
            assert action.metavar in out, (name, action.dest)
        assert " ".join(action.help.split()) in text, (name, action.help)
    command = next(c for c in COMMANDS if c.name == name)
    assert command.examples and f"usage: {PROG} {command.usage}" in out
    for example in command.examples:
        assert f"  {example}\n" in out
        assert parse_command_line(shlex.split(example)[3:])[0] == name, example  # each example parses


@pytest.mark.parametrize("name", NAMES)
def test_each_usage_line_names_every_option_and_argument(name):
    parser = build_parser().commands[name]
    usage = parser.format_usage()
    for action in parser._actions:
        if action.dest != "help":
            names = action.option_strings or [action.metavar]
            assert any(n in usage for n in names), (name, names, usage)


def test_batch_help_shows_its_own_options():
    rc, out, _ = run_cli(["batch", "--help"])
    assert rc == 0
    for flag in ("--cpus-per-worker N", "--max-parallel N", "--address auto|HOST:PORT", "--config NAME|PATH"):
        assert flag in out, flag
    assert "keys:" not in out  # batch's help is its own, not the general one


def test_top_level_help_lists_the_commands_then_run_with_every_key():
    rc, out, _ = run_cli(["--help"])
    assert rc == 0
    commands = out.split("commands:", 1)[1].split("run (the default command):", 1)[0]
    listed = re.findall(r"^    (\w+) ", commands, re.M)
    assert listed == NAMES
    for key, doc, default in all_keys():
        assert f"  {key} = {default!r}\n      {doc}\n" in out + "\n", key


@pytest.mark.parametrize("name", ["run", "preview"])
def test_run_and_preview_help_document_every_config_key(name):
    rc, out, _ = run_cli([name, "--help"])
    assert rc == 0 and "configs (--config NAME): " in out
    for key, doc, default in all_keys():
        assert f"  {key} = {default!r}\n      {doc}\n" in out + "\n", key


# -- routing: the command lines users type, each to its work function -------------------------------------------

class _Calls:
    """Stands in for every work function; records (name, args, kwargs) and returns what the caller expects."""

    def __init__(self, monkeypatch, tmp_path):
        import dreamfusion.batch as batch
        import dreamfusion.clip_eval as clip_eval
        import dreamfusion.preview as preview
        import dreamfusion.report as report
        import dreamfusion.run as run
        import dreamfusion.viewer as viewer

        self.log, self.tmp = [], tmp_path
        result = argparse.Namespace(run_dir=tmp_path / "made", artifacts={})
        for module, name, value in ((run, "run", result), (run, "resume", result), (run, "export", result),
                                    (preview, "write_preview", tmp_path / "preview.png"), (viewer, "view_run", 0),
                                    (clip_eval, "evaluate_runs", 0), (report, "rebuild_report", tmp_path / "r.html"),
                                    (batch, "run_batch", (tmp_path / "batch", {"counts": {"done": 0, "failed": 0},
                                                                               "runs": []}))):
            monkeypatch.setattr(module, name, self._stub(name, value))

    def _stub(self, name, value):
        def stub(*args, **kwargs):
            self.log.append((name, args, kwargs))
            return value
        return stub


def _cfg_summary(cfg) -> tuple:
    return cfg.prompt, cfg.steps, cfg.guidance.type


RUN = "RUN"  # replaced by a folder with a config.yaml


@pytest.mark.parametrize("argv, expected", [
    (['prompt=a red cube'], ("run", None, ["prompt=a red cube"])),
    (["--config", "demo", "prompt=a red cube"], ("run", "demo", ["prompt=a red cube"])),
    (["--config=demo", "prompt=007", "steps=3"], ("run", "demo", ["prompt=007", "steps=3"])),
    (["prompt=a sign that says: hello", "--config", "demo", "steps=3"],
     ("run", "demo", ["prompt=a sign that says: hello", "steps=3"])),
    (["run", "--config", "demo", "prompt=yes"], ("run", "demo", ["prompt=yes"])),
    (["resume=RUN", "steps=12"], ("resume", "RUN", ["steps=12"])),
    (["export", "RUN", "export.resolution=64"], ("export", "RUN", ["export.resolution=64"])),
    (["export", "RUN"], ("export", "RUN", [])),
    (["eval", "RUN", "RUN2", "--clip-model", "m", "--views", "3", "--resolution", "16", "--json", "s.json",
      "--device", "cpu"], ("evaluate_runs", ["RUN", "RUN2"], "m", 3, 16, "s.json", "cpu")),
    (["eval", "--clip-model=m", "RUN", "--views", "2", "RUN2"], ("evaluate_runs", ["RUN", "RUN2"], "m", 2, None, None,
                                                                  "auto")),
    (["view", "RUN", "--port", "8081", "--host", "0.0.0.0"], ("view_run", "RUN", "0.0.0.0", 8081)),
    (["view", "--port=9000", "RUN"], ("view_run", "RUN", "127.0.0.1", 9000)),
    (["view", "RUN"], ("view_run", "RUN", "127.0.0.1", 8080)),
    (["report", "RUN"], ("rebuild_report", "RUN")),
    (["preview", "--config", "demo", "prompt=a red cube", "--steps", "20"], ("write_preview", "demo", "a red cube", 20)),
    (["preview", "prompt=a green cone", "--steps=5"], ("write_preview", None, "a green cone", 5)),
    (["preview", "--config", "demo", "prompt=a red cube"], ("write_preview", "demo", "a red cube", 50)),
    (["batch", "props.txt", "--max-parallel", "2", "--config", "demo", "steps=6", "--address", "auto",
      "--cpus-per-worker", "3"], ("run_batch", "props.txt", "demo", ["steps=6"], "auto", 2, 3)),
    (["batch", "--config", "demo", "steps=6", "props.txt", "seed=1"],
     ("run_batch", "props.txt", "demo", ["steps=6", "seed=1"], None, None, 1)),
    (["batch", "props.txt", "--max-parallel=2"], ("run_batch", "props.txt", None, [], None, 2, 1)),
])
def test_each_command_line_reaches_its_work_function(argv, expected, monkeypatch, tmp_path):
    from dreamfusion.config import load_config

    calls = _Calls(monkeypatch, tmp_path)
    for name in ("RUN", "RUN2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("")
    folder = {"RUN": str(tmp_path / "RUN"), "RUN2": str(tmp_path / "RUN2")}
    argv = [re.sub(r"\bRUN2?\b", lambda m: folder[m.group(0)], a) for a in argv]
    rc, out, err = run_cli(argv)
    assert rc == 0, err
    assert len(calls.log) == 1, calls.log
    name, args, kwargs = calls.log[0]
    assert name == expected[0]
    fold = (lambda x: [fold(v) for v in x] if isinstance(x, list) else folder.get(x, x))  # noqa: E731
    if name == "run":  # run(cfg, config_name=, overrides=): the config loaded from exactly these settings
        config, settings = expected[1], expected[2]
        assert kwargs == {"config_name": config, "overrides": settings}
        assert _cfg_summary(args[0]) == _cfg_summary(load_config(config, settings))
        assert out.splitlines()[-1] == str(tmp_path / "made")
    elif name == "resume":
        assert args == (folder["RUN"], expected[2]) and kwargs == {"config_name": None}
    elif name == "export":
        assert args == (Path(folder["RUN"]), expected[2]) and out.splitlines()[-1] == folder["RUN"]
    elif name == "evaluate_runs":
        runs, clip, views, resolution, json_path, device = expected[1:]
        assert args == ([Path(r) for r in fold(runs)], clip)
        assert kwargs == {"views": views, "resolution": resolution,
                          "json_path": Path(json_path) if json_path else None, "device": device}
    elif name == "view_run":
        assert args == (Path(folder["RUN"]),) and kwargs == {"host": expected[2], "port": expected[3]}
    elif name == "rebuild_report":
        assert args == (Path(folder["RUN"]),) and out.splitlines()[-1] == str(tmp_path / "r.html")
    elif name == "write_preview":
        config, prompt, steps = expected[1:]
        cfg, got_steps = args
        assert (cfg.prompt, got_steps) == (prompt, steps)
        assert cfg == load_config(config, [f"prompt={prompt}"])
        assert out.splitlines()[-1] == str(tmp_path / "preview.png")
    else:
        assert name == "run_batch" and args == tuple(expected[1:]) and kwargs == {}
        assert out.splitlines()[-1] == str(tmp_path / "batch")


# -- errors: one line, exit status 2, nothing run -----------------------------------------------------------------

PARSE_ERRORS = [
    # (argv, what the one line must say); none of these texts is part of the arguments
    (["--fast"], "unknown option '--fast'; usage: python -m dreamfusion [run]"),
    (["--config"], "--config needs a value"),
    (["exprot", "RUN"], "unknown command 'exprot': commands are run, export, refine, eval, view, report, preview, batch; "
                        "did you mean export?"),
    (["export"], "export needs RUN_DIR"),
    (["export", "export.resolution=64"], "export needs RUN_DIR"),
    (["export", "RUN", "--fast"], "unknown option '--fast'; usage: python -m dreamfusion export RUN_DIR"),
    (["eval"], "eval needs at least one run folder"),
    (["eval", "RUN"], "eval needs --clip-model ID_OR_FOLDER"),
    (["eval", "RUN", "--clip-model", "m", "--views", "0"], "--views must be a positive integer, got '0'"),
    (["eval", "RUN", "--clip-model", "m", "--resolution", "x"], "--resolution must be a positive integer, got 'x'"),
    (["eval", "RUN", "--clip-model", "m", "--device", "gpu"], "--device must be one of auto, cpu, cuda, got 'gpu'"),
    (["view"], "view needs RUN_DIR"),
    (["view", "RUN", "--port"], "--port needs a value; usage: python -m dreamfusion view RUN_DIR"),
    (["view", "RUN", "--port", "eighty"], "--port must be an integer, got 'eighty'"),
    (["view", "RUN", "RUN2"], "unexpected argument"),
    (["view", "RUN", "--fast"], "(options are --port PORT, --host HOST and --help)"),
    (["report"], "report needs RUN_DIR"),
    (["report", "RUN", "RUN2"], "unexpected argument"),
    (["preview", "--steps", "0", "prompt=x"], "--steps must be an integer in [1, 1000], got '0'"),
    (["preview", "--steps"], "--steps needs a value"),
    (["batch"], "batch needs one prompts file, got 0"),
    (["batch", "a.txt", "b.txt"], "batch needs one prompts file, got 2"),
    (["batch", "p.txt", "--max-parallel", "0"], "--max-parallel must be a positive integer, got '0'"),
    (["batch", "p.txt", "--cpus-per-worker", "x"], "--cpus-per-worker must be a positive integer, got 'x'"),
    (["batch", "p.txt", "--max"], "unknown option '--max'"),  # no abbreviations
]


@pytest.mark.parametrize("argv, needle", PARSE_ERRORS, ids=[" ".join(a) for a, _ in PARSE_ERRORS])
def test_parse_errors_are_one_line_exit_2_and_run_nothing(argv, needle, monkeypatch, tmp_path):
    calls = _Calls(monkeypatch, tmp_path)
    rc, out, err = run_cli(argv)
    assert rc == 2 and out == "" and calls.log == []
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err and not any(needle in a for a in argv), (needle, err)


# (the command line before the option, the option, its least and greatest value; None: no greatest)
BOUNDED = [(["preview", "prompt=x"], "--steps", 1, 1000), (["eval", "RUN", "--clip-model", "m"], "--views", 1, None),
           (["eval", "RUN", "--clip-model", "m"], "--resolution", 1, None),
           (["batch", "p.txt"], "--max-parallel", 1, None), (["batch", "p.txt"], "--cpus-per-worker", 1, None)]


@pytest.mark.parametrize("argv, flag, lo, hi", BOUNDED, ids=[b[1] for b in BOUNDED])
def test_each_bounded_option_parses_at_its_bounds_and_refuses_one_past(argv, flag, lo, hi):
    dest = flag[2:].replace("-", "_")
    for value in (lo, hi if hi is not None else 10 ** 6):
        assert getattr(parse_command_line([*argv, flag, str(value)])[1], dest) == value, (flag, value)
    for value in (lo - 1, *([hi + 1] if hi is not None else [])):
        with pytest.raises(UserError, match=f"^{flag} must be .*, got '{value}'"):
            parse_command_line([*argv, flag, str(value)])


def test_batch_refuses_a_prompt_setting(monkeypatch, tmp_path):
    (tmp_path / "p.txt").write_text("a red cube\n")
    rc, out, err = run_cli(["batch", tmp_path / "p.txt", "prompt=x"])
    assert rc == 2 and err == "error: prompt= does not apply to a batch: the prompts come from the file, one a line\n"


# -- the README's command table -----------------------------------------------------------------------------------

def test_readme_command_table_matches_the_parser():
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (.*) \| `(.*)` \|$", text, re.M)
    assert [r[0] for r in rows] == NAMES, "the README's table lists other commands than the parser"
    for (name, summary, example), command in zip(rows, COMMANDS):
        assert (summary, example) == (command.summary, command.examples[0]), name
        assert example.startswith(PROG + " ")
        assert parse_command_line(shlex.split(example)[3:])[0] == name, example
    assert command_table() in text  # and it is the table command_table() writes
