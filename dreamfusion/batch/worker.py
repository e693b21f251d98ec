"""A batch worker: a Ray actor that keeps the guidance model loaded and runs prompt after prompt on it."""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path

__all__ = ["PromptWorker"]


class PromptWorker:
    """Runs jobs (dicts from the batch driver) one at a time; decorated with ``ray.remote`` by the driver.

    The frozen model (Stable Diffusion, the prior's image set, CLIP) is loaded on the first job and kept while
    the next job's ``guidance_model_key`` is the same, so a worker pays the load once for a whole batch.
    """

    def __init__(self, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self._model_key, self._model = None, None

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, job: dict) -> dict:
        """Run (or resume) one prompt; never raises: a failure is the result's status and one-line error."""
        import ray

        t0 = time.perf_counter()
        result = {"index": job["index"], "node": self.node(), "host": socket.gethostname(), "pid": os.getpid()}
        try:
            cfg = self._config(job)
            result.update(_run(self, cfg, job, ray))
        except Exception as exc:  # noqa: BLE001 - a worker reports every failure instead of dying
            from ..errors import UserError

            status = getattr(exc, "batch_status", "failed")
            if isinstance(exc, UserError):
                message = str(exc)
            elif isinstance(exc, MemoryError):
                message = "out of memory: lower render sizes or run fewer prompts in parallel (--max-parallel)"
            else:
                last = traceback.extract_tb(exc.__traceback__)[-1]
                message = f"internal error: {type(exc).__name__}: {exc} ({Path(last.filename).name}:{last.lineno})"
            result.update(status=status, error=message.splitlines()[0] if message else type(exc).__name__)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        return result

    def _config(self, job: dict):
        from ..config import load_config
        from ..run import resume_config

        if job["resume"]:
            return resume_config(job["run_dir"], _resume_overrides(job))
        return load_config(job["config"], [*job["overrides"], f"prompt={job['prompt']}", *_seed(job)])

    def model_for(self, cfg):
        from ..guidance import guidance_model_key, load_guidance_model
        from ..run import resolve_device

        key = guidance_model_key(cfg)
        if key != self._model_key:
            self._model_key, self._model = None, None  # free the old one first
            self._model = load_guidance_model(cfg, resolve_device(cfg.device))
            self._model_key = key
        return self._model


def _run(worker: PromptWorker, cfg, job: dict, ray) -> dict:
    from ..errors import UserError
    from ..run import resume, run
    from ..train.trainer import Interrupted

    options = dict(config_name=job["config"], guidance_model=worker.model_for(cfg), quiet=True,
                   should_stop=ray.get_runtime_context().is_canceled)
    try:
        if job["resume"]:  # the same path as python -m dreamfusion resume=RUN_DIR
            result = resume(job["run_dir"], _resume_overrides(job), **options)
        else:
            result = run(cfg, overrides=job["overrides"], run_dir=job["run_dir"], **options)
    except Interrupted as exc:
        exc.batch_status = "interrupted"
        raise
    except UserError:
        raise
    metrics = result.metrics
    return {"status": result.status, "error": None, "iou": metrics.get("iou"), "albedo_err": metrics.get("albedo_err")}


def _seed(job: dict) -> list[str]:
    return [] if job["seed"] is None else [f"seed={job['seed']}"]


def _resume_overrides(job: dict) -> list[str]:
    """The batch's overrides (and the prompt's seed) on top of a run folder's own config.yaml."""
    return [*job["overrides"], *_seed(job)]
