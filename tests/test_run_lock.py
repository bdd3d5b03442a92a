"""One writer per run directory (frcnn/utils/run_lock.py): a second process is refused naming the holder,
a SIGKILLed holder's lock is taken over with a line saying so, the lock is released at the end of a
run and on errors, only rank 0 takes it, and file systems without locks fall back to the record."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from frcnn.engine import recipes
from frcnn.utils import run_lock
from frcnn.utils.run_lock import LOCK_FILE, RunDirLock, RunDirLocked
from tests.conftest import REPO_ROOT

# a tiny holder: takes the lock of argv[1], says so, sleeps (killed by the test)
HOLDER = textwrap.dedent("""
    import logging, sys, time
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    from frcnn.utils.run_lock import RunDirLock
    RunDirLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def _env():
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _start_holder(run_dir):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    line = holder.stdout.readline()  # blocks until the lock is taken (or the process died)
    assert line.strip() == "locked", holder.stderr.read()
    return holder


def _kill(process, signum=signal.SIGKILL):
    os.kill(process.pid, signum)
    process.wait(timeout=30)


def test_second_train_is_refused_naming_the_holder_and_a_sigkilled_holder_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    first = _start_holder(run_dir)
    try:
        second = subprocess.run(
            [sys.executable, "train.py", "recipe=joint", "logger=none", f"hydra.run.dir={run_dir}"],
            cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        refusal = [line for line in second.stderr.splitlines() if line.startswith("Run dir locked:")]
        assert len(refusal) == 1 and "Traceback" not in second.stderr
        assert f"is in use by pid {first.pid} on host {socket.gethostname()}, started 20" in refusal[0]
        assert "UTC" in refusal[0] and str(run_dir) in refusal[0]
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # refused before Hydra wrote anything
    finally:
        _kill(first)  # SIGKILL: no cleanup; the kernel drops the flock, the record stays

    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == first.pid  # left behind by the killed holder
    third = _start_holder(run_dir)
    try:
        _kill(third, signal.SIGTERM)
        stderr = third.stderr.read()
    finally:
        if third.poll() is None:
            _kill(third)
    assert f"taking over the lock of pid {first.pid} on host {socket.gethostname()}" in stderr
    assert "its lock is stale" in stderr


# a holder with a forked child (as a data loader worker is) that outlives it by 2 s
HOLDER_WITH_CHILD = HOLDER.replace('print("locked"', 'import os\nif os.fork() == 0:\n    time.sleep(2)\n    os._exit(0)\nprint("locked"')


def test_a_sigkilled_holder_whose_child_still_runs_is_waited_for_then_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_WITH_CHILD, str(tmp_path)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
    _kill(holder)  # the child keeps the lock file open for up to 2 s more
    lock = RunDirLock(tmp_path).acquire()
    assert lock.took_over["pid"] == holder.pid
    lock.release()


def test_lock_is_released_at_the_end_and_on_errors(tmp_path):
    with RunDirLock(tmp_path) as lock:
        assert lock.held and json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(RunDirLocked, match=rf"run dir {tmp_path} is in use by pid {os.getpid()} on host"):
            RunDirLock(tmp_path).acquire()  # another open file: flock refuses it even in this process
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released cleanly: nothing to take over
    with pytest.raises(ZeroDivisionError):
        with RunDirLock(tmp_path):
            1 / 0
    again = RunDirLock(tmp_path).acquire()
    assert again.took_over is None  # the error released it cleanly too
    again.release()


def test_release_is_not_kept_back_by_forked_children(tmp_path):
    import multiprocessing
    import time

    lock = RunDirLock(tmp_path).acquire()
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))  # a data loader worker
    child.start()  # inherits the open lock file
    try:
        lock.release()
        RunDirLock(tmp_path).acquire().release()  # free although the child still has the file open
    finally:
        child.kill()
        child.join()


def test_only_rank_zero_takes_the_lock_and_run_recipe_releases_it(compose_cfg, tmp_path, monkeypatch):
    seen = {}

    def recipe(cfg, run_dir):
        seen["record"] = (run_dir / LOCK_FILE).read_text() if (run_dir / LOCK_FILE).exists() else None
        raise RuntimeError("stage failed")

    monkeypatch.setitem(recipes.RECIPES, "joint", recipe)
    cfg = compose_cfg(["recipe=joint", "logger=none"], tmp_path / "run")
    with pytest.raises(RuntimeError, match="stage failed"):
        recipes.run_recipe(cfg, tmp_path / "run")
    assert json.loads(seen["record"])["pid"] == os.getpid()
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # released on the error

    monkeypatch.setattr(recipes.rank_zero_only, "rank", 1)  # a DDP rank other than 0 does not try
    with RunDirLock(tmp_path / "run1"):  # even while another process holds it
        with pytest.raises(RuntimeError, match="stage failed"):
            recipes.run_recipe(cfg, tmp_path / "run1")
    assert json.loads(seen["record"])["pid"] == os.getpid()  # the holder's record, untouched


def test_a_run_dir_taken_after_start_up_is_refused_by_the_task_in_one_line(compose_cfg, tmp_path, capsys):
    from omegaconf import OmegaConf

    from frcnn.cli.train import run_job

    cfg = OmegaConf.create(compose_cfg(["recipe=joint", "logger=none"], tmp_path))
    with RunDirLock(tmp_path):  # e.g. the run dir Hydra named by the time of day, taken meanwhile
        with pytest.raises(SystemExit) as exited:
            run_job(cfg)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"Run dir locked: run dir {tmp_path} is in use by pid {os.getpid()}")


@pytest.fixture
def no_os_locks(monkeypatch):
    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", flock)


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_without_os_locks_the_record_decides(tmp_path, no_os_locks, caplog):
    path = tmp_path / LOCK_FILE
    here = socket.gethostname()
    path.write_text(json.dumps({"pid": os.getppid(), "host": here, "started": "2026-12-01 05:00:00 UTC"}))
    with pytest.raises(RunDirLocked, match=rf"in use by pid {os.getppid()} on host {here}"):
        RunDirLock(tmp_path).acquire()  # alive on this host
    path.write_text(json.dumps({"pid": 4242, "host": "node-gone", "started": "2026-12-01 05:00:00 UTC"}))
    with pytest.raises(RunDirLocked, match=rf"if node-gone is gone, remove the lock: rm {path}"):
        RunDirLock(tmp_path).acquire()  # another host: cannot be checked from here
    dead = _dead_pid()
    path.write_text(json.dumps({"pid": dead, "host": here, "started": "2026-12-01 05:00:00 UTC"}))
    lock = RunDirLock(tmp_path).acquire()  # dead on this host: stale, taken over
    assert lock.took_over["pid"] == dead and json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert "does not support locks" in caplog.text and f"taking over the lock of pid {dead}" in caplog.text


def test_a_further_ddp_rank_is_not_refused_by_the_command_line_lock_check(tmp_path, monkeypatch):
    """Lightning re-runs train.py for rank 1 with rank 0's hydra.run.dir: rank 0 holds the lock, and
    the further rank (LOCAL_RANK / RANK / NODE_RANK / SLURM_PROCID > 0) must not be refused by it."""
    from frcnn.cli.train import run_dir_in_use
    from frcnn.utils.run_lock import RunDirLock

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    lock = RunDirLock(tmp_path)
    lock.acquire()
    try:
        assert "is in use by pid" in run_dir_in_use([f"hydra.run.dir={tmp_path}"])
        monkeypatch.setenv("LOCAL_RANK", "1")
        assert run_dir_in_use([f"hydra.run.dir={tmp_path}"]) is None
    finally:
        lock.release()
