"""How far a newcomer walks to follow the run's config: the modules ``run.run`` passes it through, in call order.

    python benchmarks/config_path.py            # a 2-step demo run, traced; prints the path and its counts
    python benchmarks/config_path.py --list     # also every stay, one a line
    python benchmarks/config_path.py --field gaussian   # the Gaussian field's path (densification too)

What is traced: every call of a function of this project (``dreamfusion/`` and ``render/``) that is handed the
run's config or one of its sections (a positional or keyword argument that is a ``Config`` or a section object
of one, or ``self`` whose ``cfg`` attribute is), from ``run.run`` down. Each function counts at its
first call only, so the path is the order in which a reader meets the code, not how often a loop repeats it.
Consecutive functions of one module are one *stay*. Counted:

- modules: how many modules the path visits;
- stays: how many times it enters a module;
- returns: stays in a module the path had already left once (a reader goes back to a file they have read);
- climbs: stays in a higher layer (tests/test_architecture.py's ``LAYERS``) than the stay before.

Issue 29 asks for at most 8 returns.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_architecture import _owner  # noqa: E402  (the layer table lives with its test)


def _section_types(cfg) -> set[type]:
    """The types of the config and of every section inside it."""
    out, todo = set(), [cfg]
    while todo:
        value = todo.pop()
        out.add(type(value))
        todo += [getattr(value, f.name) for f in dataclasses.fields(value)
                 if dataclasses.is_dataclass(getattr(value, f.name))]
    return out


def _module_name(filename: str) -> str | None:
    try:
        rel = Path(filename).resolve().relative_to(ROOT)
    except ValueError:
        return None
    if rel.parts[0] not in ("dreamfusion", "render"):
        return None
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def trace_run(overrides: list[str]) -> list[tuple[str, str]]:
    """[(module, function)] of the first call of each function handed the config, in order."""
    from dreamfusion.config import load_config
    from dreamfusion.run import run

    cfg = load_config("demo", overrides)
    types = _section_types(cfg)
    seen: set[object] = set()
    path: list[tuple[str, str]] = []
    started = [False]

    def tracks(value) -> bool:
        return type(value) in types or type(getattr(value, "cfg", None)) in types

    modules: dict[str, str | None] = {}  # file name -> module (resolving paths on every call is slow)

    def profile(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if code in seen:
            return
        filename = code.co_filename
        module = modules.get(filename, "?")
        if module == "?":
            module = modules[filename] = _module_name(filename)
        if module is None:
            return
        started[0] = started[0] or (module == "dreamfusion.run" and code.co_name == "run")
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if started[0] and any(tracks(frame.f_locals.get(n)) for n in names):
            seen.add(code)
            path.append((module, code.co_qualname))

    sys.setprofile(profile)
    try:
        run(cfg, quiet=True)
    finally:
        sys.setprofile(None)
    return path


def stays(path: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for module, function in path:
        if out and out[-1][0] == module:
            out[-1][1].append(function)
        else:
            out.append((module, [function]))
    return out


def counts(visits: list[tuple[str, list[str]]]) -> dict[str, int]:
    left: set[str] = set()
    returns = climbs = 0
    for i, (module, _) in enumerate(visits):
        if module in left:
            returns += 1
        if i and _owner(module)[0] > _owner(visits[i - 1][0])[0]:
            climbs += 1
        if i:
            left.add(visits[i - 1][0])
    return {"modules": len({m for m, _ in visits}), "stays": len(visits), "returns": returns, "climbs": climbs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print every stay")
    ap.add_argument("--field", default="nerf", choices=["nerf", "triplane", "gaussian"], help="the field to run")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another setting of the traced run (sizes for a quick check; the path is the same)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        overrides = ["prompt=a red cube", "steps=2", "preview_every=1", "checkpoint_every=1", f"output_dir={out}",
                     "export.resolution=24", "export.video_frames=2", "export.video_resolution=32",
                     "export.texture_size=64", "render.eval_grid=24", "guidance.prior.views=16",
                     f"field.type={args.field}", "field.gaussian.densify_every=1", "field.gaussian.densify_start=0",
                     *args.set]
        os.environ.setdefault("OMP_NUM_THREADS", "2")
        visits = stays(trace_run(overrides))
    if args.list:
        for module, functions in visits:
            print(f"{module:40s} {', '.join(functions)}")
    print(" ".join(f"{k} {v}" for k, v in counts(visits).items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
