"""The one atomic writer: every file a run produces is written beside its target and renamed onto it, so a
kill never leaves half a file and a failed write keeps the previous one."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import UserError

__all__ = ["atomic_path", "atomic_write", "atomic_write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (same suffix, so tools that pick a format by extension work);
    when the block ends without an error it is renamed onto ``path``. On any error the temporary file is
    removed and the old ``path``, if any, is intact; an OSError becomes a one-line UserError."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:  # also Ctrl-C in the middle of a write
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. the "folder" is a file: there is no temporary file either
            pass
        if isinstance(exc, OSError):
            raise UserError(f"cannot write '{path}' ({exc.strerror or exc}): free some disk space or check the "
                            f"folder's permissions; the previous file, if any, is intact") from None
        raise


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``data`` (bytes, or a function that writes into the open binary file) to ``path`` atomically,
    fsynced before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, text.encode("utf-8"))
