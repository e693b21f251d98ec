"""The run API: one function runs a config end to end, one loads a finished run back.

    result = run(load_config("demo", ["prompt=a red cube"]))     # -> RunResult(run_dir, status, seconds, ...)
    loaded = load_run(result.run_dir)                              # -> LoadedRun(cfg, field, background, step)

Every run folder holds ``run.json``, rewritten atomically as the run moves on: status (running / done / failed
/ interrupted), prompt, config name, artifact paths (relative to the folder), seconds per phase, final metrics
and the one-line error of a failed run. The CLI, ``eval``, ``view``, ``report`` and ``batch`` use these.
Any exception in training or export marks the run failed: its one line goes to run.json and the CLI, its
traceback to ``error.log`` in the run folder, and the artifacts written until then stay listed. The folder's
layout, run.json and the files it holds are runfolder.py's.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import torch

from .artifacts import PhaseTimer, export_run, mesh_scores
from .checkpoint import load_checkpoint
from .config import Config, load_run_config, resolve_config_path, to_yaml
from .errors import CheckpointError, ConfigError, UserError
from .extensions import prepare_kernels
from .io import atomic_write_text
from .runfolder import (CHECKPOINT, CONFIG, REPORT, RunRecord, check_output_dir, fresh_run_dir, is_run_folder,
                        hold, make_run_dir, now, read_run_json, slugify, write_error_log)

__all__ = ["run", "resume", "resume_config", "refine", "refine_config", "export", "load_run", "resolve_device",
           "RunResult", "LoadedRun"]


def resolve_device(name: str = "auto") -> torch.device:
    """auto -> cuda when visible, else cpu; cuda without a device is a one-line UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is visible: use device=cpu or device=auto")
    return torch.device(name)


@dataclass
class RunResult:
    run_dir: Path
    status: str
    seconds: dict[str, float] = dc_field(default_factory=dict)
    metrics: dict[str, float] = dc_field(default_factory=dict)
    artifacts: dict[str, Path] = dc_field(default_factory=dict)


@dataclass
class LoadedRun:
    cfg: Config
    field: Any
    background: Any
    step: int
    run_dir: Path
    device: torch.device


def run(cfg: Config, *, config_name: str | None = None, overrides: list[str] | tuple = (),
        guidance_model: Any = None, run_dir: str | Path | None = None, quiet: bool = False,
        should_stop=None, on_step=None) -> RunResult:
    """Optimize ``cfg.prompt`` (or continue ``cfg.resume``), export every artifact, and return the result.

    ``guidance_model`` is a loaded ``guidance.load_guidance_model(cfg, device)`` to reuse (batch workers).
    ``run_dir`` names the run folder instead of ``<output_dir>/<slug>-<time>``: missing, empty, or a run folder
    that never reached its first checkpoint (it is started afresh). ``should_stop()`` is asked after every step;
    True interrupts the run as Ctrl-C does (a batch being stopped); ``on_step(step, run_dir)`` is called before it,
    after the step's row, preview and checkpoint are written.
    Errors a user can fix are one-line UserErrors; a run folder that already exists records them in run.json
    (status failed, or interrupted for Ctrl-C / SIGTERM, whose checkpoint is saved) before they propagate.
    """
    from .guidance import build_guidance
    from .train.trainer import Trainer

    if not cfg.prompt.strip():
        raise UserError('prompt is empty: pass prompt="a red cube" (or any text)')
    if cfg.refine is not None:  # a chained refine config must exist before the coarse run spends its time
        try:
            resolve_config_path(cfg.refine)
        except ConfigError as exc:
            raise ConfigError(f"refine={cfg.refine}: {exc}") from None
    device = resolve_device(cfg.device)
    timer = PhaseTimer(quiet=quiet)
    resuming = cfg.resume is not None
    converts = cfg.field.type == "dmtet" and cfg.field.dmtet.convert_from is not None  # a refine run
    with contextlib.ExitStack() as held:  # the run folder, held from the moment it is known (runfolder.hold)
        if resuming:
            run_dir = Path(cfg.resume)
            state = load_checkpoint(run_dir, map_location=device)  # a missing or corrupt one fails before the model
            held.enter_context(hold(run_dir, "training"))  # a second process on the folder is refused here
        else:
            check_output_dir(cfg.output_dir)  # likewise for an output_dir that cannot hold the run folder
        with timer.phase("load_guidance"):
            guidance = build_guidance(cfg, device, guidance_model)  # fails (model not found) before anything is written
        cfg, _ = prepare_kernels(cfg, device, timer)  # nerfacc / gsplat CUDA builds announced here, not mid-training
        if not resuming:
            slug = slugify(cfg.prompt) + ("-refine" if converts else "")
            run_dir = make_run_dir(cfg.output_dir, slug) if run_dir is None else fresh_run_dir(run_dir)
            held.enter_context(hold(run_dir, "training"))
        trainer = Trainer(cfg, run_dir, device, guidance)  # with the guidance's trainable state in the optimizer
        if resuming:
            trainer.resume(state)
        atomic_write_text(run_dir / CONFIG, to_yaml(replace(cfg, resume=None)))  # the run's settings, not how it began
        record = RunRecord(run_dir, cfg, config_name, list(overrides))
        record.update(status="running", seconds=timer.seconds)
        if not quiet:
            print(f"run folder: {run_dir}", file=sys.stderr)
        with _recorded(record, timer, quiet, lambda: trainer.step):
            if converts and not resuming:
                _start_from_coarse(trainer.field, cfg, device, timer)
            with timer.phase("train"):
                row = trainer.fit(progress=not quiet, should_stop=should_stop, on_step=on_step)
            record.update(step=trainer.step, seconds=timer.seconds,
                          artifacts=record.relative({"checkpoint": run_dir / CHECKPOINT}))
            record.forget_export()
            written, errors = export_run(trainer.field, cfg, run_dir, device, timer,
                                         video_view=trainer.renderer.cached_eval_view())
            record.update(artifacts=record.relative(written), seconds=timer.seconds)
            for path in ([] if quiet else written.values()):
                print(f"wrote {path}", file=sys.stderr)
            if errors:
                raise UserError("; ".join(errors) + f" (the checkpoint in {run_dir} is intact: retry with "
                                f"python -m dreamfusion export {run_dir} key=value)")
            logged = {k: float(v) for k, v in row.items() if isinstance(v, (int, float))}  # the last step's terms
            record.update(metrics={**logged, **mesh_scores(cfg, written)})
        record.update(status="done", finished=now())
        _report(record, timer, quiet)
    if cfg.refine is not None:  # coarse then fine in one command: the refine run's result is the run's
        return refine(run_dir, cfg.refine, quiet=quiet, should_stop=should_stop, on_step=on_step)
    return _result(record)


@contextlib.contextmanager
def _recorded(record: RunRecord, timer: PhaseTimer, quiet: bool, step):
    """How training and export ended, in run.json and the report: interrupted (Ctrl-C / SIGTERM, its checkpoint
    saved), failed with a one-line UserError (out of memory becomes one), or failed by a bug (its traceback in
    error.log); the exception then propagates naming the run folder. ``step()``: the step reached."""
    from .train.trainer import Interrupted

    try:
        yield
    except Interrupted as exc:
        record.update(status="interrupted", step=step(), seconds=timer.seconds, error=str(exc), finished=now())
        _report(record, timer, quiet)
        exc.run_dir = record.run_dir
        raise
    except (UserError, MemoryError, torch.cuda.OutOfMemoryError) as exc:
        if not isinstance(exc, UserError):
            exc = UserError(f"out of memory at step {step()} ({type(exc).__name__}): lower render.width / "
                            f"height, render.n_samples or camera.batch_size")
        record.update(status="failed", step=step(), seconds=timer.seconds, error=str(exc), finished=now())
        _report(record, timer, quiet)
        exc.run_dir = record.run_dir
        raise exc from None
    except Exception as exc:  # a bug, not the user's: one line and the run folder; the traceback in error.log
        raise _failed(record, timer, exc, quiet, step=step()) from None


def resume_config(run_dir: str | Path, overrides: list[str] | tuple = ()) -> Config:
    """The config that continues ``run_dir``: its config.yaml with ``overrides`` on top (e.g. ``steps=2000``) and
    ``resume`` set to the folder."""
    if not is_run_folder(run_dir):
        raise UserError(f"cannot resume: '{run_dir}' has no {CONFIG}; pass a run folder made by dreamfusion")
    return replace(load_run_config(Path(run_dir) / CONFIG, list(overrides)), resume=str(run_dir))


def resume(run_dir: str | Path, overrides: list[str] | tuple = (), **options) -> RunResult:
    """Continue a run folder from its last checkpoint up to ``steps`` (``python -m dreamfusion resume=RUN_DIR``,
    and a batch's rerun): :func:`run` of :func:`resume_config`; ``options`` are run's."""
    return run(resume_config(run_dir, overrides), overrides=overrides, **options)


def _start_from_coarse(field, cfg: Config, device: torch.device, timer: PhaseTimer) -> None:
    """The refine stage's step 0: ``field`` (DMTet) takes the surface the coarse run's export extracts (its own
    export.threshold / auto_optical_depth) and a texture fitted to its albedo (refine/convert.py)."""
    from .artifacts import surface_optical_depth
    from .refine import convert_into
    from .renderer.views import rgb_view

    coarse = load_run(cfg.field.dmtet.convert_from, device)
    e, d = coarse.cfg.export, cfg.field.dmtet
    fitted = f" (fitted onto its export in {d.surface_fit_steps} steps)" if d.surface_fit_steps else ""
    texture = f"a texture fitted in {d.texture_fit_steps} steps"
    with timer.phase("convert", f"the coarse run's surface{fitted} and {texture}"):
        convert_into(field, rgb_view(coarse.field), threshold=e.threshold,
                     auto_optical_depth=surface_optical_depth(coarse.field, e.auto_optical_depth),
                     texture_steps=d.texture_fit_steps, fit_steps=d.surface_fit_steps,
                     export_resolution=e.resolution, min_component_ratio=e.min_component_ratio,
                     generator=torch.Generator().manual_seed(cfg.seed))


def default_refine_config(coarse: Config) -> str:
    """The refine config that follows a coarse run: DreamGaussian's texture stage after Gaussians
    (gaussian-refine; demo-gaussian-refine under the embedded prior), else demo-refine under the prior,
    prolificdreamer-refine after VSD, magic3d-refine otherwise."""
    prior = coarse.guidance.model_kind == "prior"
    if coarse.field.type == "gaussian":
        return "demo-gaussian-refine" if prior else "gaussian-refine"
    if prior:
        return "demo-refine"
    return "prolificdreamer-refine" if coarse.guidance.type == "vsd" else "magic3d-refine"


def refine_config(run_dir: str | Path, name: str | None = None, overrides: list[str] | tuple = ()) -> tuple[Config, str]:
    """(config, its name) of the refine stage of ``run_dir``: the run's config.yaml, the refine config ``name``
    over it (default_refine_config when None), ``overrides`` on top, and field.dmtet.convert_from = the run."""
    run_dir = Path(run_dir)
    if not is_run_folder(run_dir):
        raise UserError(f"cannot refine '{run_dir}': it has no {CONFIG}; pass a run folder made by python -m dreamfusion")
    if not (run_dir / CHECKPOINT).is_file():
        raise UserError(f"cannot refine '{run_dir}': it has no {CHECKPOINT} yet; resume it "
                        f"(python -m dreamfusion resume={run_dir}) until its first checkpoint")
    name = name or default_refine_config(load_run_config(run_dir / CONFIG))
    cfg = load_run_config(run_dir / CONFIG, [*overrides, f"field.dmtet.convert_from={run_dir}"], config=name)
    return replace(cfg, refine=None), name  # the coarse run's chained refine is this one


def refine(run_dir: str | Path, name: str | None = None, overrides: list[str] | tuple = (), **options) -> RunResult:
    """The refine stage of a finished run (``python -m dreamfusion refine RUN_DIR``): a new run folder under the
    run's output_dir whose field starts as the run's surface and texture; :func:`run` of :func:`refine_config`."""
    cfg, name = refine_config(run_dir, name, overrides)
    return run(cfg, config_name=name, overrides=list(overrides), **options)


def _failed(record: RunRecord, timer: PhaseTimer, exc: Exception, quiet: bool, **fields) -> UserError:
    """Record an unexpected exception (status failed, its one line, the artifacts it left) and write its
    traceback to the run folder's error.log; returns the one-line UserError for the CLI to print."""
    lines = (str(exc).strip() or "no message").splitlines()
    line = f"{type(exc).__name__}: {lines[0]}"
    where = write_error_log(record.run_dir, exc)
    written = dict(getattr(exc, "written", {}))
    if (record.run_dir / CHECKPOINT).is_file():
        written["checkpoint"] = record.run_dir / CHECKPOINT
    record.update(status="failed", seconds=timer.seconds, error=line, finished=now(),
                  artifacts=record.relative(written), **fields)
    try:
        _report(record, timer, quiet)
    except Exception as report_exc:  # the failure's record matters more than its report
        print(f"warning: no report.html ({type(report_exc).__name__}: {report_exc})", file=sys.stderr)
    error = UserError(f"{line} ({where}; please report it)")
    error.run_dir = record.run_dir
    return error


def _report(record: RunRecord, timer: PhaseTimer, quiet: bool) -> None:
    """report.html beside run.json; a report that cannot be written is a warning, never a lost run."""
    from .report import write_report

    try:
        with timer.phase("report", REPORT):
            path = write_report(record.run_dir)
    except UserError as exc:
        print(f"warning: no report.html ({exc})", file=sys.stderr)
        return
    record.update(seconds=timer.seconds, artifacts=record.relative({"report": path}))
    if not quiet:
        print(f"wrote {path}", file=sys.stderr)


def _result(record: RunRecord) -> RunResult:
    d = record.data
    return RunResult(record.run_dir, d["status"], dict(d["seconds"]), dict(d["metrics"]),
                     {k: record.run_dir / v for k, v in d["artifacts"].items()})


def load_run(run_dir: str | Path, device: str | torch.device | None = None,
             overrides: list[str] | None = None) -> LoadedRun:
    """A run folder's config and its last checkpoint's field and background (no guidance, no optimizer state),
    on ``device`` (the run's own device setting when None)."""
    from .train.trainer import build_scene, load_scene

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder '{run_dir}' does not exist: pass a folder made by python -m dreamfusion")
    if not is_run_folder(run_dir):
        raise UserError(f"'{run_dir}' is not a run folder (no {CONFIG}): pass a folder made by python -m dreamfusion")
    cfg = load_run_config(run_dir / CONFIG, overrides)
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    field, background = build_scene(cfg, device)
    step = load_scene(load_checkpoint(run_dir, map_location=device), cfg, field, background)
    return LoadedRun(cfg, field, background, step, run_dir, device)


def export(run_dir: str | Path, overrides: list[str] | None = None, quiet: bool = False) -> RunResult:
    """Mesh + video again from a run's checkpoint (``python -m dreamfusion export``), with export.* overrides."""
    loaded = load_run(run_dir, overrides=overrides)
    with hold(loaded.run_dir, "exporting"):  # not while another process trains or exports the folder
        return _export_loaded(loaded, quiet)


def _export_loaded(loaded: LoadedRun, quiet: bool) -> RunResult:
    cfg, run_dir = loaded.cfg, loaded.run_dir
    record = RunRecord(run_dir, cfg, None, [])
    record.data["status"] = read_run_json(run_dir).get("status", "done")
    record.forget_export()
    timer = PhaseTimer(quiet=quiet)
    cfg, _ = prepare_kernels(cfg, loaded.device, timer)
    if hasattr(loaded.field, "rasterizer"):  # built before: follow a fall-back to the PyTorch twin
        loaded.field.rasterizer = cfg.field.gaussian.rasterizer
    try:
        written, errors = export_run(loaded.field, cfg, run_dir, loaded.device, timer)
    except UserError:
        raise
    except Exception as exc:
        raise _failed(record, timer, exc, quiet) from None
    record.update(artifacts=record.relative(written), seconds=timer.seconds)
    if errors:
        raise UserError("; ".join(errors) + f" (the checkpoint in {run_dir} is intact: retry with "
                        f"python -m dreamfusion export {run_dir} key=value)")
    scores = mesh_scores(cfg, written)
    if scores:
        record.update(metrics=scores)
    _report(record, timer, quiet)
    return _result(record)
