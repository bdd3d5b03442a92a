"""Resuming a run: which checkpoint a stage resumes from, what a rerun of a finished run does,
and the refusal to mix configs in one run directory.

- :func:`resume_checkpoint`: the newest *readable* Lightning checkpoint of a stage
  (``checkpoints/last.ckpt``, or a SLURM auto-requeue ``hpc_ckpt_<n>.ckpt``); a file that
  cannot be loaded (half-written, truncated) is renamed ``<name>.corrupt`` and never used.
- :func:`check_run_config`: the run dir remembers the config it was started with
  (``run_config.json``); a rerun with other values is refused naming the keys.
- :func:`finished_metrics`: a run whose ``metrics.json`` and ``final/model.pt`` exist is done.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from frcnn.checkpoint.safe_load import read_torch_file
from frcnn.errors import ConfigError
from frcnn.utils.atomic_io import atomic_write_json

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "run_config.json"
# Keys that may differ between the invocations of one run: they change how a run is observed,
# where it is, or how often it checkpoints, never what it computes.
RESUME_FREE_KEYS = (
    "run_dir", "logger", "trainer.enable_progress_bar", "trainer.log_every_n_steps", "data.num_workers",
    "data.pin_memory", "recipe.checkpoint_every_n_steps", "paper_result", "paper_table",
)


class RunConfigMismatch(ConfigError):
    """The run dir holds stages trained under another config."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _comparable(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config as {dotted key: value}, without the keys a resume may change (JSON round trip)."""
    flat = _flatten(json.loads(json.dumps(cfg, default=str)))
    return {k: v for k, v in flat.items()
            if not any(k == free or k.startswith(free + ".") for free in RESUME_FREE_KEYS)}


def check_run_config(cfg: Mapping[str, Any], run_dir: str | Path) -> None:
    """Record the config in a fresh run dir; refuse a different one in a used run dir.

    Raises RunConfigMismatch naming every changed key with its old and new value.
    """
    path = Path(run_dir) / RUN_CONFIG_FILE
    current = _comparable(cfg)
    if not path.exists():
        atomic_write_json(current, path)
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunConfigMismatch(f"{path} is unreadable ({exc}); it records the config this run dir was started "
                                "with: restore it or start a new run dir") from exc
    changed = sorted(set(recorded) | set(current))
    changed = [k for k in changed if recorded.get(k, "<absent>") != current.get(k, "<absent>")]
    if changed:
        shown = "; ".join(f"{k}: {recorded.get(k, '<absent>')!r} -> {current.get(k, '<absent>')!r}"
                          for k in changed[:10])
        more = f" (and {len(changed) - 10} more)" if len(changed) > 10 else ""
        raise RunConfigMismatch(
            f"run dir {Path(run_dir)} was started with another config: {shown}{more}. Stages trained under "
            "different configs must not be mixed: rerun with the original values to resume, or give a new "
            "run dir (hydra.run.dir=...) for the new config")


def finished_metrics(run_dir: str | Path) -> dict | None:
    """The metrics of a finished run (metrics.json and final/model.pt present), else None."""
    run_dir = Path(run_dir)
    metrics, model = run_dir / "metrics.json", run_dir / "final" / "model.pt"
    if not (metrics.is_file() and model.is_file()):
        return None
    try:
        return json.loads(metrics.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("%s is unreadable; the run is evaluated again", metrics)
        return None


def _readable_step(path: Path) -> int | None:
    """global_step of a Lightning checkpoint, or None (file moved aside) when it cannot be loaded."""
    try:
        # restricted reader (tensors and plain values; tensors mapped, not read): a checkpoint holding
        # pickled objects is refused like a damaged one, and Lightning then resumes with weights_only=True
        payload = read_torch_file(path, "checkpoint", mmap=True)
        step = int(payload["global_step"])
        if "state_dict" not in payload or "optimizer_states" not in payload:
            raise KeyError("state_dict / optimizer_states")
        return step
    except Exception as exc:  # noqa: BLE001 - any failure means: do not resume from it
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        log.warning("%s is not a usable checkpoint (%s: %s), half-written or damaged; moved to %s and not used",
                    path, type(exc).__name__, exc, aside)
        return None


def resume_checkpoint(stage_dir: str | Path) -> tuple[Path | None, int]:
    """(checkpoint to resume the stage from, its global step); (None, 0) to start the stage afresh.

    Candidates: ``<stage>/checkpoints/last.ckpt`` and SLURM auto-requeue ``<stage>/hpc_ckpt_*.ckpt``;
    the readable one with the highest global step wins.
    """
    stage_dir = Path(stage_dir)
    candidates = [stage_dir / "checkpoints" / "last.ckpt", *sorted(stage_dir.glob("hpc_ckpt_*.ckpt"))]
    best: tuple[Path | None, int] = (None, 0)
    for path in candidates:
        if not path.is_file():
            continue
        step = _readable_step(path)
        if step is not None and (best[0] is None or step > best[1]):
            best = (path, step)
    return best
