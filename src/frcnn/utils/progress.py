"""Progress of a long phase (proposals, evaluation, writing built-in data, rows of a table) with an ETA.

Where it goes depends on the console:

* stdout is a terminal: a tqdm bar (the bar Lightning's TQDMProgressBar draws during training);
* stdout is piped or a file: a line at most every ``every_s`` seconds (default 30 s,
  ``trainer.progress_every_s``) through the ``frcnn.progress`` logger, so Hydra's job log has it too:
  ``stage1_proposals: 120/256 images (47%), 8.1 images/s, elapsed 15s, ETA 17s``;
* off (``trainer.enable_progress_bar=false``) or in a DDP process other than rank 0: nothing.

The interval and the switch are one process-wide setting (:func:`configure_progress`, set by the
recipe from the trainer node), as the console itself is; a phase may pass its own. Lines are
rate-limited by a monotonic clock, so no phase floods a log however fast its items are.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

log = logging.getLogger("frcnn.progress")

DEFAULT_EVERY_S = 30.0
_settings = {"every_s": DEFAULT_EVERY_S, "enabled": True}
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")  # set by torchrun / Lightning's launcher / SLURM


def configure_progress(every_s: float | None = None, enabled: bool | None = None) -> None:
    """Set the process-wide progress interval (seconds between lines) and switch."""
    if every_s is not None:
        if not every_s > 0:
            raise ValueError(f"progress interval must be > 0 seconds, got {every_s!r}")
        _settings["every_s"] = float(every_s)
    if enabled is not None:
        _settings["enabled"] = bool(enabled)


def progress_settings() -> tuple[float, bool]:
    """(seconds between progress lines, progress on) as :func:`configure_progress` left them."""
    return _settings["every_s"], _settings["enabled"]


def is_rank_zero() -> bool:
    """False in a distributed process other than rank 0 (by the launchers' environment variables)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "0")
        if value.isdigit() and int(value) > 0:
            return False
    return True


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def format_duration(seconds: float) -> str:
    """4 -> '4s', 65 -> '1m05s', 3725 -> '1h02m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(done: float, total: float, elapsed_s: float, done_at_start: float = 0) -> float | None:
    """Seconds left at the rate since the start (items done in this process only); None before the first."""
    if done <= done_at_start or elapsed_s <= 0:
        return None
    return (total - done) * elapsed_s / (done - done_at_start)


def progress_line(name: str, done: int, total: int, unit: str, elapsed_s: float, done_at_start: int = 0,
                  fields: dict[str, str] | None = None, rate_unit: str | None = None, rate: float | None = None) -> str:
    """'joint: step 40/500 (8%), loss 0.512, 12.3 images/s, elapsed 1m05s, ETA 12m30s'.

    ``unit`` names the items counted (``step`` goes before the count, anything else after it);
    ``rate`` per second of ``rate_unit`` (default: items counted since the start per second)."""
    count = f"step {done}/{total}" if unit == "step" else f"{done}/{total} {unit}"
    parts = [f"{name}: {count} ({100 * done // max(total, 1)}%)"]
    parts += [f"{key} {value}" for key, value in (fields or {}).items()]
    if rate is None and elapsed_s > 0:
        rate = (done - done_at_start) / elapsed_s
    if rate is not None:
        parts.append(f"{rate:.3g} {rate_unit or unit}/s")
    eta = eta_seconds(done, total, elapsed_s, done_at_start)
    parts.append(f"elapsed {format_duration(elapsed_s)}")
    parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA -")
    return ", ".join(parts)


class Countdown:
    """Items of a known number that each take long (rows of a table, jobs of a sweep), one line per item:
    ``tick()`` after each -> 'row 4 of 24, elapsed 12m03s, ETA of the table 36m09s'."""

    def __init__(self, total: int, noun: str = "row", of_what: str = "the table",
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.noun, self.of_what, self.clock = int(total), noun, of_what, clock
        self.start, self.done = clock(), 0

    def tick(self) -> str:
        self.done += 1
        elapsed = self.clock() - self.start
        eta = eta_seconds(self.done, self.total, elapsed)
        return (f"{self.noun} {self.done} of {self.total}, elapsed {format_duration(elapsed)}, "
                f"ETA of {self.of_what} {format_duration(eta) if eta is not None else '-'}")


class ProgressLines:
    """A phase's progress as a line at most every ``every_s`` seconds (stdout not a terminal).

    ``update(done)`` after each item or batch prints when ``every_s`` has passed since the phase began
    or since the last line; ``close()`` prints where the phase ended when it printed a line before (a
    phase quicker than ``every_s`` prints nothing)."""

    def __init__(self, name: str, total: int, unit: str = "images", every_s: float = DEFAULT_EVERY_S,
                 done_at_start: int = 0, emit: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.name, self.total, self.unit, self.every_s = name, int(total), unit, float(every_s)
        self.done_at_start = self.done = int(done_at_start)
        self.emit = emit or log.info
        self.clock = clock
        self.start = self.last_line = clock()
        self.lines, self.last_done = 0, None

    def due(self) -> bool:
        return self.clock() - self.last_line >= self.every_s

    def update(self, done: int, **fields: str) -> None:
        self.done = int(done)
        if self.due():
            self.print_line(fields)

    def print_line(self, fields: dict[str, str] | None = None, rate: float | None = None,
                   rate_unit: str | None = None) -> None:
        now = self.clock()
        self.emit(progress_line(self.name, self.done, self.total, self.unit, now - self.start, self.done_at_start,
                                fields, rate_unit, rate))
        self.last_line, self.last_done = now, self.done
        self.lines += 1

    def close(self) -> None:
        if self.lines and self.last_done != self.done:
            self.print_line()


class ProgressBar:
    """A phase's progress as a tqdm bar on stdout (a terminal)."""

    def __init__(self, name: str, total: int, unit: str = "images", done_at_start: int = 0):
        from tqdm import tqdm

        self.bar = tqdm(total=int(total), initial=int(done_at_start), desc=name, unit=unit if unit != "step" else "it",
                        file=sys.stdout, leave=True, dynamic_ncols=True)

    def update(self, done: int, **fields: str) -> None:
        if fields:
            self.bar.set_postfix(fields, refresh=False)
        self.bar.update(int(done) - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class NoProgress:
    def update(self, done: int, **fields: str) -> None:
        pass

    def close(self) -> None:
        pass


def start_progress(name: str, total: int, unit: str = "images", every_s: float | None = None,
                   enabled: bool | None = None, done_at_start: int = 0):
    """A bar in a terminal, rate-limited lines otherwise, nothing when off or not rank 0.
    ``every_s`` / ``enabled``: None takes :func:`configure_progress`'s setting."""
    default_every_s, default_enabled = progress_settings()
    if not (default_enabled if enabled is None else enabled) or not is_rank_zero() or total <= 0:
        return NoProgress()
    if stdout_is_terminal():
        return ProgressBar(name, total, unit, done_at_start)
    return ProgressLines(name, total, unit, default_every_s if every_s is None else every_s, done_at_start)
