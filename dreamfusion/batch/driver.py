"""The batch driver: plan which prompts still need work, hand them to Ray actors, record and show progress.

    <output_dir>/batch-<prompts-file-stem>/
        batch.json      each prompt: status, run folder (null when none was made), step while it runs, seconds,
                        node, IoU / colour under the prior, error line
        index.html      the gallery: every run's orbit video or preview, prompt, status, link to its report
        runs/<index>-<slug>/   one ordinary run folder per prompt

Running the same command again skips prompts whose run is done (their batch.json entries are kept as they were)
and resumes the others from their checkpoints.
Scheduling is Ray's: the driver keeps one job in flight per actor and waits with ``ray.wait``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..config import load_config
from ..errors import UserError
from ..io import atomic_write_text
from ..runfolder import CHECKPOINT, last_logged_step, read_run_json, slugify
from .gallery import write_gallery
from .prompts import read_prompts

__all__ = ["run_batch", "plan", "batch_folder", "BatchInterrupted", "BATCH_FORMAT"]

BATCH_FORMAT = "dreamfusion-batch/1"
_STOP_GRACE_S = 120.0  # after Ctrl-C: how long running prompts get to save their checkpoints


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError('batch runs on Ray, which is not installed: pip install "dreamfusion[ray]"') from None
    return ray


def plan(prompts_file: Path, batch_dir: Path) -> list[dict]:
    """One entry per prompt line, with the state its run folder is in: done (skipped), resume, or new."""
    entries = []
    for line in read_prompts(prompts_file):
        run_dir = batch_dir / "runs" / f"{line.index:03d}-{slugify(line.prompt, 48)}"
        record = read_run_json(run_dir)
        if record.get("status") == "done":
            state = "done"
        elif (run_dir / CHECKPOINT).is_file():
            state = "resume"
        else:
            state = "new"
        entries.append({"index": line.index, "prompt": line.prompt, "seed": line.seed, "line": line.line,
                        "run_dir": str(run_dir), "state": state, "record": record})
    return entries


def _previous_rows(batch_dir: Path) -> dict[tuple[int, str, str], dict]:
    """The entries of an earlier batch.json by (index, prompt, run folder); {} when there is none."""
    try:
        rows = json.loads((batch_dir / "batch.json").read_text()).get("runs", [])
    except (OSError, ValueError, AttributeError):
        return {}
    return {(r.get("index"), r.get("prompt"), r.get("run_dir")): r for r in rows if isinstance(r, dict)}


class _Batch:
    """batch.json and index.html, rewritten (atomically) whenever a prompt changes state."""

    def __init__(self, batch_dir: Path, prompts_file: Path, config: str | None, overrides: list[str], entries,
                 steps: int):
        self.dir, self.prompts_file, self.config, self.overrides = batch_dir, prompts_file, config, overrides
        self.steps = steps  # of every run
        self.dirty, self.written = False, 0.0  # a running prompt's step not in batch.json yet; time of the last write
        self.rows = []
        previous = _previous_rows(batch_dir)
        for e in entries:
            record = e["record"]
            metrics = record.get("metrics", {})
            rel = str(Path(e["run_dir"]).relative_to(batch_dir))
            kept = previous.get((e["index"], e["prompt"], rel))
            if e["state"] == "done" and kept is not None and kept.get("status") == "done":
                self.rows.append(kept)  # not redone: its entry (seconds, node, worker) stays as it was written
                continue
            self.rows.append({"index": e["index"], "prompt": e["prompt"], "seed": e["seed"],
                              "run_dir": rel,
                              "status": "done" if e["state"] == "done" else "pending",
                              "seconds": round(sum(record.get("seconds", {}).values()), 2) if record else None,
                              "iou": metrics.get("iou"), "albedo_err": metrics.get("albedo_err"),
                              "step": record.get("step"), "node": None, "worker": None, "error": None})

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("done", "running", "failed", "interrupted", "pending")}
        for row in self.rows:
            out[row["status"]] += 1
        return out

    def set(self, index: int, **fields) -> None:
        self.rows[index].update(fields)
        rel = self.rows[index]["run_dir"]
        if fields.get("status") == "failed" and rel is not None and not (self.dir / rel).is_dir():
            self.rows[index]["run_dir"] = None  # it failed before its run folder was made
        self.write()

    def write(self) -> None:
        self.dirty, self.written = False, time.time()
        data = {"format": BATCH_FORMAT, "prompts_file": str(self.prompts_file), "config": self.config,
                "overrides": self.overrides, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "counts": self.counts(),
                "runs": self.rows}
        atomic_write_text(self.dir / "batch.json", json.dumps(data, indent=1) + "\n")
        write_gallery(self.dir, data)


def _init_ray(ray, address: str | None, num_cpus: int | None):
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=num_cpus, object_store_memory=200 * 2 ** 20)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"cannot start or join {where} ({str(exc).splitlines()[0][:160]}): check --address "
                        f"(auto, or HOST:PORT of a running 'ray start --head')") from None


def batch_folder(prompts_file: str | Path, output_dir: str) -> Path:
    return Path(output_dir) / f"batch-{slugify(Path(prompts_file).stem, 48)}"


def run_batch(prompts_file: str | Path, config: str | None = None, overrides: list[str] | None = None,
              address: str | None = None, max_parallel: int | None = None, cpus_per_worker: int = 1,
              progress: bool = True) -> tuple[Path, dict]:
    """Run every prompt of ``prompts_file`` (see prompts.py) with ``config`` + ``overrides`` on Ray actors;
    returns the batch folder and the final batch.json contents."""
    overrides = list(overrides or [])
    if any(o.startswith("prompt=") for o in overrides):
        raise UserError("prompt= does not apply to a batch: the prompts come from the file, one a line")
    prompts_file = Path(prompts_file)
    base = load_config(config, [*overrides, "prompt=x"])  # a bad key or value fails before Ray starts
    if base.resume is not None:
        raise UserError("resume= does not apply to a batch: run the same batch command again to resume it")
    batch_dir = batch_folder(prompts_file, base.output_dir)
    entries = plan(prompts_file, batch_dir)
    batch_dir.mkdir(parents=True, exist_ok=True)
    batch = _Batch(batch_dir, prompts_file, config, overrides, entries, base.steps)
    batch.write()
    todo = [dict(e, config=config, overrides=overrides, resume=e["state"] == "resume") for e in entries
            if e["state"] != "done"]
    if not todo:
        print(f"batch: all {len(entries)} prompts are done ({batch_dir})", file=sys.stderr)
        return batch_dir, json.loads((batch_dir / "batch.json").read_text())
    ray = import_ray()
    _init_ray(ray, address, max_parallel * cpus_per_worker if max_parallel and not address else None)
    try:
        _dispatch(ray, batch, todo, base.device, max_parallel, cpus_per_worker, progress)
    finally:
        ray.shutdown()
    return batch_dir, json.loads((batch_dir / "batch.json").read_text())


def _workers(ray, device: str, max_parallel: int | None, cpus_per_worker: int, jobs: int):
    from .worker import PromptWorker

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if device == "cuda" and gpus == 0:
        raise UserError("device=cuda but the Ray cluster has no GPU: use device=cpu or device=auto")
    fit = gpus if use_gpu else int(resources.get("CPU", 1)) // cpus_per_worker
    count = max(1, min(max_parallel or fit, fit if fit > 0 else 1, jobs))
    actor = ray.remote(num_cpus=0 if use_gpu else cpus_per_worker, num_gpus=1 if use_gpu else 0)(PromptWorker)
    return [actor.remote(None if use_gpu else cpus_per_worker) for _ in range(count)]


def _dispatch(ray, batch: _Batch, todo: list[dict], device: str, max_parallel, cpus_per_worker, progress) -> None:
    workers = _workers(ray, device, max_parallel, cpus_per_worker, len(todo))
    idle, queue, running = list(workers), list(todo), {}
    stopping = {"now": False}
    previous = {s: signal.signal(s, lambda *_: stopping.update(now=True)) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=len(batch.rows), initial=batch.counts()["done"], desc="batch", file=sys.stderr,
               dynamic_ncols=True, disable=not progress)
    try:
        while queue or running:
            while idle and queue and not stopping["now"]:
                job, worker = queue.pop(0), idle.pop()
                running[worker.run.remote(job)] = (worker, job)
                batch.set(job["index"], status="running")
            if stopping["now"] and not stopping.get("sent"):
                stopping["sent"] = time.time()
                queue.clear()
                for ref in running:
                    ray.cancel(ref)  # each run stops after its current step and saves its checkpoint
            if not running:
                break
            _show_steps(batch, running.values(), bar)
            timeout = 1.0 if not stopping.get("sent") else max(0.0, _STOP_GRACE_S - (time.time() - stopping["sent"]))
            ready, _ = ray.wait(list(running), num_returns=1, timeout=timeout)
            if stopping.get("sent") and not ready and time.time() - stopping["sent"] >= _STOP_GRACE_S:
                for worker, job in running.values():
                    ray.kill(worker)  # the run resumes from its last periodic checkpoint next time
                    batch.set(job["index"], status="interrupted", error="stopped before it could save")
                running.clear()
                break
            for ref in ready:
                worker, job = running.pop(ref)
                result = _result(ray, ref, job)
                batch.set(job["index"], worker=result.get("pid"), step=read_run_json(Path(job["run_dir"])).get("step"),
                          **{k: result.get(k) for k in ("status", "seconds", "iou", "albedo_err", "node", "error")})
                if progress:  # each prompt's end as it happens, above the bar
                    bar.write(_ended(batch.rows[job["index"]]), file=sys.stderr)
                if result.get("worker_died"):
                    worker = _workers(ray, device, 1, cpus_per_worker, 1)[0]  # replace the dead actor
                idle.append(worker)
                bar.update(result["status"] in ("done", "failed"))
    finally:
        bar.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopping["now"]:
        c = batch.counts()
        raise BatchInterrupted(f"batch stopped: {c['done']} done, {c['interrupted']} interrupted with their "
                               f"checkpoints, {c['pending']} not started; run the same command again to continue")


def _show_steps(batch: _Batch, running, bar) -> None:
    """The running prompts' steps: in batch.json (and the gallery) and after the progress bar."""
    shown = []
    for _, job in running:
        row = batch.rows[job["index"]]
        step = last_logged_step(Path(job["run_dir"]))
        if step is not None and step != row.get("step"):
            row["step"] = step
            batch.dirty = True
        shown.append(f"#{job['index']} step {row.get('step') or 0}/{batch.steps}")
    if batch.dirty and time.time() - batch.written >= 2.0:  # at most every 2 s
        batch.write()
    c = batch.counts()
    bar.set_postfix_str(f"{c['done']} done, {c['failed']} failed; running " + ", ".join(shown))


def _ended(row: dict) -> str:
    """One line for a prompt that ended: status, prompt, seconds, and the error of a failed one."""
    seconds = f" in {row['seconds']:.1f} s" if row.get("seconds") is not None else ""
    error = f": {row['error']}" if row.get("error") else ""
    return f"{row['status']}: #{row['index']} {row['prompt']}{seconds}{error}"


class BatchInterrupted(UserError):
    """Ctrl-C or SIGTERM during a batch; the running prompts saved their checkpoints."""


def _result(ray, ref, job: dict) -> dict:
    """The worker's result dict; a cancelled task's state from its run.json; a dead worker is a failure."""
    from ray.exceptions import RayActorError, TaskCancelledError, WorkerCrashedError

    try:
        return ray.get(ref)
    except TaskCancelledError:
        record = read_run_json(Path(job["run_dir"]))
        return {"status": record.get("status", "interrupted"), "error": record.get("error"), "seconds": None}
    except (RayActorError, WorkerCrashedError) as exc:
        return {"status": "failed", "worker_died": True, "seconds": None,
                "error": f"the worker died ({type(exc).__name__}; out of memory?): lower render sizes or "
                         f"--max-parallel, then run the batch again"}
