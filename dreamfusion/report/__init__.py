"""report.html: one self-contained page per run folder that works offline from file://.

    write_report(run_dir)                      # -> run_dir / "report.html"
    python -m dreamfusion report RUN_DIR       # rebuild_report(run_dir): rebuild it

It reads only the run folder (run.json, config.yaml, metrics.jsonl, previews/, the mesh and the video),
so it works for finished, failed and interrupted runs alike; a missing piece shows as "not produced".
The 3D view is @google/model-viewer, vendored in vendor/ (tools/report-viewer/vendor.sh rebuilds it).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from dreamfusion.errors import UserError
from dreamfusion.io import atomic_write_text
from dreamfusion.runfolder import CONFIG, REPORT, RUN_JSON, is_run_folder

__all__ = ["write_report", "rebuild_report"]


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write run_dir/report.html (atomically) and return its path."""
    from dreamfusion.report.page import render_page
    from dreamfusion.report.reading import read_run

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"'{run_dir}' is not a folder: pass a run folder made by dreamfusion")
    html = render_page(read_run(run_dir))
    return atomic_write_text(run_dir / REPORT, html)


def rebuild_report(run_dir: str | os.PathLike) -> Path:
    """The ``report`` command's work: check that run_dir is a run folder, rebuild its report, return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"'{run_dir}' does not exist: pass a run folder made by python -m dreamfusion")
    if not (is_run_folder(run_dir) or (run_dir / RUN_JSON).is_file()):
        raise UserError(f"'{run_dir}' is not a run folder (no {CONFIG} or {RUN_JSON})")
    path = write_report(run_dir)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
    return path
