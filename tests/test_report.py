"""report.html: the pure parts against closed forms, then the page itself in headless Chromium (software
WebGL) from file:// with the network off, driven over the DevTools protocol. Each browser test saves a
screenshot to tmp_path and checks it: the 3D view shows the red cube written to the run folder, the video
loads with the duration it was written with, nothing is fetched and the console has no errors.
CI needs `apt-get install -y chromium` and the `websockets` package (in the dev extra); with
DREAMFUSION_REQUIRE_ORACLES=1 their absence fails these tests instead of skipping them."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shlex
import shutil
import subprocess
import time

import numpy as np
import pytest

from conftest import import_oracle, require_oracle

from dreamfusion.config import load_config, to_yaml
from dreamfusion.errors import UserError
from dreamfusion.report import rebuild_report, write_report
from dreamfusion.report.plot import BOTTOM, LEFT, RIGHT, SMOOTHING, TOP, ema, line_plot, nice_ticks
from dreamfusion.report.reading import MISSING, config_diff, format_size, read_run, series

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
RED = np.array([220, 20, 20], np.uint8)  # the cube's vertex colour
FRAMES, FPS = 24, 12  # the orbit video: 2.0 s
BACKGROUND = (233, 236, 239)  # model-viewer's background in report.css (#e9ecef)


# ---- the pure parts ---------------------------------------------------------------------------------------

def _points(svg: str) -> list[np.ndarray]:
    return [np.array([[float(v) for v in p.split(",")] for p in seg.split()])
            for seg in re.findall(r'<polyline class="line" points="([^"]*)"', svg)]


def test_plot_points_follow_the_closed_form():
    w, h = 400, 200
    xs, ys = [0, 10, 20, 30, 40], [1.0, 3.0, float("nan"), 2.0, 5.0]
    segments = _points(line_plot(xs, ys, "loss", width=w, height=h, log_y=False))
    # x in [0, 40] -> [LEFT, w - RIGHT]; y in [1, 5] -> [h - BOTTOM, TOP]; the NaN splits the line in two
    px = lambda x: LEFT + x / 40 * (w - LEFT - RIGHT)  # noqa: E731
    py = lambda y: (h - BOTTOM) - (y - 1) / 4 * (h - BOTTOM - TOP)  # noqa: E731
    expected = [np.array([[px(0), py(1)], [px(10), py(3)]]), np.array([[px(30), py(2)], [px(40), py(5)]])]
    assert len(segments) == 2
    for got, want in zip(segments, expected):
        np.testing.assert_allclose(got, want, atol=0.006)
    # a log axis: 1, 10, 100, 1000 are evenly spaced from bottom to top
    (log,) = _points(line_plot([0, 1, 2, 3], [1.0, 10.0, 100.0, 1000.0], "loss", width=w, height=h))
    np.testing.assert_allclose(log[:, 1], np.linspace(h - BOTTOM, TOP, 4), atol=0.006)
    assert "(log scale)" in line_plot([0, 1], [1.0, 100.0], "loss")
    assert "(log scale)" not in line_plot([0, 1], [1.0, 99.0], "t")


def test_smoothed_curve_is_the_debiased_ema_over_the_raw_line():
    ys = [5.0, 1.0, 4.0, 2.0, 8.0, 3.0]
    w = SMOOTHING
    # closed form: the n-th point is the mean of the first n values weighted w^age
    want = [np.average(ys[:n], weights=w ** np.arange(n - 1, -1, -1)) for n in range(1, len(ys) + 1)]
    np.testing.assert_allclose(ema(ys), want, rtol=1e-12)
    svg = line_plot(list(range(6)), ys, "loss", y_label="loss", log_y=False, smooth=True, width=400, height=200)
    raw = re.findall(r'<polyline class="line raw" points="([^"]*)"', svg)
    smooth = re.findall(r'<polyline class="line smooth" points="([^"]*)"', svg)
    assert len(raw) == len(smooth) == 1  # the raw line and its EMA over it
    y_px = np.array([float(p.split(",")[1]) for p in smooth[0].split()])
    py = lambda y: (200 - BOTTOM) - (np.asarray(y) - 1) / 7 * (200 - BOTTOM - TOP)  # noqa: E731  [1, 8] -> box
    np.testing.assert_allclose(y_px, py(want), atol=0.006)
    assert re.search(r'<text class="ylabel"[^>]*>loss</text>', svg)


def test_on_a_log_axis_the_smoothed_curve_is_the_ema_of_log_y():
    """Heavy-tailed losses (log-normal around 1, 60 steps) on a log axis: the smoothed line is the EMA of log10 y
    (the axis's own scale), so it runs through the middle of the raw points, not above nearly all of them."""
    ys = list(np.exp(np.random.default_rng(1).normal(0.0, 2.0, 60)))
    w, h = 400, 200
    svg = line_plot(list(range(60)), ys, "loss", smooth=True, width=w, height=h)
    assert "(log scale)" in svg
    lo, hi = np.log10(min(ys)), np.log10(max(ys))
    py = lambda v: (h - BOTTOM) - (np.asarray(v) - lo) / (hi - lo) * (h - BOTTOM - TOP)  # noqa: E731  log10 y
    (smooth,) = re.findall(r'<polyline class="line smooth" points="([^"]*)"', svg)
    y_px = np.array([float(p.split(",")[1]) for p in smooth.split()])
    np.testing.assert_allclose(y_px, py(ema(list(np.log10(ys)))), atol=0.006)
    above = np.mean(py(np.log10(ys)) < y_px)  # raw points drawn above the smoothed line (smaller pixel y)
    assert 0.4 < above < 0.6, above  # measured 0.52; the EMA of y drawn on the log axis: 0.23


def test_curves_name_their_y_axis_and_do_not_draw_sds_twice(tmp_path):
    rows = [{"step": s, "loss": 3.0 / s, "loss_sds": 3.0 / s, "loss_sparsity": 0.1, "grad_norm": 2.0, "t": 0.5}
            for s in range(1, 6)]
    assert sorted(series(rows)) == ["grad_norm", "loss", "loss_sparsity", "t"]  # loss_sds == loss: drawn once
    rows[2]["loss"] = 1.2  # another term weighted in: then loss_sds is its own curve
    assert "loss_sds" in series(rows)
    run = _full_run(tmp_path / "run")
    html = write_report(run).read_text()
    labels = re.findall(r'<text class="ylabel"[^>]*>([^<]*)</text>', html)
    assert labels == ["loss", "norm", "t", "loss", "loss", "seconds"]  # loss, grad_norm, t, loss_sds, ..., sec


def test_no_previews_says_why(tmp_path):
    for overrides, status, step, why in (
            (["steps=120", "preview_every=300"], "done", 120, "preview_every=300 is more than steps=120"),
            (["preview_every=0"], "done", 600, "preview_every=0 turns them off"),
            (["preview_every=100"], "failed", 40, "the run stopped at step 40, before the first preview at step 100")):
        run = tmp_path / f"run-{step}-{len(why)}"
        run.mkdir()
        (run / "config.yaml").write_text(to_yaml(load_config("demo", overrides)))
        (run / "run.json").write_text(json.dumps({"status": status, "config": "demo", "step": step}))
        assert f"previews: not produced ({why}" in write_report(run).read_text()


def test_a_poor_prior_iou_is_flagged(tmp_path):
    from dreamfusion.report.reading import POOR_IOU

    run = _full_run(tmp_path / "run")
    assert "is poor" not in write_report(run).read_text()  # IoU 0.94
    info = json.loads((run / "run.json").read_text())
    info["metrics"]["iou"] = 0.44
    (run / "run.json").write_text(json.dumps(info))
    assert f'<div class="poor">IoU 0.440 is poor (under {POOR_IOU})' in write_report(run).read_text()


def test_the_demo_leaves_eight_previews_for_the_slider():
    """The demo's report has at least 8 slider stops, the last at the final step (whose eval grid the video reuses)."""
    cfg = load_config("demo")
    assert cfg.steps // cfg.preview_every >= 8 and cfg.steps % cfg.preview_every == 0


def test_report_command_line_reruns_the_same_config(tmp_path):
    """The page's command line, re-parsed with shlex and the CLI's own parser, loads the run's config: for a batch
    run (whose prompt and seed come from the prompts file, not its overrides) and for a plain run."""
    from html import unescape

    from dreamfusion.batch.worker import PromptWorker
    from dreamfusion.cli import parse_command_line
    from dreamfusion.runfolder import RunRecord

    prompt = 'a red cube\'s "twin" $HOME `x` & ;'
    job = {"index": 0, "prompt": prompt, "seed": 7, "resume": False, "config": "demo", "run_dir": str(tmp_path / "b"),
           "overrides": ["steps=120", f"output_dir={tmp_path / 'my runs'}", "guidance.guidance_scale=7.5"]}
    batch_cfg = PromptWorker._config(None, job)
    plain = ["prompt=a blue sphere", "seed=3", "render.width=48", f"output_dir={tmp_path / 'out dir'}"]
    for name, cfg, config_name, overrides in (("b", batch_cfg, "demo", job["overrides"]),
                                             ("p", load_config(None, plain), None, plain)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        RunRecord(run_dir, cfg, config_name, overrides).update(status="done")
        html = write_report(run_dir).read_text()
        (command,) = re.findall(r'<code class="command">([^<]*)</code>', html)
        argv = shlex.split(unescape(command))
        assert argv[:3] == ["python", "-m", "dreamfusion"]
        command, args = parse_command_line(argv[3:])
        assert command == "run" and args.config == config_name
        assert to_yaml(load_config(args.config, args.settings)) == (run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("settings, label", [([], "sds/prior"), (["guidance.type=perp_neg"], "perp_neg/prior"),
                                             (["guidance.model_type=deepfloyd"], "sds/deepfloyd"),
                                             (["guidance.type=clip"], "clip")])
def test_run_json_names_the_rule_on_its_model(tmp_path, settings, label):
    """run.json's "guidance" (what the header and the gallery show): guidance.type/model_type, and CLIP alone."""
    from dreamfusion.runfolder import RunRecord

    RunRecord(tmp_path, load_config("demo", settings), "demo", settings).update(status="done")
    assert json.loads((tmp_path / "run.json").read_text())["guidance"] == label


def test_nice_ticks():
    assert nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0.013, 0.98) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert nice_ticks(-3, 7) == [-2, 0, 2, 4, 6]


def test_config_diff_on_hand_built_dicts():
    defaults = {"steps": 600, "lr": 0.01, "field": {"type": "nerf", "bound": 1.0, "gaussian": {"count": 4096}},
                "camera": {"range": [2.4, 2.4]}, "only_in_defaults": 1}
    config = {"steps": 600, "lr": 0.02, "field": {"type": "nerf", "bound": 1, "gaussian_count": 4096},
              "camera": {"range": [2.0, 2.4]}}
    assert config_diff(config, defaults) == {"lr": 0.01, "field.gaussian_count": MISSING, "camera.range": [2.4, 2.4]}
    assert config_diff(defaults, defaults) == {}


def test_sizes():
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**30)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB"]


# ---- a run folder -----------------------------------------------------------------------------------------

def _preview(view: int) -> np.ndarray:
    """4 views side by side, each a different grey level (so any one view is recognisable)."""
    return np.concatenate([np.full((view, view, 3), 40 + 50 * k, np.uint8) for k in range(4)], axis=1)


def _full_run(path, config_name="demo"):
    """What a finished demo-like run leaves, small: a red cube mesh, a 2 s video, metrics, 64 px previews."""
    from PIL import Image

    from dreamfusion.export import write_glb, write_video

    path.mkdir()
    (path / "config.yaml").write_text(to_yaml(load_config(config_name, ["steps=120"])))
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], np.float32)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    write_glb(path / "mesh/model.glb", corners, faces, vertex_colors=np.tile(RED, (8, 1)))
    write_video(path / "orbit.mp4", np.linspace(0, 255, FRAMES)[:, None, None, None].repeat(64, 1).repeat(96, 2)
                .repeat(3, 3).astype(np.uint8), fps=FPS)
    rows = [{"step": s, "loss": 100.0 / s, "sec_per_step": 0.1, "loss_sds": 90.0 / s, "grad_norm": 5.0, "t": 0.5,
             "loss_sparsity": 0.01} for s in range(10, 130, 10)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "previews").mkdir()
    for step in (40, 80, 120):
        Image.fromarray(_preview(64)).save(path / f"previews/step_{step:06d}.png")
    (path / "run.json").write_text(json.dumps({
        "format": "dreamfusion-run/1", "status": "done", "prompt": "a red cube", "config": config_name,
        "overrides": ["steps=120"], "field": "nerf", "guidance": "prior", "step": 120, "steps": 120, "device": "cpu",
        "seconds": {"load_guidance": 1.0, "train": 12.0, "export.mesh": 2.0},
        "artifacts": {"glb": "mesh/model.glb", "video": "orbit.mp4", "obj": "mesh/model.obj"},
        "metrics": {"loss": 0.83, "iou": 0.94}, "error": None}))
    return path


def test_report_holds_everything_and_its_size_adds_up(tmp_path):
    run = _full_run(tmp_path / "run")
    path = write_report(run)
    assert path == run / "report.html" and not [p for p in run.iterdir() if p.name.startswith(".")]
    html = path.read_text()
    from importlib.resources import files

    script = (files("dreamfusion.report") / "vendor/model-viewer.min.js").read_bytes()
    embedded = sum(math.ceil(p.stat().st_size / 3) * 4 for p in [run / "mesh/model.glb", run / "orbit.mp4",
                                                                *sorted((run / "previews").iterdir())])
    # the page is the viewer's script, the base64 of what it embeds, and some tens of kB of its own
    assert len(script) + embedded < path.stat().st_size < len(script) + embedded + 60_000
    assert "obj</td><td><code>mesh/model.obj</code> not produced" in html  # named in run.json, not on disk


def test_the_config_table_marks_what_the_overrides_changed(tmp_path):
    """The run set steps=120 over the demo config: that is the one setting differing from the demo's defaults."""
    run = read_run(_full_run(tmp_path / "run"))
    assert run.diff == {"steps": load_config("demo").steps} and run.config["steps"] == 120 != run.diff["steps"]
    assert '<tr class="changed"><td>steps</td>' in write_report(run.path).read_text()


def test_report_of_a_bare_folder_says_what_is_missing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(load_config("demo")))
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 1.0}\n{"step": 20, "lo')  # interrupted mid-line
    info = read_run(run)
    assert [len(info.metrics), info.info, info.diff] == [1, {}, {}]
    assert any("1 unreadable line" in n for n in info.notes) and any("no run.json" in n for n in info.notes)
    html = write_report(run).read_text()
    for missing in ("mesh: not produced", "orbit video: not produced", "previews: not produced"):
        assert missing in html


def test_previews_are_thinned_evenly_and_unreadable_ones_noted(tmp_path):
    from PIL import Image

    from dreamfusion.report.reading import MAX_PREVIEWS

    (tmp_path / "previews").mkdir()
    steps = list(range(10, 10 * (2 * MAX_PREVIEWS - 1) + 1, 10))  # 2 MAX - 1 of them: every other one is kept
    for step in steps:
        Image.fromarray(_preview(8)).save(tmp_path / f"previews/step_{step:06d}.png")
    assert [s for s, _, _ in read_run(tmp_path).previews] == steps[::2]
    (tmp_path / "previews" / f"step_{steps[-1]:06d}.png").write_bytes(b"not a png")
    run = read_run(tmp_path)
    assert [w for _, _, w in run.previews] == [32] * (MAX_PREVIEWS - 1)
    assert any(f"step_{steps[-1]:06d}.png could not be read" in n for n in run.notes)


def test_report_errors_are_one_line(tmp_path, capsys):
    from dreamfusion.cli import main

    for argv in ([], ["a", "b"], [str(tmp_path / "missing")], [str(tmp_path)]):
        assert main(["report", *argv]) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1, argv
    with pytest.raises(UserError, match="is not a run folder"):
        rebuild_report(tmp_path)
    run = _full_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")


# ---- the page in headless Chromium --------------------------------------------------------------------------

class _Page:
    """One headless Chromium tab over the DevTools protocol: console errors, exceptions and requests are
    collected as events; `state()` reads the page with a JavaScript expression."""

    def __init__(self, tmp_path):
        self.log = open(tmp_path / "chromium.log", "wb")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "--disable-gpu-compositing",  # WebGL in SwiftShader, the page composited in software: much faster
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # the network is off
             "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        try:
            self._connect(tmp_path)
        except BaseException:
            self.close()
            raise

    def _connect(self, tmp_path):
        from websockets.sync.client import connect

        self.ws = None
        port_file, deadline = tmp_path / "profile" / "DevToolsActivePort", time.time() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):  # "PORT\n/devtools/browser/ID"
            assert self.proc.poll() is None and time.time() < deadline, \
                f"Chromium did not open its DevTools port: {(tmp_path / 'chromium.log').read_text()[-2000:]}"
            time.sleep(0.05)
        port, browser = port_file.read_text().split()
        url = f"ws://127.0.0.1:{port}{browser}"
        self.ws, self.n, self.events = connect(url, max_size=None, open_timeout=30), 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1200, height=1100, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params):
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params}
        if method.split(".")[0] not in ("Target",):
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.n:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            self.events.append(reply)

    def state(self, expression: str):
        return json.loads(self.call("Runtime.evaluate", expression=f"JSON.stringify({expression})",
                                    returnByValue=True)["result"]["value"])

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("exception", {}).get("description", "exception"))
            elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"]["text"])
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path) -> np.ndarray:
        from PIL import Image

        frames = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
        self.call("Runtime.evaluate", expression=frames, awaitPromise=True)
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int32)

    def close(self):
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def page(tmp_path):
    require_oracle(CHROMIUM is not None, "headless Chromium", "apt-get install -y chromium")
    import_oracle("websockets.sync.client", 'the DevTools client: pip install "dreamfusion[dev]"')
    p = _Page(tmp_path)
    yield p
    p.close()


STATE = """{ready: document.readyState,
  mesh: (m => m && {loaded: m.loaded, visible: m.modelIsVisible, rect: m.getBoundingClientRect().toJSON()})(
    document.querySelector("model-viewer")),
  video: (v => v && {readyState: v.readyState, duration: v.duration, width: v.videoWidth,
                     shown: v.getBoundingClientRect().width, error: v.error && v.error.code})(
    document.querySelector("video")),
  previews: [...document.querySelectorAll(".previews img")].map(i => ({complete: i.complete, natural: i.naturalWidth,
    shown: i.getBoundingClientRect().width})),
  plots: [...document.querySelectorAll("svg.plot")].length,
  changed: [...new Set([...document.querySelectorAll("tr.changed td:first-child")].map(td => td.textContent))],
  absent: [...document.querySelectorAll(".absent")].map(d => d.textContent)}"""


def _load(page, report, until, timeout=90.0):
    page.call("Page.navigate", url=report.resolve().as_uri())
    deadline = time.time() + timeout
    while True:
        state = page.state(STATE)
        if state["ready"] == "complete" and until(state):
            return state
        assert time.time() < deadline, f"the page did not get ready: {state}, errors {page.errors()}"
        time.sleep(0.25)


def _reddish(pixels: np.ndarray) -> np.ndarray:
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return (r - np.maximum(g, b) > 50) & (g < 150) & (b < 150)


def _offline_and_quiet(page, report):
    assert page.errors() == []
    assert page.requests() and all(u == report.resolve().as_uri() or u.startswith("data:") for u in page.requests())


def test_report_in_chromium_shows_mesh_video_previews(page, tmp_path):
    report = write_report(_full_run(tmp_path / "run"))
    ready = lambda s: s["mesh"]["visible"] and (s["video"]["readyState"] >= 2 or s["video"]["error"])  # noqa: E731
    state = _load(page, report, ready)
    shot = page.screenshot(tmp_path / "full.png")
    assert shot.shape == (1100, 1200, 3)
    # the 3D view: inside its box, the pixels that are not background are the cube's red, and there are many
    r = {k: round(v) for k, v in state["mesh"]["rect"].items()}
    box = shot[r["y"] + 4:r["y"] + r["height"] - 4, r["x"] + 4:r["x"] + r["width"] - 4]
    assert box.shape[0] > 300 and box.shape[1] > 300, f"the 3D view is not on screen: {r}"
    drawn = np.abs(box - np.array(BACKGROUND)).max(axis=-1) > 40
    assert drawn.mean() > 0.05, f"only {drawn.mean():.1%} of the 3D view differs from its background"
    assert _reddish(box)[drawn].mean() > 0.9, "the mesh is not shown in its own (red) colour"
    # the video: decodable, with the duration it was written with (frames / fps)
    assert state["video"]["error"] is None and state["video"]["readyState"] >= 2
    assert state["video"]["duration"] == pytest.approx(FRAMES / FPS, abs=1.0 / FPS) and state["video"]["width"] == 96
    assert state["video"]["shown"] == 96  # at its native size: not upscaled into a blur
    # previews: each 64 px view shown at 256 px; only the last one (of 3) is visible
    assert [(p["complete"], p["natural"]) for p in state["previews"]] == [(True, 256)] * 3
    assert [p["shown"] for p in state["previews"]] == [0, 0, 1024]
    # curves: loss, grad_norm, t, loss_sds, loss_sparsity, sec_per_step; the one override is highlighted
    assert state["plots"] == 6 and state["changed"] == ["steps"] and state["absent"] == []
    _offline_and_quiet(page, report)


def test_report_in_chromium_without_mesh_or_video(page, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(load_config("demo")))
    (run / "run.json").write_text(json.dumps({"status": "failed", "prompt": "a red cube", "config": "gone",
                                              "error": "guidance model not found"}))
    report = write_report(run)
    state = _load(page, report, lambda s: True)
    shot = page.screenshot(tmp_path / "bare.png")
    assert state["mesh"] is None and state["video"] is None and state["previews"] == [] and state["plots"] == 0
    assert state["absent"] == ["mesh: not produced", "orbit video: not produced",
                               "previews: not produced (the run failed before its first preview at step 75)",
                               "metrics.jsonl: not produced", "timings: not recorded"]
    assert state["changed"] == []  # the defaults of "gone" cannot be loaded: no highlights
    assert "could not be loaded" in report.read_text()
    assert _reddish(shot[300:]).mean() == 0.0  # below the header (whose badge is red) nothing is the mesh's red
    _offline_and_quiet(page, report)
