"""A field's own files, written into the run folder beside the mesh and the video: what each kind of field is
saved as (the checkpoint holds every field; these are for other tools).

    tri-plane  -> triplane.npz  (export/planes.py: planes + decoder as arrays)
    Gaussians  -> splats.ply    (export/ply.py: the standard 3DGS layout; SuperSplat, ``python -m dreamfusion view``)
    NeRF       -> nothing of its own (the mesh and the video only)
"""

from __future__ import annotations

from pathlib import Path

from ..fields.gaussian import GaussianField
from ..fields.triplane import TriplaneField
from ..runfolder import PLANES, SPLATS
from .planes import save_planes
from .ply import write_ply

__all__ = ["write_field_files"]

# field class -> (name in run.json's artifacts, file name, writer(path, field))
_WRITERS = {
    TriplaneField: ("planes", PLANES, lambda path, field: save_planes(field, path)),
    GaussianField: ("splats", SPLATS, write_ply),
}


def write_field_files(field, run_dir: Path) -> dict[str, Path]:
    """The files of ``field``'s own format written into ``run_dir``: ``{name: path}`` ({} for a field without)."""
    for kind, (name, filename, write) in _WRITERS.items():
        if isinstance(field, kind):
            return {name: write(Path(run_dir) / filename, field)}
    return {}
