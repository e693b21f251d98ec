"""Command line: `python -m dreamfusion [--config NAME|PATH] key=value ...` and its subcommands.

    python -m dreamfusion [--config NAME|PATH] key=value ...   optimize a new asset (or resume=RUN_DIR)
    python -m dreamfusion export RUN_DIR [key=value ...]       mesh + video again from the checkpoint
    python -m dreamfusion eval RUN_DIR [RUN_DIR ...] --clip-model ID_OR_FOLDER
    python -m dreamfusion view RUN_DIR                         browse the result in a web viewer

Every mistake a user can make ends in one line on stderr and exit status 2; the last line printed on
stdout is the run folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError

__all__ = ["main"]

SUBCOMMANDS = ("export", "eval", "view")


def _help() -> str:
    from .config import all_keys, available_configs

    lines = [__doc__.strip(), "", "configs (--config NAME): " + ", ".join(available_configs()), "", "keys:"]
    for key, doc, default in all_keys():
        lines.append(f"  {key} = {default!r}\n      {doc}")
    return "\n".join(lines)


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
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


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is visible: use device=cpu or device=auto")
    return torch.device(name)


def cmd_run(argv: list[str]) -> Path:
    from .checkpoint import check_output_dir, make_run_dir
    from .config import load_config, load_run_config, to_yaml
    from .guidance import build_guidance
    from .guidance.prompts import slugify
    from .train import Trainer

    name, overrides = _split_config_flag(argv)
    cfg = load_config(name, overrides)
    resuming = cfg.resume is not None
    if resuming:
        run_dir = Path(cfg.resume)
        config_path = run_dir / "config.yaml"
        if not config_path.is_file():
            raise UserError(f"cannot resume: '{run_dir}' has no config.yaml; pass a run folder made by dreamfusion")
        cfg = load_run_config(config_path, [o for o in overrides if not o.startswith("resume=")])
    if not cfg.prompt.strip():
        raise UserError('prompt is empty: pass prompt="a red cube" (or any text)')
    device = _device(cfg.device)
    if resuming:
        trainer = Trainer(cfg, run_dir, device)
        trainer.resume()  # fails before the slow model load when the checkpoint is bad
    else:
        check_output_dir(cfg.output_dir)  # likewise for an output_dir that cannot hold the run folder
    guidance = build_guidance(cfg, device)  # fails (model not found) before anything is written
    if not resuming:
        run_dir = make_run_dir(cfg.output_dir, slugify(cfg.prompt))
        trainer = Trainer(cfg, run_dir, device)
    from .checkpoint import atomic_write_text

    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    print(f"run folder: {run_dir}", file=sys.stderr)
    try:
        trainer.fit(guidance)
    except UserError:
        print(run_dir)
        raise
    _export(trainer, cfg, run_dir, device)
    return run_dir


def _export(trainer, cfg, run_dir: Path, device) -> None:
    from .exporting import export_run

    written, errors = export_run(trainer.field, trainer.background, cfg, run_dir, device)
    for path in written.values():
        print(f"wrote {path}", file=sys.stderr)
    if errors:
        print(run_dir)
        raise UserError("; ".join(errors) + f" (the checkpoint in {run_dir} is intact: retry with "
                        f"python -m dreamfusion export {run_dir} key=value)")


def cmd_export(argv: list[str]) -> Path:
    from .config import load_run_config
    from .train import Trainer
    from .checkpoint import load_checkpoint

    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        raise UserError("usage: python -m dreamfusion export RUN_DIR [export.resolution=256 ...]")
    run_dir, overrides = Path(argv[0]), argv[1:]
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"'{run_dir}' is not a run folder (no config.yaml)")
    cfg = load_run_config(run_dir / "config.yaml", overrides)
    device = _device(cfg.device)
    state = load_checkpoint(run_dir, map_location=device)
    trainer = Trainer(cfg, run_dir, device)
    trainer.load(state, with_optimizer=False)
    _export(trainer, cfg, run_dir, device)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(_help())
        return 0
    try:
        if argv and argv[0] in SUBCOMMANDS:
            sub, rest = argv[0], argv[1:]
            if sub == "export":
                run_dir = cmd_export(rest)
            elif sub == "eval":
                from .evaluate import cmd_eval
                return cmd_eval(rest)
            else:
                from .viewer import cmd_view
                return cmd_view(rest)
        else:
            run_dir = cmd_run(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(run_dir)
    return 0
