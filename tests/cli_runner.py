"""Run a command-line script (``train.py``, ``scripts/eval.py``, ...) as its own process, without
paying for the imports each time.

``python train.py ...`` spends ~4-6 s of a 2-core machine importing torch, torchvision and Lightning
before it does anything; the suite starts ~40 such processes. :func:`run_script` starts them from a
``multiprocessing`` fork server that has imported those modules once (per pytest worker): each run
is still a separate process with its own pid, exit status, signals (SIGKILL / SIGTERM reach it and
only it), working directory, environment, argv and stdout / stderr, and runs the script as
``__main__`` exactly as the interpreter would, then the interpreter's exit handlers. What differs
from a fresh interpreter: the pre-imported modules are not imported again, so a warning printed
while importing them is not in the run's stderr (tests of the console output use
:func:`run_fresh`), and the thread count comes from ``OMP_NUM_THREADS`` of the run's environment
(applied with ``torch.set_num_threads``) rather than from the import.

``FRCNN_TEST_FRESH_PROCESSES=1`` runs every script in a fresh interpreter instead (the same
results, slower); so does a platform without the fork server.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO_ROOT

PRELOAD = ["torch", "torchvision", "lightning", "hydra", "omegaconf", "frcnn.cli.train", "frcnn.engine.recipes",
           "frcnn.cli.eval", "frcnn.cli.detect"]
_CONTEXT = None


def fork_server():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


def _use_fresh_processes() -> bool:
    return os.environ.get("FRCNN_TEST_FRESH_PROCESSES") == "1" or \
        "forkserver" not in multiprocessing.get_all_start_methods()


def run_fresh(args, cwd=REPO_ROOT, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``python <args>`` in a new interpreter (what a user runs, imports and all)."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_script(args, cwd=REPO_ROOT, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``python <script> <args...>`` as its own process, started from the fork server (see the module
    docstring) -> a CompletedProcess with its exit status (-N: killed by signal N), stdout, stderr.
    Raises subprocess.TimeoutExpired (after killing it) past ``timeout`` seconds."""
    args = [str(a) for a in args]
    if _use_fresh_processes():
        return run_fresh(args, cwd, env, timeout)
    env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="frcnn_cli_") as tmp:
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        process = fork_server().Process(target=_run_as_main,
                                         args=(args, str(cwd), env, str(out_path), str(err_path)))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired([sys.executable, *args], timeout)
        return subprocess.CompletedProcess([sys.executable, *args], process.exitcode,
                                           out_path.read_text(errors="replace"), err_path.read_text(errors="replace"))


def run_in_terminal(args, cwd=REPO_ROOT, env=None, timeout=300, columns=160) -> subprocess.CompletedProcess:
    """``python <script> <args...>`` with its stdout on a pseudo-terminal of ``columns`` columns (a user's
    terminal: ``sys.stdout.isatty()`` is true), its stderr in a file; started as :func:`run_script` starts
    it. -> a CompletedProcess whose stdout is what the terminal received (carriage returns and all)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    args = [str(a) for a in args]
    env = dict(os.environ if env is None else env)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    received = bytearray()
    with tempfile.TemporaryDirectory(prefix="frcnn_cli_") as tmp:
        err_path = Path(tmp) / "stderr"
        if _use_fresh_processes():
            with open(err_path, "w") as err:
                process = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=slave, stderr=err)
            alive, exitcode = (lambda: process.poll() is None), (lambda: process.returncode)
        else:  # the child opens the terminal by its name as its stdout (O_TRUNC does nothing to a terminal)
            process = fork_server().Process(target=_run_as_main,
                                             args=(args, str(cwd), env, os.ttyname(slave), str(err_path)))
            process.start()
            alive, exitcode = process.is_alive, (lambda: process.exitcode)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if select.select([master], [], [], 0.2)[0]:
                    received += os.read(master, 65536)
                elif not alive():
                    while select.select([master], [], [], 0.1)[0]:  # what it wrote just before it ended
                        received += os.read(master, 65536)
                    break
                if time.monotonic() > deadline:
                    process.kill()
                    raise subprocess.TimeoutExpired([sys.executable, *args], timeout)
        finally:
            os.close(master)
            os.close(slave)
        return subprocess.CompletedProcess([sys.executable, *args], exitcode(),
                                           received.decode(errors="replace"), err_path.read_text(errors="replace"))


def _run_as_main(args: list[str], cwd: str, env: dict, out_path: str, err_path: str) -> None:
    """In the new process: the interpreter's setup for ``python <args>``, the script as __main__,
    then the exit handlers (multiprocessing would skip them)."""
    import atexit
    import io
    import runpy

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out_path), (2, err_path)):
        file_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(file_fd, fd)
        os.close(file_fd)
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8", errors="backslashreplace")
    sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)
    if env.get("OMP_NUM_THREADS", "").isdigit():
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.argv = list(args)
    sys.path[0] = str(Path(cwd, args[0]).resolve().parent)  # as `python script.py` sets it
    try:
        runpy.run_path(args[0], run_name="__main__")
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
