"""Read what a run folder holds, for the report: run.json, config.yaml (and its difference from the config
file's defaults), metrics.jsonl, previews/step_NNNNNN.png and the files. Only files inside the folder are
read; every piece may be missing (a failed or interrupted run), which gives None / [] and a note, not an error.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..migrations import FORMAT_KEY
from ..runfolder import CONFIG, MESH_GLB, METRICS, PREVIEWS, REPORT, RUN_JSON, VIDEO

__all__ = ["MISSING", "POOR_IOU", "RunFolder", "read_run", "config_diff", "flatten", "series", "format_size",
           "files_with_sizes"]

MISSING = object()  # a key that the defaults lack, in config_diff's answer
PREVIEW = re.compile(r"step_(\d+)\.png")
POOR_IOU = 0.6  # an embedded-prior mesh whose IoU with the prompt's object is under this is flagged as poor
# (report and batch gallery); under every shape's benchmark target, 0.65 (torus) to 0.85 (cube, sphere), whose demo
# runs measured 0.708 to 0.941 (docs/BENCHMARKS.md)
MAX_PREVIEWS = 24  # more are thinned to this many, evenly over training (first and last kept)
DEFAULT_PATHS = {"glb": MESH_GLB, "video": VIDEO}  # where a run puts them without run.json


@dataclass
class RunFolder:
    path: Path
    info: dict = field(default_factory=dict)  # run.json, {} when absent
    config: dict | None = None  # config.yaml as nested dicts
    diff: dict = field(default_factory=dict)  # dotted key -> default value (or MISSING) where they differ
    notes: list[str] = field(default_factory=list)  # what could not be read, one line each
    metrics: list[dict] = field(default_factory=list)  # metrics.jsonl rows
    previews: list[tuple[int, Path, int]] = field(default_factory=list)  # (step, png, width in px), by step

    def artifact(self, name: str) -> Path | None:
        """The file run.json names as artifact `name` (or its usual path), if it exists inside the folder."""
        rel = (self.info.get("artifacts") or {}).get(name) or DEFAULT_PATHS.get(name)
        return _inside(self.path, rel) if isinstance(rel, str) else None


def _inside(root: Path, rel: str) -> Path | None:
    path = (root / rel).resolve()
    return path if path.is_file() and path.is_relative_to(root.resolve()) else None


def format_size(n: int) -> str:
    """Bytes in binary units: 1023 B, 1.0 KiB, 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}, in order; an empty dict stays a leaf."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def config_diff(config: dict, defaults: dict) -> dict:
    """The dotted keys of `config` whose value differs from `defaults`, each mapped to its default value,
    or to MISSING when the defaults have no such key (a renamed or removed key). Keys only in the
    defaults are not listed: the config does not set them."""
    flat_defaults = flatten(defaults)
    out = {}
    for key, value in flatten(config).items():
        if key not in flat_defaults:
            out[key] = MISSING
        elif _plain(value) != _plain(flat_defaults[key]):
            out[key] = flat_defaults[key]
    return out


def _read_json(path: Path, notes: list[str]) -> dict:
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        notes.append(f"{path.name} not found: status, prompt and timings come from the other files")
        return {}
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} could not be read ({exc})")
        return {}
    if not isinstance(info, dict):
        notes.append(f"{path.name} is not a JSON object")
        return {}
    return info


def _read_config(run: RunFolder) -> None:
    from omegaconf import OmegaConf

    path = run.path / CONFIG
    if not path.is_file():
        run.notes.append(f"{CONFIG} not found")
        return
    try:
        run.config = OmegaConf.to_container(OmegaConf.load(path))
        if isinstance(run.config, dict):
            run.config.pop(FORMAT_KEY, None)  # the file's format number, not a setting
    except Exception as exc:  # noqa: BLE001 - any parse error is shown, not raised
        run.notes.append(f"{CONFIG} could not be read: {str(exc).splitlines()[0]}")
        return
    if "config" not in run.info:
        run.notes.append("the config's name is unknown (no run.json): shown without comparing to defaults")
        return
    name = run.info["config"]
    try:
        from dreamfusion.config import config_defaults

        defaults = config_defaults(name)
    except Exception as exc:  # noqa: BLE001 - a config that no longer exists or no longer loads
        run.notes.append(f"the defaults of config '{name or 'dreamfusion'}' could not be loaded "
                         f"({str(exc).splitlines()[0]}): shown without highlights")
        return
    run.diff = config_diff(run.config, defaults)


def _read_metrics(run: RunFolder) -> None:
    path = run.path / METRICS
    if not path.is_file():
        return
    bad = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            run.metrics.append(row)
        else:
            bad += 1
    if bad:
        run.notes.append(f"{METRICS}: {bad} unreadable line(s) skipped")


def series(rows: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """name -> (steps, values) for loss, grad_norm, t, every other loss_* and sec_per_step, where logged.
    A null or non-numeric value counts as NaN (drawn as a gap). A loss_* term equal to the loss at every step
    (the only term, weighted 1: SDS alone) is left out, not drawn twice."""
    keys = {k for row in rows for k in row}
    names = [k for k in ("loss", "grad_norm", "t") if k in keys]
    names += sorted(k for k in keys if k.startswith("loss_"))
    names += [k for k in ("sec_per_step",) if k in keys]
    out = {}
    for name in names:
        pts = [(float(r["step"]), r.get(name)) for r in rows if name in r]
        values = [float(v) if isinstance(v, (int, float)) else math.nan for _, v in pts]
        out[name] = ([s for s, _ in pts], values)
    return {name: curve for name, curve in out.items()
            if not (name.startswith("loss_") and "loss" in out and _same(curve, out["loss"]))}


def _same(a: tuple[list[float], list[float]], b: tuple[list[float], list[float]]) -> bool:
    return a[0] == b[0] and all(math.isclose(u, v, rel_tol=1e-6, abs_tol=1e-12) or (math.isnan(u) and math.isnan(v))
                                for u, v in zip(a[1], b[1]))


def files_with_sizes(root: Path, skip: tuple[str, ...] = (REPORT,)) -> list[tuple[str, int]]:
    """(path relative to root, bytes) of every file under root, sorted; hidden files (temporaries) left out."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in skip and not any(p.startswith(".") for p in rel.split("/")):
            out.append((rel, path.stat().st_size))
    return out


def read_run(run_dir: Path) -> RunFolder:
    run = RunFolder(Path(run_dir))
    run.info = _read_json(run.path / RUN_JSON, run.notes)
    _read_config(run)
    _read_metrics(run)
    _read_previews(run)
    return run


def _read_previews(run: RunFolder) -> None:
    from PIL import Image

    folder = run.path / PREVIEWS
    found = sorted((int(m.group(1)), p) for p in folder.glob("step_*.png") if (m := PREVIEW.fullmatch(p.name)))
    if len(found) > MAX_PREVIEWS:
        run.notes.append(f"{len(found)} previews: showing {MAX_PREVIEWS}, evenly spaced over training")
        found = [found[round(i * (len(found) - 1) / (MAX_PREVIEWS - 1))] for i in range(MAX_PREVIEWS)]
    for step, png in found:
        try:
            with Image.open(png) as im:
                run.previews.append((step, png, im.size[0]))
        except OSError as exc:
            run.notes.append(f"{png.name} could not be read ({exc})")
