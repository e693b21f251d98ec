"""The splat viewer end to end: `python -m dreamfusion view RUN_DIR --port P` in a subprocess, the page loaded in
headless Chromium (software WebGL), and the screenshot checked for the splats' colour against a run whose
splats are transparent. CI needs `apt-get install -y chromium` and `pip install viser`."""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import torch

from conftest import import_oracle, require_oracle
from dreamfusion.export.ply import write_ply

COLOUR = (0.9, 0.3, 0.1)  # the splats' rgb: what the screenshot must show
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)

def _run_folder(path, opacity: float):
    """A run folder with only splats.ply: 2000 splats filling the cube [-0.5, 0.5]^3, one colour."""
    n = 2000
    g = torch.Generator().manual_seed(0)
    path.mkdir()
    write_ply(path / "splats.ply", {
        "means": torch.rand(n, 3, generator=g) - 0.5, "log_scales": torch.full((n, 3), math.log(0.03)),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1),
        "opacity_logits": torch.full((n,), math.log(opacity / (1 - opacity))),
        "sh_dc": ((torch.tensor(COLOUR) - 0.5) / 0.28209479177387814).repeat(n, 1)})
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _screenshot(run_dir, tmp_path, name: str, budget_ms: int = 20000) -> np.ndarray:
    from PIL import Image

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dreamfusion", "view", str(run_dir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 60
        while not any(line.startswith("http://") for line in lines):
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"viewer did not print its URL: {proc.stderr.read() if proc.poll() is not None else ''}")
            time.sleep(0.2)
        url = next(line.strip() for line in lines if line.startswith("http://"))
        assert url == f"http://localhost:{port}"
        png = tmp_path / f"{name}.png"
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                        f"--user-data-dir={tmp_path / ('profile-' + name)}", f"--screenshot={png}",
                        "--window-size=800,600", f"--virtual-time-budget={budget_ms}", url],
                       check=True, timeout=120, capture_output=True)
        return np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_viewer_shows_the_splats(tmp_path):
    require_oracle(CHROMIUM is not None, "headless Chromium", "apt-get install -y chromium")
    import_oracle("viser", 'pip install "dreamfusion[viewer]"')
    centre = (slice(150, 500), slice(200, 600))  # away from the notification and the GUI panel
    # the splats' hue (r > g > b, well saturated); viser fades splats in, so not their exact value
    near = lambda img: ((img[centre][..., 0] - img[centre][..., 2] > 50)
                        & (img[centre][..., 0] > img[centre][..., 1]) & (img[centre][..., 1] > img[centre][..., 2])).mean()
    # The scene arrives over a websocket after the page loads; on a loaded machine that can take longer
    # than Chromium's virtual-time budget, so the full scene is shot again with longer budgets.
    full_dir = _run_folder(tmp_path / "full", 0.9)
    for attempt, budget in enumerate((20000, 45000, 90000)):
        full = _screenshot(full_dir, tmp_path, f"full{attempt}", budget)
        if near(full) > 0.05:
            break
    empty = _screenshot(_run_folder(tmp_path / "empty", 1e-4), tmp_path, "empty", 90000)
    assert full.shape == empty.shape == (600, 800, 3)
    assert near(full) > 0.05, f"only {near(full):.1%} of the centre shows the splats' colour"
    assert near(empty) == 0.0
    assert full[centre].std() > empty[centre].std() + 20


def test_view_errors_are_one_line(tmp_path, capsys):
    from dreamfusion.cli import main

    (tmp_path / "run").mkdir()
    (tmp_path / "other").mkdir()
    cases = [
        (["view"], "usage: python -m dreamfusion view RUN_DIR"),
        (["view", str(tmp_path / "missing")], "does not exist"),
        (["view", str(tmp_path / "run"), "--port", "eighty"], "--port must be an integer, got 'eighty'"),
        (["view", str(tmp_path / "run"), "--port"], "--port needs a value; usage:"),
        (["view", str(tmp_path / "run"), "--fast"], "unknown option '--fast'; usage:"),
        (["view", str(tmp_path / "run"), str(tmp_path / "other")], "unexpected argument"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
        assert needle in err and not any(needle in a for a in argv), (argv, needle, err)


def test_view_of_a_folder_with_nothing_to_show_says_how_to_make_something(tmp_path, capsys):
    from dreamfusion.cli import main

    import_oracle("viser", 'pip install "dreamfusion[viewer]"')  # checked before the folder's contents
    (tmp_path / "run").mkdir()
    assert main(["view", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: nothing to show in ") and err.count("\n") == 1, err
    assert "no splats.ply, Gaussian checkpoint or mesh/model.glb (run python -m dreamfusion export" in err
