"""Fault injection for the kill-and-resume tests: one environment variable, read in one place.

    FRCNN_FAULT=<stage>:<index>[:<signal>]     e.g. stage1_det:7  or  stage2_rpn:3:TERM

When set, the process sends itself the signal (default KILL, a real SIGKILL: no handler, no
cleanup) when stage ``<stage>`` reaches ``<index>``: the training step about to run (training
stages), or the number of images already proposed (``stage1_proposals`` / ``stage2_proposals``).
Unset (always, outside the tests), :func:`fault_point` does nothing.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "FRCNN_FAULT"


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
