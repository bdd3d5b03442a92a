"""Fault injection for the reliability tests: two environment variables, each read in one place.

    FRCNN_FAULT=<stage>:<index>[:<signal>]     e.g. stage1_det:7  or  stage2_rpn:3:TERM

When set, the process sends itself the signal (default KILL, a real SIGKILL: no handler, no
cleanup) when stage ``<stage>`` reaches ``<index>``: the training step about to run (training
stages), or the number of images already proposed (``stage1_proposals`` / ``stage2_proposals``).

    FRCNN_WRITE_FAULT=<file name>:<errno>[:<nth>]   e.g. last.ckpt:ENOSPC:2  or  metrics.json:EIO

The ``nth`` write (default 1st) in this process of a file called ``<file name>`` (a glob such as
``*.pt`` works too) fails with ``OSError(<errno>)`` after its bytes went to the temporary file and
before the fsync, where a full disk or a failing device reports itself (frcnn.utils.atomic_io).
Unset (always, outside the tests), :func:`fault_point` and :func:`write_fault_point` do nothing.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
from collections import Counter
from pathlib import Path

FAULT_ENV = "FRCNN_FAULT"
WRITE_FAULT_ENV = "FRCNN_WRITE_FAULT"
_writes_seen: Counter[str] = Counter()  # writes per FRCNN_WRITE_FAULT pattern in this process


def parse_fault(text: str) -> tuple[str, int, signal.Signals]:
    """'stage1_det:7[:TERM]' -> ('stage1_det', 7, SIGTERM/SIGKILL); ValueError naming the variable."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError("expected <stage>:<index>[:<signal>]")
        name = parts[2] if len(parts) == 3 else "KILL"
        return parts[0], int(parts[1]), signal.Signals[f"SIG{name.upper().removeprefix('SIG')}"]
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{FAULT_ENV}={text!r}: expected <stage>:<index>[:<signal>], e.g. stage1_det:7 or "
                         f"stage1_det:7:TERM ({exc})") from None


def fault_point(stage: str, index: int) -> None:
    """Send the configured signal to this process when (stage, index) is the configured point."""
    text = os.environ.get(FAULT_ENV)
    if not text:
        return
    target, at, signum = parse_fault(text)
    if target == stage and index == at:
        os.kill(os.getpid(), signum)


def parse_write_fault(text: str) -> tuple[str, int, int]:
    """'last.ckpt:ENOSPC:2' -> ('last.ckpt', errno.ENOSPC, 2); ValueError naming the variable."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError("expected <file name>:<errno>[:<nth>]")
        code = getattr(errno, parts[1].upper(), None)
        if not isinstance(code, int):
            raise ValueError(f"{parts[1]!r} is not an errno name such as ENOSPC or EIO")
        nth = int(parts[2]) if len(parts) == 3 else 1
        if nth < 1:
            raise ValueError("nth counts from 1")
        return parts[0], code, nth
    except ValueError as exc:
        raise ValueError(f"{WRITE_FAULT_ENV}={text!r}: expected <file name>:<errno>[:<nth>], e.g. last.ckpt:ENOSPC:2 "
                         f"({exc})") from None


def write_fault_point(path: Path) -> None:
    """Raise the configured OSError when this is the configured write of a file named like ``path``."""
    text = os.environ.get(WRITE_FAULT_ENV)
    if not text:
        return
    pattern, code, nth = parse_write_fault(text)
    if not fnmatch.fnmatch(Path(path).name, pattern):
        return
    _writes_seen[text] += 1
    if _writes_seen[text] == nth:
        raise OSError(code, os.strerror(code), str(path))


def reset_write_faults() -> None:
    """Forget the writes counted so far (tests that inject several faults in one process)."""
    _writes_seen.clear()
