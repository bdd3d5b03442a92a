"""Experiment loggers for Lightning: W&B (offline by itself when it cannot go online), CSV,
TensorBoard, or none."""

from __future__ import annotations

import logging
import netrc
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LOGGER_NAMES = ("wandb", "csv", "tensorboard", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")
WANDB_ENV_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # what wandb accepts in WANDB_MODE
log = logging.getLogger(__name__)


def wandb_has_credentials() -> bool:
    """True when an API key is in WANDB_API_KEY or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_reachable(timeout_s: float = 2.0) -> bool:
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host.split(":")[0], 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_wandb_mode(requested: str) -> str:
    """``auto``: online only with credentials and a reachable server, else offline (never a
    prompt: W&B asks for a key interactively when online without one)."""
    if requested not in WANDB_MODES:
        raise ValueError(f"logger.mode={requested!r}; allowed: {WANDB_MODES}")
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode is not None and not env_mode.strip():
        del os.environ["WANDB_MODE"]  # set but empty (`WANDB_MODE= python train.py`): W&B itself would fail on ''
    elif env_mode is not None and env_mode not in WANDB_ENV_MODES:
        raise ValueError(f"environment variable WANDB_MODE={env_mode!r}; allowed: {WANDB_ENV_MODES} (or unset it)")
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"]
    if wandb_has_credentials() and wandb_reachable():
        return "online"
    return "offline"


WANDB_GROUP_MAX_CHARS = 128  # W&B refuses longer group names


def sweep_group_name(sweep_dir: str | Path, cwd: str | Path | None = None) -> str:
    """One W&B group per Hydra multirun: the sweep dir, relative to the launch directory when
    inside it (``multirun/2026-11-25/09-30-00``), keeping the last 128 characters."""
    path = Path(sweep_dir)
    if cwd is not None and path.is_absolute():
        try:
            path = path.relative_to(Path(cwd))
        except ValueError:
            pass
    return path.as_posix()[-WANDB_GROUP_MAX_CHARS:]


def sweep_run_name(override_dirname: str, job_num: int | None) -> str:
    """Run name of one sweep job: its swept overrides (Hydra's ``job.override_dirname``,
    e.g. ``rpn.lambda=10``), else its job number; each stage then adds ``/<stage>``."""
    return override_dirname or (f"job{job_num}" if job_num is not None else "job")


def build_logger(logger_cfg: Mapping[str, Any], save_dir: str | Path, run_name: str, job_type: str,
                 config: dict | None = None, group: str | None = None, resume_step: int = 0):
    """A Lightning logger for one stage, or False for ``logger=none``.

    ``resume_step`` > 0 (a stage resumed from a checkpoint at that step): the CSV logger keeps the
    rows its metrics.csv already holds for earlier steps (Lightning's CSV writer would delete the
    file); rows of later steps, logged after that checkpoint, are dropped: they are logged again.
    """
    name = logger_cfg["name"]
    if name not in LOGGER_NAMES:
        raise ValueError(f"logger={name!r}; allowed: {LOGGER_NAMES}")
    save_dir = Path(save_dir)
    if name == "none":
        return False
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        logger = CSVLogger(save_dir=str(save_dir), name="csv", version=job_type)
        if resume_step > 0 and rank_zero_only.rank == 0:  # other ranks' experiment is a stub
            kept = read_csv_rows_before(Path(logger.log_dir) / "metrics.csv", resume_step)
            logger.experiment.metrics.extend(kept)  # the writer (created here) deleted the file; its next save rewrites them
        if rank_zero_only.rank == 0:  # (after the read above: creating the writer deletes metrics.csv)
            make_csv_saves_atomic(logger.experiment)
        return logger
    if name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(save_dir), name="tensorboard", version=job_type)
    from lightning.pytorch.loggers import WandbLogger

    mode = resolve_wandb_mode(str(logger_cfg.get("mode", "auto")))
    os.environ.setdefault("WANDB_SILENT", "true")
    if mode == "offline":
        log.warning("W&B: no credentials or no network, logging offline under %s/wandb", save_dir)
    logger = WandbLogger(
        project=logger_cfg.get("project", "frcnn"),
        entity=logger_cfg.get("entity"),
        group=logger_cfg.get("group") or group,
        job_type=job_type,
        name=f"{logger_cfg.get('run_name') or run_name}/{job_type}",
        save_dir=str(save_dir),
        mode=mode,
        config=config,
    )
    # Lightning always passes wandb.init(anonymous=None), which recent wandb answers on the console
    # with "The anonymous setting has no effect..."; the run is created lazily, so drop the key here.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    return logger


def make_csv_saves_atomic(writer) -> None:
    """Lightning's CSV writer (``ExperimentWriter``) appends its new rows to metrics.csv in place, and
    rewrites the file in place when a new column appears: a full disk or a failing device midway leaves
    a torn row or a truncated file. Its ``save`` is replaced by one that writes the whole file (the rows
    already in it, then the new ones, the header Lightning's would have: every key so far, sorted) beside
    it and renames it over (:func:`frcnn.utils.atomic_io.atomic_write`): the file is the previous version
    or the new one, never a mix; a failed save raises ``WriteFailed`` naming metrics.csv and keeps its rows
    for the next save. Rewriting costs a read of the file per save (one per ``trainer.log_every_n_steps``
    flush of Lightning's, a few hundred kB at most)."""
    import csv
    import io

    from frcnn.utils.atomic_io import atomic_write_text

    def save() -> None:
        if not writer.metrics:
            return
        keys = sorted(set(writer.metrics_keys).union(*writer.metrics))
        path = Path(writer.metrics_file_path)
        rows = []
        if path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        text = io.StringIO()
        table = csv.DictWriter(text, fieldnames=keys)
        table.writeheader()
        table.writerows(rows)
        table.writerows(writer.metrics)
        atomic_write_text(text.getvalue(), path)
        writer.metrics_keys[:] = keys
        writer.metrics = []  # written: only now (a failed save keeps them)

    writer.save = save


def read_csv_rows_before(path: Path, step: int) -> list[dict]:
    """Rows of a Lightning metrics.csv whose ``step`` is < ``step`` (empty cells left out)."""
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    return [row for row in rows if "step" in row and int(float(row["step"])) < step]


def finish_logger(logger) -> Path | None:
    """Close a W&B run -> its folder when it ran offline, else None. Nothing is printed: a run's closing
    summary (frcnn.engine.run_report.closing_summary) gives one ``wandb sync`` command for all its stages."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(logger, WandbLogger):
        return None
    import wandb

    run = logger.experiment
    run_dir = Path(run.dir).parent if getattr(run, "dir", None) else None
    offline = bool(getattr(run, "offline", False))
    wandb.finish()
    return run_dir if offline else None


def flat_scalar_metrics(metrics: Mapping[str, Any], prefix: str = "final") -> dict[str, float]:
    """The numbers of a metrics.json as ``{"final/map_50": ..., "final/ap_per_class/circle": ...}``
    (nested dicts joined with "/"; lists and strings left out)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            flat.update(flat_scalar_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def log_final_results(logger, metrics: Mapping[str, Any], figures: Mapping[str, Path], pictures: list,
                      step: int = 0) -> None:
    """The final evaluation in the logger of the ``final`` job: the metrics as logged values (and
    as the W&B run summary), the PR-curve and proposal-recall plots and detection pictures as images
    (CSV: PNG files beside its metrics.csv)."""
    if not logger:
        return
    from lightning.pytorch.loggers import WandbLogger

    from frcnn.lit.val_images import log_pictures

    flat = flat_scalar_metrics(metrics)
    logger.log_metrics(flat, step=step)
    if isinstance(logger, WandbLogger):
        logger.experiment.summary.update(flat)
        for name, path in figures.items():
            logger.log_image(key=f"final/{Path(name).stem}", images=[str(path)], step=step)
    if pictures:
        log_pictures(logger, pictures, "final/detections", step, None)
    logger.save()
