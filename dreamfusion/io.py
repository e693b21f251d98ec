"""The one atomic writer: every file a run produces is written beside its target and renamed onto it, so a
kill never leaves half a file and a failed write keeps the previous one."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import UserError, WriteError

__all__ = ["atomic_path", "atomic_write", "atomic_write_text", "write_error"]


def _os_error(exc: BaseException) -> OSError | None:
    """``exc`` itself when it is an OSError, else the OSError it was raised while handling: torch.save and other
    writers turn a failed ``write`` into their own error (``RuntimeError: [enforce fail at inline_container.cc]
    ... unexpected pos``) whose context is the OSError (ENOSPC for a full disk)."""
    seen = set()
    while exc is not None and id(exc) not in seen and not isinstance(exc, UserError):
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def write_error(path: str | os.PathLike, exc: OSError) -> WriteError:
    """The one-line error for a file that could not be written: a full disk says "no space left on device"."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteError(f"cannot write '{path}': no space left on device; free some disk space and run again "
                          f"(the previous file, if any, is intact)")
    return WriteError(f"cannot write '{path}' ({exc.strerror or exc}): free some disk space or check the folder's "
                      f"permissions; the previous file, if any, is intact")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (same suffix, so tools that pick a format by extension work);
    when the block ends without an error it is renamed onto ``path``. On any error the temporary file is
    removed and the old ``path``, if any, is intact; an OSError (also one a writer wrapped in its own error,
    as torch.save does) becomes a one-line WriteError naming ``path``."""
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
        os_error = _os_error(exc) if isinstance(exc, Exception) else None
        if os_error is not None:
            raise write_error(path, os_error) from None
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
