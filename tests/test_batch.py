"""`python -m dreamfusion batch` on Ray with the embedded prior: the prompts file, local Ray with two workers, a
two-node cluster on one machine, a failing prompt that fails alone, and a batch stopped mid-way then rerun.

Oracles: the prompts file parsed by hand; batch.json against each run folder's run.json; the worker pids and
Ray node ids that ran the prompts; files of finished runs byte-for-byte and mtime-unchanged by a rerun; every
step's metrics row written once in the resumed runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import import_oracle
from dreamfusion.batch import read_prompts, run_batch
from dreamfusion.batch.driver import import_ray
from dreamfusion.config import load_run_config
from dreamfusion.errors import UserError
from dreamfusion.runfolder import read_run_json

ROOT = Path(__file__).resolve().parent.parent
TINY = ["steps=6", "render.eval_grid=24", "render.width=16", "render.height=16", "render.n_samples=24", "guidance.prior.views=64",
        "guidance.prior.resolution=16", "checkpoint_every=3", "preview_every=3", "preview_resolution=32",
        "export.resolution=24", "export.texture=vertex", "export.video_frames=2", "export.video_resolution=16",
        "log_every=1"]



@pytest.fixture(scope="module")
def ray():
    return import_oracle("ray", 'pip install "dreamfusion[ray]" (.ci/run installs it)')


def _prompts(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "props.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prompts_file_comments_blank_lines_and_seeds(tmp_path):
    path = _prompts(tmp_path, "# props for level 3", "a red cube", "", "  a blue sphere seed=7  # the hero",
                    "an orange cone seed=-2", "a sign that says: seed=1 is fine seed=5")
    got = [(p.index, p.prompt, p.seed, p.line) for p in read_prompts(path)]
    assert got == [(0, "a red cube", None, 2), (1, "a blue sphere", 7, 4), (2, "an orange cone", -2, 5),
                   (3, "a sign that says: seed=1 is fine", 5, 6)]
    for text, needle in (("a cube seed=x\n", "props.txt:1: seed must be an integer"), ("# nothing\n\n", "no prompts"),
                         ("seed=3\n", "a seed without a prompt")):
        (tmp_path / "props.txt").write_text(text)
        with pytest.raises(UserError, match=needle):
            read_prompts(path)


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r'pip install "dreamfusion\[ray\]"') as info:
        import_ray()
    assert "\n" not in str(info.value)


def test_worker_turns_every_failure_into_its_line(monkeypatch, tmp_path):
    """In-process (no Ray): a MemoryError or a bug in one prompt is that prompt's status and one-line error."""
    from dreamfusion.batch import worker

    monkeypatch.setattr(worker.PromptWorker, "node", lambda self: "node-0")
    job = {"index": 4, "prompt": "a red cube", "seed": None, "run_dir": str(tmp_path / "r"), "resume": False,
           "config": "demo", "overrides": []}
    for exc, expected in ((MemoryError(), "out of memory: lower render sizes or run fewer prompts in parallel"),
                          (KeyError("boom"), "internal error: KeyError: 'boom'")):
        def fail(*args, exc=exc):
            raise exc
        monkeypatch.setattr(worker, "_run", fail)
        result = worker.PromptWorker().run(job)
        assert (result["index"], result["status"], result["node"]) == (4, "failed", "node-0")
        assert result["error"].startswith(expected) and "\n" not in result["error"]


class _Cards(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cards, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "card":
            self.cards.append(attrs["data-status"])
        if tag == "a":
            self.links.append(attrs["href"])


def test_local_ray_two_workers_and_a_prompt_that_fails_alone(ray, tmp_path, capsys):
    prompts = _prompts(tmp_path, "a red cube", "a purple teapot", "a blue sphere seed=3")
    batch_dir, batch = run_batch(prompts, "demo", [*TINY, f"output_dir={tmp_path / 'out'}"], max_parallel=2)
    rows = batch["runs"]
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    # each prompt's end is reported as it happens: the quick failure before the two runs that train
    ended = [line.split(" ", 2)[:2] for line in capsys.readouterr().err.splitlines()
             if line.startswith(("done: #", "failed: #"))]
    assert ended[0] == ["failed:", "#1"] and sorted(ended[1:]) == [["done:", "#0"], ["done:", "#2"]], ended
    assert rows[1]["run_dir"] is None and not (batch_dir / "runs" / "001-a-purple-teapot").exists()
    assert [r["step"] for r in rows] == [6, None, 6]  # the step each run reached (shown while they run)
    assert batch["counts"] == {"done": 2, "running": 0, "failed": 1, "interrupted": 0, "pending": 0}
    assert "teapot" in rows[1]["error"] and "\n" not in rows[1]["error"]  # the prior's vocabulary error, alone
    assert len({r["worker"] for r in rows}) == 2  # two actors shared the three prompts
    for row in (rows[0], rows[2]):
        record = read_run_json(batch_dir / row["run_dir"])
        assert record["status"] == "done" and row["iou"] == pytest.approx(record["metrics"]["iou"])
        assert record["prompt"] == row["prompt"]
    assert json.loads((batch_dir / "batch.json").read_text()) == batch
    assert load_run_config(batch_dir / rows[2]["run_dir"] / "config.yaml").seed == 3  # the line's own seed
    assert load_run_config(batch_dir / rows[0]["run_dir"] / "config.yaml").seed == 0  # the config's
    page = _Cards()
    page.feed((batch_dir / "index.html").read_text())
    assert page.cards == ["done", "failed", "done"]
    assert "runs/001-a-purple-teapot" not in (batch_dir / "index.html").read_text()  # no link to a missing folder
    reports = [link for link in page.links if link.endswith("report.html")]
    assert reports == [f"{rows[0]['run_dir']}/report.html", f"{rows[2]['run_dir']}/report.html"]
    assert all((batch_dir / link).is_file() for link in reports)


def test_a_rerun_keeps_the_entries_it_did_not_redo(tmp_path):
    """No Ray: every prompt is done, so the rerun redoes nothing and batch.json's entries (node, worker, seconds
    as the worker measured them) are kept byte for byte."""
    from dreamfusion.batch.driver import batch_folder

    prompts = _prompts(tmp_path, "a red cube", "a blue sphere seed=3")
    out = tmp_path / "out"
    batch_dir = batch_folder(prompts, str(out))
    rows = []
    for index, (prompt, seed) in enumerate((("a red cube", None), ("a blue sphere", 3))):
        rel = f"runs/{index:03d}-{prompt.replace(' ', '-')}"
        (batch_dir / rel).mkdir(parents=True)
        (batch_dir / rel / "run.json").write_text(json.dumps({"status": "done", "step": 6, "seconds": {"train": 9.5},
                                                              "metrics": {"iou": 0.9}}))
        rows.append({"index": index, "prompt": prompt, "seed": seed, "run_dir": rel, "status": "done",
                     "seconds": 54.82 + index, "iou": 0.9, "albedo_err": 0.05, "step": 6, "node": "node-a",
                     "worker": 4242 + index, "error": None})
    (batch_dir / "batch.json").write_text(json.dumps({"format": "dreamfusion-batch/1", "runs": rows}))
    _, batch = run_batch(prompts, "demo", [f"output_dir={out}"], progress=False)
    assert batch["runs"] == rows
    assert batch["counts"]["done"] == 2


def test_gallery_cards_of_failed_running_and_poor_runs(tmp_path):
    """A failed card says why it has no video and links nowhere when there is no run folder; seconds keep their
    tenths; a card has no empty line; a poor embedded-prior IoU (under POOR_IOU) is flagged."""
    from dreamfusion.batch.gallery import write_gallery
    from dreamfusion.report.reading import POOR_IOU

    (tmp_path / "runs" / "002-a-purple-torus").mkdir(parents=True)
    row = {"seed": None, "iou": None, "albedo_err": None, "node": None, "worker": None, "error": None, "step": None}
    runs = [dict(row, index=0, prompt="a purple teapot", run_dir=None, status="failed", seconds=0.13,
                 error="the embedded prior does not know 'a purple teapot'"),
            dict(row, index=1, prompt="a red cube", run_dir="runs/001-a-red-cube", status="running", step=120),
            dict(row, index=2, prompt="a purple torus", run_dir="runs/002-a-purple-torus", status="done",
                 seconds=108.4, iou=0.44, albedo_err=0.05),
            dict(row, index=3, prompt="a red sphere", run_dir="runs/003-a-red-sphere", status="done", seconds=71.0,
                 iou=POOR_IOU + 0.01)]
    page = write_gallery(tmp_path, {"prompts_file": "props.txt", "config": "demo", "updated": "now", "runs": runs,
                                    "counts": {"done": 2, "failed": 1, "running": 1}}).read_text()
    cards = page.split('<div class="card"')[1:]
    assert "no video yet" not in cards[0] and "no video: the run failed" in cards[0]
    assert "0.1 s" in cards[0] and "href" not in cards[0]
    assert "step 120" in cards[1]
    assert "IoU 0.440 (poor)" in cards[2] and "1 min 48 s" in cards[2]
    assert f"IoU {POOR_IOU + 0.01:.3f}" in cards[3] and "poor" not in cards[3]
    assert '<p class="meta"></p>' not in page


def test_two_node_cluster_runs_prompts_on_both_nodes(ray, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        prompts = _prompts(tmp_path, "a red cube", "a green cylinder")
        _, batch = run_batch(prompts, "demo", [*TINY, f"output_dir={tmp_path / 'out'}"], address=cluster.address,
                             progress=False)
        nodes = {n["NodeID"] for n in ray.nodes()} if ray.is_initialized() else None
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert [r["status"] for r in batch["runs"]] == ["done", "done"]
    assert len({r["node"] for r in batch["runs"]}) == 2, batch["runs"]  # one prompt per node
    assert nodes is None or {r["node"] for r in batch["runs"]} <= nodes


def _batch_cli(prompts: Path, out: Path, pause: str | None = None) -> subprocess.Popen:
    """The batch command; with ``pause`` (STEP:PROMPT) through tests/paused_run.py, whose Ray workers make that
    prompt's run wait at that step until the batch cancels it."""
    launcher = ["-m", "dreamfusion"] if pause is None else [str(ROOT / "tests" / "paused_run.py"), pause]
    args = [sys.executable, *launcher, "batch", str(prompts), "--config", "demo", "--max-parallel", "2",
            *TINY, "steps=30", "checkpoint_every=2", f"output_dir={out}"]
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_stopped_batch_resumes_without_redoing_anything(ray, tmp_path):
    """SIGTERM while one prompt is done and another is early in training with a checkpoint, then the same command
    again. The third prompt starts only when a worker is free (one of the first two done) and pauses after its
    step 4 (checkpointed) until the batch cancels it (tests/paused_run.py 4:a white cone); the test signals
    once it sees the pause, so the stop lands there however slow the machine is."""
    prompts = _prompts(tmp_path, "a red cube", "a blue sphere", "a white cone")
    out = tmp_path / "out"
    proc = _batch_cli(prompts, out, pause="4:a white cone")
    batch_json = out / "batch-props" / "batch.json"
    deadline = time.time() + 600
    while time.time() < deadline and not list((out / "batch-props").glob("runs/*/paused")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "run the same command again to continue" in err.strip().splitlines()[-1]
    data = json.loads(batch_json.read_text())
    stopped = {r["index"]: r["status"] for r in data["runs"]}
    assert "done" in stopped.values() and "interrupted" in stopped.values(), stopped
    batch_dir = out / "batch-props"
    finished = {r["index"]: (batch_dir / r["run_dir"]) for r in data["runs"] if r["status"] == "done"}
    before = {i: {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()} for i, d in finished.items()}
    interrupted = [batch_dir / r["run_dir"] for r in data["runs"] if r["status"] == "interrupted"]
    saved = {d: read_run_json(d)["step"] for d in interrupted}
    assert all(step > 0 for step in saved.values())  # they stopped with a checkpoint past step 0
    assert stopped[2] == "interrupted" and read_run_json(batch_dir / data["runs"][2]["run_dir"])["step"] == 4

    proc = _batch_cli(prompts, out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    data = json.loads(batch_json.read_text())
    assert [r["status"] for r in data["runs"]] == ["done"] * 3
    for i, files in before.items():  # finished runs were not touched
        assert {p: p.stat().st_mtime_ns for p in finished[i].rglob("*") if p.is_file()} == files
    for run_dir in interrupted:  # resumed, not restarted: every step's row once, the first run's rows kept
        rows = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert rows == list(range(1, 31)), rows
        assert read_run_json(run_dir)["status"] == "done"


def test_gallery_cards_show_their_pictures_at_the_size_they_were_rendered(tmp_path):
    """Issue 34: a card's orbit video is as wide as its panels (export.video_resolution each) and a running card's
    preview is its front view, a square of preview_resolution (the strip's first quarter), never stretched to the
    card: the sizes come from each run's config.yaml; a run without one lets the picture keep its own size."""
    import re

    from dreamfusion.batch.gallery import write_gallery

    row = {"seed": None, "iou": None, "albedo_err": None, "node": None, "worker": None, "error": None, "step": None,
           "seconds": None}
    sizes = {"runs/000-a-red-cube": "export:\n  video_resolution: 128\n  video_panels: [rgb, depth]\n",
             "runs/001-a-blue-sphere": "preview_resolution: 96\n", "runs/002-a-green-cone": None}
    for rel, config in sizes.items():
        (tmp_path / rel / "previews").mkdir(parents=True)
        (tmp_path / rel / "previews" / "step_000003.png").write_bytes(b"png")
        if config is not None:
            (tmp_path / rel / "config.yaml").write_text(config)
    for rel in ("runs/000-a-red-cube", "runs/002-a-green-cone"):
        (tmp_path / rel / "orbit.mp4").write_bytes(b"mp4")
    runs = [dict(row, index=i, prompt=rel.split("-", 1)[1], run_dir=rel, status="done" if i != 1 else "running")
            for i, rel in enumerate(sizes)]
    page = write_gallery(tmp_path, {"prompts_file": "p.txt", "config": "demo", "updated": "now", "runs": runs,
                                    "counts": {"done": 2, "running": 1}}).read_text()
    cards = page.split('<div class="card"')[1:]
    assert re.search(r'<video src="runs/000-a-red-cube/orbit.mp4" width="256" height="128"', cards[0])
    assert re.search(r'<img src="runs/001-a-blue-sphere/previews/step_000003.png" width="96" height="96" '
                     r'class="front"', cards[1])
    assert re.search(r'<video src="runs/002-a-green-cone/orbit.mp4" muted', cards[2])  # no config: its own size
    style = page.split("<style>")[1].split("</style>")[0]
    rules = " ".join(re.findall(r"\.media (?:video|img)[^{]*\{([^}]*)\}", style))
    assert "max-width:100%" in rules and "width:100%" not in rules.replace("max-width:100%", "")  # never stretched
