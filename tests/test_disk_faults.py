"""Full disks and failing devices: ENOSPC / EIO injected (FRCNN_WRITE_FAULT, frcnn/utils/fault_injection.py) at every
kind of file frcnn writes. Each failed write names the file and the errno, leaves the previous version
intact and loadable and no temporary file behind; train.py stops with one line (exit 74); a rerun
resumes and ends as an uninterrupted run does."""

import contextlib
import errno
import json
import logging
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn.engine import recipes
from frcnn.engine.loggers import make_csv_saves_atomic
from frcnn.engine.proposal_files import load_proposal_file
from frcnn.engine.proposal_store import write_proposal_file
from frcnn.evaluation.plots import _new_figure
from frcnn.lit.checkpoint_io import AtomicCheckpointIO
from frcnn.modeling.rpn import ProposalSettings
from frcnn.utils.atomic_io import (
    WRITE_ERROR_EXIT_STATUS,
    WriteFailed,
    atomic_save_figure,
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    describe_write_error,
    is_write_error,
)
from frcnn.utils.fault_injection import WRITE_FAULT_ENV, parse_write_fault, reset_write_faults
from tests.cli_runner import run_script
from tests.conftest import REPO_ROOT

ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}


def _figure(version):
    figure = _new_figure(1.0 + version, 1.0)
    figure.add_subplot().plot([0, version])
    return figure


_CSV_WRITERS = {}


def _csv_log(path, version):
    """Lightning's CSV log writer as frcnn's CSV logger sets it up (frcnn.engine.loggers), one per file:
    each write logs a row and saves (the row stays pending when the save fails, as in training)."""
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    if path not in _CSV_WRITERS:
        _CSV_WRITERS[path] = ExperimentWriter(str(path.parent))
        make_csv_saves_atomic(_CSV_WRITERS[path])
    writer = _CSV_WRITERS[path]
    writer.log_metrics({"version": version, "loss": 1.0 / version}, step=version)
    writer.save()


SETTINGS = ProposalSettings(pre_nms_top_n=-1, post_nms_top_n=2, nms_thresh=0.7, min_size_px=0.0)
# kind -> (file name, write(path, version), read(path) -> version): every way frcnn writes a run file
WRITERS = {
    "lightning checkpoint (last.ckpt)": (
        "last.ckpt", lambda p, v: AtomicCheckpointIO().save_checkpoint({"global_step": v, "state_dict": {}}, p),
        lambda p: torch.load(p, weights_only=True)["global_step"]),
    "weights (model.pt)": ("model.pt", lambda p, v: atomic_torch_save({"w": torch.full((2,), float(v))}, p),
                           lambda p: int(torch.load(p, weights_only=True)["w"][0])),
    "proposal file": ("proposals.safetensors",
                      lambda p, v: write_proposal_file(p, [(np.full((1, 4), v, np.float32), np.ones(1, np.float32))], 1,
                                                       SETTINGS.post_nms_top_n),
                      lambda p: int(load_proposal_file(p, 1).boxes(0)[0, 0])),
    "json (metrics.json)": ("metrics.json", lambda p, v: atomic_write_json({"v": v}, p),
                            lambda p: json.loads(p.read_text())["v"]),
    "text marker (DONE)": ("DONE", lambda p, v: atomic_write_text(f"{v}\n", p), lambda p: int(p.read_text())),
    "png report (pr_curves.png)": ("pr_curves.png", lambda p, v: atomic_save_figure(_figure(v), p),
                                   lambda p: Image.open(p).size[0] // 100 - 1),
    "csv log (metrics.csv)": ("metrics.csv", _csv_log,
                              lambda p: int(float(p.read_text().splitlines()[-1].split(",")[-1]))),
}


@pytest.fixture
def write_fault(monkeypatch):
    def inject(text):
        reset_write_faults()
        monkeypatch.setenv(WRITE_FAULT_ENV, text)
    yield inject
    reset_write_faults()


@pytest.mark.parametrize("code_name", ERRNOS)
@pytest.mark.parametrize("kind", WRITERS)
def test_failed_write_names_the_file_keeps_the_previous_one_and_leaves_no_tmp(kind, code_name, tmp_path,
                                                                             write_fault, monkeypatch):
    name, write, read = WRITERS[kind]
    path = tmp_path / name
    write(path, 1)
    before = path.read_bytes()
    write_fault(f"{name}:{code_name}")
    with pytest.raises(WriteFailed) as failed:
        write(path, 2)
    assert failed.value.errno == ERRNOS[code_name] and failed.value.filename == str(path)
    assert path.read_bytes() == before and read(path) == 1  # the previous version, intact and loadable
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no .tmp left
    line = describe_write_error(failed.value)
    assert f"cannot write {path}: {os.strerror(ERRNOS[code_name])} ({code_name})" in line and "\n" not in line
    monkeypatch.delenv(WRITE_FAULT_ENV)  # space freed: the same write goes through
    write(path, 2)
    assert read(path) == 2


@contextlib.contextmanager
def small_tmpfs(folder, size_kib: int):
    """A real file system of ``size_kib`` KiB mounted at ``folder`` (tmpfs: needs root and a kernel that
    lets this process mount); the test is skipped, saying why, where the machine refuses."""
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip(f"a really full file system needs a small tmpfs mount, i.e. root (uid here: {os.geteuid()})")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"this machine refuses a tmpfs mount (mount -t tmpfs: {mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def test_metrics_csv_on_a_really_full_file_system_keeps_its_previous_version(tmp_path):
    """Lightning's CSV log on a 64 KiB tmpfs, saved every 50 rows as frcnn's CSV logger saves it, until the
    disk is full: the save that does not fit fails naming metrics.csv (ENOSPC), the file is byte for byte the
    last saved version (every row, parseable), no temporary file is left, and the rows stay pending."""
    import csv

    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    with small_tmpfs(tmp_path / "disk", 64) as disk:
        writer = ExperimentWriter(str(disk / "csv"))
        make_csv_saves_atomic(writer)
        path = disk / "csv" / "metrics.csv"
        previous, failed = None, None
        for step in range(20000):
            writer.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr": 0.001}, step=step)
            if step % 50 == 49:
                try:
                    writer.save()
                except WriteFailed as exc:
                    failed = exc
                    break
                previous = path.read_bytes()
        assert failed is not None, "the 64 KiB file system never filled up"
        assert failed.errno == errno.ENOSPC and failed.filename == str(path)
        assert previous is not None and path.read_bytes() == previous
        with open(path, newline="") as f:
            assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(step + 1 - 50))
        assert [p.name for p in (disk / "csv").iterdir()] == ["metrics.csv"]
        assert len(writer.metrics) == 50  # kept for the next save


def test_an_error_or_interrupt_in_the_middle_of_a_write_removes_the_tmp(tmp_path):
    path = tmp_path / "model.pt"
    atomic_write_bytes(b"old", path)

    def half_then(exc):
        def write(f):
            f.write(b"half of the new")
            raise exc
        return write

    with pytest.raises(WriteFailed, match=r"No space left on device.*model\.pt"):
        atomic_write(path, half_then(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then(KeyboardInterrupt()))
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_which_errors_are_reported_as_a_failed_write():
    foreign = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # another library's writer, no path
    assert is_write_error(foreign)
    assert describe_write_error(foreign).startswith("cannot write a file of the run (the writer did not name it): "
                                                    "No space left on device (ENOSPC)")
    assert is_write_error(WriteFailed(errno.EIO, os.strerror(errno.EIO), "x"))
    assert not is_write_error(OSError(errno.EIO, "read failed"))  # a read meets EIO too: not called a write
    assert not is_write_error(FileNotFoundError(errno.ENOENT, "absent", "x"))


def test_write_fault_variable_is_parsed_or_named_when_wrong():
    assert parse_write_fault("last.ckpt:ENOSPC:2") == ("last.ckpt", errno.ENOSPC, 2)
    assert parse_write_fault("*.pt:eio") == ("*.pt", errno.EIO, 1)
    for bad in ("last.ckpt", "last.ckpt:ENOPE", "last.ckpt:EIO:0", ":EIO"):
        with pytest.raises(ValueError, match=f"{WRITE_FAULT_ENV}="):
            parse_write_fault(bad)


JOINT = ["recipe=joint", "logger=csv", "data.num_train=4", "data.num_val=2", "schedule.joint.images_per_batch=2",
         "schedule.joint.max_steps=3", "schedule.joint.lr_steps=[2]", "recipe.val_every_n_epochs=null",
         "recipe.checkpoint_every_n_steps=1", "recipe.val_pictures=0",
         "trainer.log_every_n_steps=1"]  # rows in the joint stage's metrics.csv: its save is a real write
# every file the joint recipe writes, in the order it writes them; each rerun gets one step further
CHAIN = [("run_config.json:ENOSPC", "run_config.json"),
         ("last.ckpt:EIO:2", "joint/checkpoints/last.ckpt"),  # the 2nd save fails: the 1st (step 1) stays
         ("metrics.csv:ENOSPC", "csv/joint/metrics.csv"),
         ("model.pt:EIO", "joint/model.pt"),
         ("DONE:ENOSPC", "joint/DONE"),
         ("model.pt:ENOSPC:2", "final/model.pt"),  # joint had no DONE: its model.pt is written again first
         ("pr_curves.png:EIO", "pr_curves.png"),  # (ap_table.md and the final csv log: same writers, not repeated)
         ("metrics.json:ENOSPC", "metrics.json")]  # last: its presence marks the run finished


@pytest.mark.slow
def test_a_fault_at_every_write_of_a_run_then_reruns_end_as_an_uninterrupted_run(compose_cfg, tmp_path, write_fault,
                                                                                monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="frcnn")
    reference = recipes.run_recipe(compose_cfg(JOINT, tmp_path / "reference"), tmp_path / "reference")
    run_dir = tmp_path / "faulty"
    cfg = compose_cfg(JOINT, run_dir)
    for fault, target in CHAIN:
        write_fault(fault)
        with pytest.raises(WriteFailed) as failed:
            recipes.run_recipe(cfg, run_dir)
        assert failed.value.filename == str(run_dir / target), fault
        assert failed.value.errno == ERRNOS[fault.split(":")[1]]
        assert not list(run_dir.rglob("*.tmp")), fault
        assert (run_dir / ".frcnn.lock").read_text() == ""  # released on the error
        if target.endswith("last.ckpt"):  # the previous checkpoint is intact and resumable
            ckpt = torch.load(run_dir / target, map_location="cpu", weights_only=False)
            assert ckpt["global_step"] == 1
    monkeypatch.delenv(WRITE_FAULT_ENV)
    metrics = recipes.run_recipe(cfg, run_dir)
    assert f"stage joint: resuming from {run_dir / 'joint' / 'checkpoints' / 'last.ckpt'} (step 1)" in caplog.text
    final = torch.load(run_dir / "final" / "model.pt", map_location="cpu", weights_only=False)["state_dict"]
    expected = torch.load(tmp_path / "reference" / "final" / "model.pt", map_location="cpu",
                          weights_only=False)["state_dict"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    metrics.pop("stage_seconds"), reference.pop("stage_seconds")
    assert metrics == reference
    assert json.loads((run_dir / "metrics.json").read_text())["map_50"] == reference["map_50"]


def _train(run_dir, fault=None):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    env.pop(WRITE_FAULT_ENV, None)
    if fault:
        env[WRITE_FAULT_ENV] = fault
    cmd = ["train.py", *JOINT, "schedule.joint.max_steps=2", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={run_dir}"]
    return run_script(cmd, env=env)


@pytest.mark.slow
def test_train_stops_with_one_line_and_exit_74_then_a_rerun_resumes(compose_cfg, tmp_path):
    run_dir = tmp_path / "run"
    result = _train(run_dir, "last.ckpt:EIO:2")
    assert result.returncode == WRITE_ERROR_EXIT_STATUS, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    last = run_dir / "joint" / "checkpoints" / "last.ckpt"
    lines = [line for line in result.stderr.splitlines() if "Input/output error" in line]
    assert lines == [f"Write error: cannot write {last}: Input/output error (EIO). The previous version of the file, "
                     "if any, is intact and no temporary file was left; free space / fix the device, then rerun the "
                     "same command to resume"]
    assert not list(run_dir.rglob("*.tmp"))
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 1

    result = _train(run_dir)  # the device is fine again
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert f"stage joint: resuming from {last} (step 1)" in output
    assert "taking over the lock" not in output  # the failed run released it
    # the resumed run ends as an uninterrupted run of the same command does (in-process here: same numbers)
    reference = recipes.run_recipe(compose_cfg([*JOINT, "schedule.joint.max_steps=2", "trainer.enable_progress_bar=false"],
                                               tmp_path / "reference"), tmp_path / "reference")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("stage_seconds"), reference.pop("stage_seconds")
    assert metrics == reference
