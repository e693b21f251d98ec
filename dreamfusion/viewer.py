"""`python -m dreamfusion view RUN_DIR [--port P] [--host H]`: browse a run's splats and mesh with viser.

Serves the Gaussian splats (RUN_DIR/splats.ply, else the Gaussian checkpoint) and the mesh
(RUN_DIR/mesh/model.glb, shown beside the splats, at x + MESH_OFFSET) to a browser, prints the URL
and blocks until Ctrl-C. viser is optional: `pip install "dreamfusion[viewer]"`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .errors import UserError
from .runfolder import CHECKPOINT, MESH_GLB, SPLATS, is_run_folder

__all__ = ["view_run"]

MESH_OFFSET = 1.5  # the mesh stands this far along +x from the splats, so both are visible at once


def load_splats(run_dir: Path) -> dict | None:
    """The run's splats as activated numpy arrays (centers, covariances, rgbs, opacities), or None."""
    import torch

    from .export.ply import read_ply
    from .fields import GaussianField

    ply = run_dir / SPLATS
    if ply.is_file():
        t = read_ply(ply)
    else:
        from .run import load_run

        if not (run_dir / CHECKPOINT).is_file() or not is_run_folder(run_dir):
            return None
        field = load_run(run_dir, "cpu").field
        if not isinstance(field, GaussianField):
            return None
        t = {k: getattr(field, k).detach().float() for k in ("means", "log_scales", "quats", "opacity_logits", "sh_dc")}
    from render.splat_math import SH_C0, quat_to_rotmat

    rot = quat_to_rotmat(torch.nn.functional.normalize(t["quats"], dim=-1))
    m = rot * t["log_scales"].exp()[:, None, :]
    return {"centers": t["means"].numpy(), "covariances": (m @ m.transpose(1, 2)).numpy(),
            "rgbs": (0.5 + SH_C0 * t["sh_dc"]).clamp(0, 1).numpy(),
            "opacities": torch.sigmoid(t["opacity_logits"])[:, None].numpy()}


def view_run(run_dir: Path, host: str = "127.0.0.1", port: int = 8080) -> int:
    """The ``view`` command's work: serve the run's splats and mesh on host:port until Ctrl-C; returns 0."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder '{run_dir}' does not exist")
    try:
        import viser
    except ImportError:
        raise UserError('the viewer needs viser: pip install "dreamfusion[viewer]"') from None
    splats = load_splats(run_dir)
    glb = run_dir / MESH_GLB
    if splats is None and not glb.is_file():
        raise UserError(f"nothing to show in '{run_dir}': no {SPLATS}, Gaussian checkpoint or {MESH_GLB} "
                        f"(run python -m dreamfusion export {run_dir} first)")
    try:
        server = viser.ViserServer(host=host, port=port, verbose=False)
    except OSError as exc:
        raise UserError(f"cannot serve on {host}:{port} ({exc.strerror or exc}): pass --port with a free port") from None
    server.scene.set_up_direction("+y")  # docs/DESIGN.md: the world is y up, the front faces +z
    server.initial_camera.position = (0.0, 0.8, 3.0)
    server.initial_camera.look_at = (0.75 if splats is not None and glb.is_file() else 0.0, 0.0, 0.0)
    handles = {}
    if splats is not None:
        handles["splats"] = server.scene.add_gaussian_splats("/splats", **{k: np.ascontiguousarray(v, dtype=np.float32)
                                                                           for k, v in splats.items()})
    if glb.is_file():
        offset = (MESH_OFFSET, 0.0, 0.0) if splats is not None else (0.0, 0.0, 0.0)
        handles["mesh"] = server.scene.add_glb("/mesh", glb.read_bytes(), position=offset)
    for name, handle in handles.items():
        box = server.gui.add_checkbox(f"show {name}", initial_value=True)
        box.on_update(lambda event, h=handle, b=box: setattr(h, "visible", b.value))
    shown = " and ".join(f"{k} ({len(splats['centers'])} Gaussians)" if k == "splats" else k for k in handles)
    url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{server.get_port()}"
    print(f"viewing {shown} of {run_dir} at {url} (Ctrl-C to stop)", file=sys.stderr)
    print(url, flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
