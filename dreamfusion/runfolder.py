"""The run folder: its layout, how one is made, and the files the loop and the run API write into it. The one
module that knows the file names; it knows JSON and PNG bytes, not training.

    <output_dir>/<slug>-<YYYYmmdd-HHMMSS>/
        config.yaml            the run's settings (CONFIG)
        run.json               status, artifacts, seconds, metrics (RUN_JSON: RunRecord, read_run_json)
        metrics.jsonl          one row per logged step (METRICS; MetricsLog appends, trim_after cuts on resume)
        previews/step_NNNNNN.png   (PREVIEWS; write_preview)
        checkpoints/last.pt    (CHECKPOINT; checkpoint.py writes and reads it)
        mesh/model.obj, mesh/model.glb, orbit.mp4, triplane.npz | splats.ply   (the export's artifacts)
        report.html, error.log (the traceback of a failed run; write_error_log)
        .lock                  which process trains or exports the folder (LOCK; hold)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError
from .io import atomic_write, atomic_write_text, write_error

__all__ = ["CONFIG", "RUN_JSON", "METRICS", "PREVIEWS", "CHECKPOINT", "MESH_OBJ", "MESH_GLB", "VIDEO", "PLANES",
           "SPLATS", "REPORT", "ERROR_LOG", "slugify", "check_output_dir", "make_run_dir", "fresh_run_dir",
           "is_run_folder", "read_run_json", "RunRecord", "now", "metrics_step", "MetricsLog", "last_logged_step",
           "trim_after", "write_preview", "write_error_log", "LOCK", "RunFolderBusy", "hold"]

CONFIG = "config.yaml"
RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
PREVIEWS = "previews"
CHECKPOINT = Path("checkpoints") / "last.pt"
MESH_OBJ = "mesh/model.obj"
MESH_GLB = "mesh/model.glb"
VIDEO = "orbit.mp4"
PLANES = "triplane.npz"
SPLATS = "splats.ply"
REPORT = "report.html"
ERROR_LOG = "error.log"
RUN_FORMAT = "dreamfusion-run/1"


# -- making one ---------------------------------------------------------------------------------------------------
def slugify(prompt: str, max_length: int = 60) -> str:
    """A folder-safe name: lowercase [a-z0-9-], runs of anything else become one '-', at most max_length chars."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    slug = slug[:max_length].rstrip("-")
    return slug or "untitled"


def _unwritable(output_dir: str, why: str) -> UserError:
    return UserError(f"cannot write to output_dir '{output_dir}' ({why}): "
                     f"pass a writable folder, e.g. output_dir=$HOME/dreamfusion-runs")


def check_output_dir(output_dir: str) -> None:
    """Fail fast, before a slow model load, when output_dir cannot hold a run folder; creates nothing.

    Looks at the nearest existing ancestor: it must be a folder we may write into. (make_run_dir
    still probes by writing: os.access says yes to root on a read-only mount.)
    """
    path = Path(output_dir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise _unwritable(output_dir, f"'{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _unwritable(output_dir, "Permission denied")


def make_run_dir(output_dir: str, slug: str) -> Path:
    """<output_dir>/<slug>-<YYYYmmdd-HHMMSS>[-k]/, created; a one-line UserError if it cannot be written."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(output_dir)
    try:
        base.mkdir(parents=True, exist_ok=True)
        for k in range(100):
            run_dir = base / (f"{slug}-{stamp}" + (f"-{k}" if k else ""))
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                continue
        else:  # never reuse an existing run folder
            raise FileExistsError(f"100 run folders named {slug}-{stamp}[-k] already exist")
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise _unwritable(output_dir, exc.strerror or str(exc)) from None
    return run_dir


def fresh_run_dir(path: str | Path) -> Path:
    """``path`` as an empty folder: created, or emptied when it is a run folder without a checkpoint."""
    path = Path(path)
    if path.is_dir() and any(path.iterdir()):
        if not (path / CONFIG).is_file() or (path / CHECKPOINT).is_file():
            raise UserError(f"run folder '{path}' is not empty: pass a new folder, or resume=... to continue a run")
        shutil.rmtree(path)  # a run that never checkpointed: nothing in it can be continued
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot make run folder '{path}' ({exc.strerror or exc}): pass a writable folder") from None
    return path


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a run's config.yaml (a folder made by dreamfusion)."""
    return (Path(path) / CONFIG).is_file()


# -- run.json ----------------------------------------------------------------------------------------------------
def now() -> str:
    """UTC time as run.json records it."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_run_json(run_dir: Path) -> dict:
    """A run folder's run.json as a dict; {} when it has none or it cannot be read."""
    try:
        value = json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _guidance_label(guidance) -> str:
    """run.json's "guidance": the rule on its model, as the report and the gallery show it (sds/prior,
    perp_neg/deepfloyd, clip: CLIP is the rule's own model)."""
    return "clip" if guidance.type == "clip" else f"{guidance.type}/{guidance.model_type}"


class RunRecord:
    """run.json of one run folder; ``update`` merges fields and rewrites the file atomically."""

    def __init__(self, run_dir: Path, cfg, config_name: str | None, overrides: list[str]):
        self.run_dir = Path(run_dir)
        previous = read_run_json(self.run_dir)  # a resumed run keeps its history of phases
        self.data = {"format": RUN_FORMAT, "status": "running", "prompt": cfg.prompt,
                     "negative_prompt": cfg.negative_prompt, "config": previous.get("config", config_name),
                     "overrides": previous.get("overrides", list(overrides)), "field": cfg.field.type,
                     "guidance": _guidance_label(cfg.guidance), "step": previous.get("step", 0), "steps": cfg.steps,
                     "device": cfg.device, "started": previous.get("started", now()), "finished": None,
                     "seconds": previous.get("seconds", {}), "artifacts": previous.get("artifacts", {}),
                     "metrics": previous.get("metrics", {}), "error": None}
        coarse = cfg.field.dmtet.convert_from if cfg.field.type == "dmtet" else None
        if coarse is not None:  # a refine run names the run it refines
            self.data["coarse_run"] = str(coarse)

    def forget_export(self) -> None:
        """Drop the seconds of an earlier export, before exporting again (its phases may have differed)."""
        self.data["seconds"] = {k: v for k, v in self.data["seconds"].items() if not k.startswith("export.")}

    def update(self, **fields: Any) -> None:
        for key in ("seconds", "artifacts", "metrics"):
            if key in fields:
                self.data[key] = {**self.data[key], **fields.pop(key)}
        self.data.update(fields)
        atomic_write_text(self.run_dir / RUN_JSON, json.dumps(self.data, indent=1, default=str) + "\n")

    def relative(self, paths: dict[str, Path]) -> dict[str, str]:
        return {k: str(Path(p).relative_to(self.run_dir)) if Path(p).is_relative_to(self.run_dir) else str(p)
                for k, p in paths.items()}


# -- metrics.jsonl and previews -------------------------------------------------------------------------------
def metrics_step(line: str | bytes) -> int:
    """The step of a metrics.jsonl row; -1 for a torn line (a kill in the middle of a write)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return -1


class MetricsLog:
    """metrics.jsonl opened for appending (a context manager): ``write(step, row)`` adds one flushed row with the
    seconds per step since the log was opened at step ``step0``; a write that fails is one line naming the file."""

    def __init__(self, run_dir: Path, step0: int):
        self.path, self.step0 = Path(run_dir) / METRICS, step0
        try:
            self.file = open(self.path, "a")
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self.t0 = time.perf_counter()

    def write(self, step: int, row: dict) -> None:
        elapsed = time.perf_counter() - self.t0
        try:
            self.file.write(json.dumps({"step": step, "loss": row["loss"],
                                        "sec_per_step": elapsed / (step - self.step0), **row}) + "\n")
            self.file.flush()
        except OSError as exc:  # a full disk: one line naming the file
            raise write_error(self.path, exc) from None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.file.close()
        except OSError:  # a full disk again: the error that stopped the loop is the one to report
            pass


def last_logged_step(run_dir: Path) -> int | None:
    """The step of the last row of a run's metrics.jsonl (read from its end), None before the first."""
    try:
        with open(Path(run_dir) / METRICS, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 4096))
            lines = fh.read().splitlines()
    except OSError:
        return None
    steps = (metrics_step(line) for line in reversed(lines))
    return next((step for step in steps if step >= 0), None)  # -1: a row being written


def trim_after(run_dir: Path, step: int) -> None:
    """Drop the metrics rows (and torn lines) and previews written after ``step`` (a kill between checkpoints),
    so a run resumed from its step-``step`` checkpoint writes each step once."""
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS
    if metrics.is_file():
        rows = [line for line in metrics.read_text().splitlines(keepends=True) if 0 <= metrics_step(line) <= step]
        atomic_write_text(metrics, "".join(rows))
    for preview in (run_dir / PREVIEWS).glob("step_*.png"):
        if int(preview.stem[len("step_"):]) > step:
            preview.unlink()


def write_preview(run_dir: Path, step: int, image) -> Path:
    """previews/step_NNNNNN.png from ``image`` [H, W, 3] in [0, 1] (an array, or a CPU tensor), written
    atomically."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.asarray(image) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return atomic_write(Path(run_dir) / PREVIEWS / f"step_{step:06d}.png", buffer.getvalue())


def write_error_log(run_dir: Path, exc: BaseException) -> str:
    """The traceback of ``exc`` into error.log; returns where it went, as a phrase for the one-line error."""
    log = Path(run_dir) / ERROR_LOG
    try:
        log.write_text("".join(traceback.format_exception(exc)))
        return f"the traceback is in {log}"
    except OSError as log_exc:
        return f"no {ERROR_LOG} ({log_exc.strerror or log_exc})"


LOCK = ".lock"  # hidden: the report's file list leaves it out


class RunFolderBusy(UserError):
    """Another process trains or exports the run folder."""


@contextmanager
def hold(run_dir: Path, what: str) -> Iterator[None]:
    """Hold ``run_dir`` for this process while it trains or exports it (``what``): a second process that would
    write the folder (resume, export) is refused in one line naming the folder and the holder. The hold is an
    advisory lock on ``.lock`` (flock), which the OS releases when its process ends, even by kill -9, so a killed
    run's folder is taken over by the next command. Without fcntl (Windows) nothing is held."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: nothing to hold
        yield
        return
    path = Path(run_dir) / LOCK
    try:
        handle = open(path, "a+")
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderBusy(f"run folder '{run_dir}' is in use by {holder}: wait until it ends (or stop it), "
                            f"then run this again") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} ({what}: {_command()})\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock; the file stays (removing it would race a waiting opener)


def _command() -> str:
    """This process's command line as a user typed it (``python -m dreamfusion ...`` for the CLI)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[0] = "python -m dreamfusion"
    return " ".join(argv)

