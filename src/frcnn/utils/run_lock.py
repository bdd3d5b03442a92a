"""One writer per run directory: the process that trains in a run dir holds its lock.

A user who starts the same command twice, or a scheduler that requeues a job while the old one
still runs, would otherwise have two processes writing the same checkpoints. The lock is
``<run dir>/.frcnn.lock``:

- an OS lock, ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the file held open for as long as the run
  trains, so the kernel releases it when the process ends in any way, SIGKILL included;
- inside the file, a JSON record of the holder (pid, host, start time, command), written once the
  lock is taken and emptied when it is released normally.

A second process is refused at once (:class:`RunDirLocked`, exit status 2) with the holder named;
``train.py`` looks (:meth:`RunDirLock.check_free`) before Hydra writes into a run dir given on its
command line, and the recipe takes the lock (frcnn.engine.recipes.run_recipe).
A process that takes the lock and finds a record left behind knows its writer ended without
releasing it (killed, crashed, its node lost) and says so in a log line: the lock is stale and
taken over. The lock file itself is never deleted (deleting a lock file races with a process that
has it open), so an empty ``.frcnn.lock`` in a finished run dir is normal.

Other hosts. On NFSv4 (and Linux NFSv3 with lockd) flock is carried out as an NFS byte-range
lock: a holder on another host is seen, and when that host is lost the server frees its lock once
the client's lease expires (about 90 s by default), after which the next start takes it over. Where
flock fails (ENOLCK: NFSv3 without a lock daemon; ENOSYS / EOPNOTSUPP: e.g. Lustre mounted
``noflock``), frcnn falls back to the record and warns that exclusion is then best effort: a live
holder on this host (its pid runs) is refused, a dead one on this host is taken over, and a holder
on another host is refused with the command to remove the file if that host is gone, since its
liveness cannot be checked from here. Mounts that keep locks local to each client (NFS ``nolock``,
Lustre ``localflock``) exclude processes on the same host only; frcnn cannot tell them apart.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from frcnn.utils.atomic_io import WriteFailed

LOCK_FILE = ".frcnn.lock"
LOCKED_EXIT_STATUS = 2
CHILD_EXIT_WAIT_S = 10.0  # a SIGKILLed holder's forked children (data loader workers) exit within seconds
_NO_LOCKS_ERRNOS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
log = logging.getLogger(__name__)


class RunDirLocked(RuntimeError):
    """Another process holds the run dir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def describe_holder(record: dict[str, Any]) -> str:
    """'pid 4242 on host node7, started 2026-12-01 05:40:12 UTC (python train.py ...)'."""
    text = f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, started {record.get('started', '?')}"
    command = record.get("command")
    return f"{text} ({command})" if command else text


class RunDirLock:
    """The lock of one run dir. ``acquire`` / ``release``, or ``with RunDirLock(run_dir):``."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder's record, when one was found

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        """Take the lock or raise :class:`RunDirLocked` naming the holder; a stale lock is taken over."""
        if self.held:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'ed children (DDP ranks)
        try:
            if not self._lock(fd):
                self._fallback_check(fd)
            previous = self._read(fd)
            if previous:
                self.took_over = previous
                log.warning("run dir %s: taking over the lock of %s: that process ended without releasing it "
                            "(killed, crashed or its host lost); its lock is stale", self.run_dir,
                            describe_holder(previous))
            record = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                      "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500]}
            try:
                self._write(fd, record)
            except OSError as exc:  # a full disk: reported like every other failed write
                raise WriteFailed(exc.errno, exc.strerror or str(exc), str(self.path)) from exc
        except BaseException:
            os.close(fd)  # closing drops the flock as well
            raise
        self._fd = fd
        return self

    def check_free(self) -> None:
        """Raise :class:`RunDirLocked` naming the holder when another process holds the lock; take
        nothing and create nothing (a look before Hydra writes its files into the run dir)."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:  # no lock file (a new run dir) or not readable: acquire() decides later
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirLocked(self._refusal(self._read(fd))) from None
        except OSError:  # no OS locks here: acquire() falls back to the record
            pass
        finally:
            os.close(fd)  # drops the lock if it was taken

    def release(self) -> None:
        """Empty the record and drop the lock (normal end of the run, or an error that ends it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty record: released cleanly, nothing to take over
        except OSError as exc:  # e.g. the device failed: the next start reports a stale lock, no harm
            log.warning("run dir %s: could not clear %s (%s)", self.run_dir, self.path, exc)
        finally:
            try:  # explicitly: forked children (data loader workers) share the open file and would keep it
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                pass
            os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    # -- internals ---------------------------------------------------------------------------
    def _lock(self, fd: int) -> bool:
        """True when flock gave the lock; False when this file system has no locks; refuses a holder."""
        deadline = time.monotonic() + CHILD_EXIT_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                holder = self._read(fd)
                dead_here = (holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
                             and not _pid_alive(holder["pid"]))
                if dead_here and time.monotonic() < deadline:  # its forked workers still hold it: wait for them
                    time.sleep(0.2)
                    continue
                raise RunDirLocked(self._refusal(holder, children=dead_here)) from None
            except OSError as exc:
                if exc.errno in _NO_LOCKS_ERRNOS:
                    log.warning("run dir %s: the file system does not support locks (%s); one writer per run dir "
                                "is checked from %s only, on a best-effort basis", self.run_dir, exc, self.path)
                    return False
                raise

    def _fallback_check(self, fd: int) -> None:
        """Without OS locks: refuse a recorded holder that is (or may be) alive."""
        holder = self._read(fd)
        if not holder:
            return
        if holder.get("host") == socket.gethostname():
            if isinstance(holder.get("pid"), int) and _pid_alive(holder["pid"]) and holder["pid"] != os.getpid():
                raise RunDirLocked(self._refusal(holder))
            return  # dead on this host: stale, taken over by the caller
        raise RunDirLocked(self._refusal(holder) + f". Its host cannot be checked from here; if {holder.get('host')} "
                           f"is gone, remove the lock: rm {self.path}")

    def _refusal(self, holder: dict[str, Any], children: bool = False) -> str:
        who = describe_holder(holder) if holder else "another process (no record yet: it is just starting)"
        extra = (f"; pid {holder.get('pid')} is gone but processes it started still hold the lock, stop them"
                 if children else "")
        return (f"run dir {self.run_dir} is in use by {who}{extra}. Two processes must not write the same "
                "checkpoints: wait for it to end or stop it, or give this run another dir (hydra.run.dir=...)")

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        if not data.strip():
            return {}
        try:
            record = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"pid": "?", "host": "?", "started": "?", "command": f"unreadable record {data[:80]!r}"}
        return record if isinstance(record, dict) else {}

    @staticmethod
    def _write(fd: int, record: dict[str, Any]) -> None:
        data = json.dumps(record).encode()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
        os.fsync(fd)
