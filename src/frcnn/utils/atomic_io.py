"""Every file frcnn writes in a run dir is written here: atomically, checked, cleaned up on failure.

The rule of one write: the bytes go to ``<name>.tmp`` beside the target, are flushed and fsync'ed
(a full disk or a failing device often reports ENOSPC / EIO only at flush or fsync, when the page
cache hands the data to the file system), and only then replace the target with ``os.replace``. So
a reader, a rerun or a crash sees the previous complete file or the new complete file, never a
mix. When any step fails the temporary file is removed and :class:`WriteFailed` is raised: an
``OSError`` with the errno of the failure and the *target* path as its filename, so the caller
can say in one line which file could not be written and why (frcnn.cli.train does: exit status
:data:`WRITE_ERROR_EXIT_STATUS`).

The fault-injection point of :func:`frcnn.utils.fault_injection.write_fault_point` sits between the write and
the fsync, where a real ENOSPC / EIO surfaces.
"""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from frcnn.utils.fault_injection import write_fault_point

WRITE_ERROR_EXIT_STATUS = 74  # EX_IOERR of sysexits.h: "an error occurred while doing I/O on some file"
TMP_SUFFIX = ".tmp"
# errnos that only a write can meet (full, over quota, too big, read-only): from any writer, even one
# that is not frcnn's, they are reported in one line. EIO is not among them (a read meets it too):
# it is reported so when it comes from frcnn's writers, as WriteFailed.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


class WriteFailed(OSError):
    """A file of the run could not be written; ``filename`` is the target, ``errno`` the cause.
    The target is unchanged (its previous version, if any, is intact) and no temporary file is left."""


def is_write_error(exc: BaseException) -> bool:
    """A failed write of a run file: :class:`WriteFailed`, or any OSError of :data:`DISK_FULL_ERRNOS`."""
    return isinstance(exc, WriteFailed) or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS)


def describe_write_error(exc: OSError) -> str:
    """One line: which file, which error, what state the run dir is in and what to do."""
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "?"
    reason = exc.strerror or str(exc)
    where = exc.filename if exc.filename else "a file of the run (the writer did not name it)"
    return (f"cannot write {where}: {reason} ({code}). The previous version of the file, if any, is intact and no "
            "temporary file was left; free space / fix the device, then rerun the same command to resume")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically: ``write(f)`` fills ``<path>.tmp``, which is fsync'ed and renamed to
    ``path``. On any failure the temporary file is removed, ``path`` is left as it was, and an
    OSError comes out as :class:`WriteFailed` naming ``path``. -> path."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            write_fault_point(path)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # also KeyboardInterrupt / SIGTERM's SystemExit: never leave a .tmp
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the device is failing: the .tmp is harmless (never read) and reported with the error
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailed):
            raise WriteFailed(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: some file systems cannot fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write text (UTF-8) atomically: a reader sees the old file or the whole new one."""
    return atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=True), path)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically (a killed or failing writer never leaves a half file)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_save_figure(figure, path: str | Path) -> Path:
    """A matplotlib figure as PNG, atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(buffer.getvalue(), path)

