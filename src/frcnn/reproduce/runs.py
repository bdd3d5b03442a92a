"""The trainings and test-time evaluations behind the reproduced tables, each done once.

A training is identified by its composed config (seed aside): two rows that train the same
model, e.g. Table 9's λ=10 and Table 8's "3 scales, 3 ratios" (both the default), share one run
directory ``<out>/runs/<name>-<config hash>/seed<k>/``. A finished training (its metrics.json)
is read back; an interrupted one resumes from its last checkpoint (:func:`frcnn.engine.recipes.run_recipe`).
A test-time evaluation of a trained model (Table 2) is cached beside it in ``test_time/<name>.json``.
The unshared run (``recipe.unshared=true``) is steps 1-2 of the 4-step run of the same config: whichever of
the two trains second copies the other's finished stage 1 (:func:`reuse_first_stages`) instead of
training it again.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from frcnn.reproduce.tables import CONFIG_DIR, slug
from frcnn.utils.atomic_io import atomic_write_json

# The 4-step recipe's steps 1-2 (stage 1: RPN, its proposals, Fast R-CNN) are the unshared run whole: the
# same config but recipe.unshared trains them alike, bit for bit (each stage is seeded from (seed, stage)).
FIRST_STAGES = {"stage1_rpn": "DONE", "stage1_proposals": "proposals.safetensors", "stage1_det": "DONE"}
RANDOM_RANKING_SEED = 1000  # + the training seed: Table 2's random ranking is the same on a rerun


def compose(overrides: Sequence[str], run_dir: Path | str) -> dict:
    """conf/train.yaml with ``overrides`` and ``run_dir``, resolved to a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = hydra_compose("train", overrides=[*overrides, f"run_dir={run_dir}"])
    return OmegaConf.to_container(cfg, resolve=True)


def same_numbers(value: Any) -> Any:
    """``value`` with every number a float: ``rpn.lambda=10`` on the command line and the file's
    ``lambda: 10.0`` (or ratios ``[0.5,1,2]`` and ``[0.5, 1.0, 2.0]``) are one setting."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {key: same_numbers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [same_numbers(item) for item in value]
    return value


def config_digest(cfg: Mapping[str, Any], numbers_as_written: bool = False) -> str:
    """10 hex digits naming a training: the composed config without run_dir and seed (numbers
    compared by value, :func:`same_numbers`), and the version of a generated dataset's generator
    (a changed generator is other data, another run). ``numbers_as_written``: the digest before
    numbers were compared by value (2026-12-05), so that an earlier output dir is still read back."""
    from frcnn.data.build import generator_version

    identity = {k: v for k, v in cfg.items() if k not in ("run_dir", "seed")}
    if not numbers_as_written:
        identity = same_numbers(identity)
    version = generator_version(cfg.get("data", {}))
    if version is not None:
        identity["data_generator_version"] = version
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:200]


@dataclasses.dataclass
class Outcome:
    """A training's or evaluation's metrics (None if it failed), its status, where, and its
    compute seconds (a training's stage_seconds; an evaluation's wall time), also when read back."""

    metrics: dict | None
    status: str
    run_dir: Path
    seconds: float = 0.0
    data_cfg: dict | None = None  # the training's data node: its validation split scores test-time rows


class RunStore:
    """Trains and evaluates on demand under ``<out_dir>/runs``, never twice the same thing."""

    def __init__(self, out_dir: Path):
        self.runs_dir = Path(out_dir) / "runs"

    def run_dir(self, overrides: Sequence[str], seed: int, name: str) -> tuple[Path, dict]:
        """(the run directory of this training and seed, its composed config); an existing
        directory of the same config is reused whatever row first named it."""
        cfg = compose([*overrides, f"seed={seed}"], "UNSET")
        digest = config_digest(cfg)
        existing = []
        if self.runs_dir.exists():  # this digest's directory, else one named by the earlier digest
            existing = (sorted(self.runs_dir.glob(f"*-{digest}"))
                        or sorted(self.runs_dir.glob(f"*-{config_digest(cfg, numbers_as_written=True)}")))
        base = existing[0] if existing else self.runs_dir / f"{slug(name)}-{digest}"
        run_dir = base / f"seed{seed}"
        cfg["run_dir"] = str(run_dir)
        return run_dir, cfg

    def train(self, overrides: Sequence[str], seed: int, name: str) -> Outcome:
        """The metrics of one training: read back when finished, else trained (or resumed) now.
        A failure becomes the outcome's status (printed): one failed row must not hide the others."""
        start = time.perf_counter()
        try:
            run_dir, cfg = self.run_dir(overrides, seed, name)
        except Exception as exc:  # noqa: BLE001 - a bad override is this row's failure
            return failed(exc, self.runs_dir, start)
        return train_in(run_dir, cfg, f"{name} (seed {seed})")

    def evaluate_test_time(self, trained: Outcome, test: Mapping[str, Any], seed: int, name: str) -> Outcome:
        """``trained``'s model re-evaluated with ``rpn.test`` changed by ``test`` (paper Table 2:
        proposals at test time), on the split its run was evaluated on; cached in test_time/."""
        start = time.perf_counter()
        if trained.metrics is None:
            return Outcome(None, f"not evaluated: its training {trained.status}", trained.run_dir)
        path = trained.run_dir / "test_time" / f"{slug(name)}.json"
        if path.exists():
            metrics = json.loads(path.read_text())
            return Outcome(metrics, "ok", trained.run_dir, float(metrics.get("seconds", 0.0)))
        try:
            metrics = evaluate_with_test_settings(trained.run_dir, trained.data_cfg, test, RANDOM_RANKING_SEED + seed)
        except Exception as exc:  # noqa: BLE001
            return failed(exc, trained.run_dir, start)
        seconds = time.perf_counter() - start
        metrics = {**metrics, "test_time": dict(test), "seconds": seconds}  # as read back on a rerun
        atomic_write_json(metrics, path)
        return Outcome(metrics, "ok", trained.run_dir, seconds)


def failed(exc: BaseException, run_dir: Path, start: float) -> Outcome:
    status = f"failed: {first_line(exc)}"
    print(f"  {status}", file=sys.stderr, flush=True)
    return Outcome(None, status, run_dir, time.perf_counter() - start)


def twin_config(cfg: Mapping[str, Any]) -> dict | None:
    """The alternating run whose stage 1 is this one's: ``cfg`` with ``recipe.unshared`` flipped (None for
    another recipe)."""
    if cfg["recipe"]["name"] != "alternating":
        return None
    twin = copy.deepcopy(dict(cfg))
    twin["recipe"]["unshared"] = not cfg["recipe"].get("unshared", False)
    return twin


def reuse_first_stages(run_dir: Path, cfg: Mapping[str, Any]) -> Path | None:
    """Copy the finished stage 1 of ``cfg``'s twin run (:func:`twin_config`, same seed, under the same
    ``runs/``) into ``run_dir``, which then starts at stage 2 or, unshared, at its final model -> the twin's
    run dir, or None when there is nothing to copy (no twin, its stage 1 unfinished, or ``run_dir`` has begun
    its own stage 1)."""
    twin = twin_config(cfg)
    if twin is None or any((run_dir / stage).exists() for stage in FIRST_STAGES):
        return None
    for source in sorted(run_dir.parent.parent.glob(f"*-{config_digest(twin)}/{run_dir.name}")):
        if all((source / stage / marker).is_file() for stage, marker in FIRST_STAGES.items()):
            for stage in FIRST_STAGES:  # the stage's files; its checkpoints/ are Lightning's, not needed
                partial = run_dir / f"{stage}.copying"  # renamed when whole: a failed copy leaves no stage dir
                shutil.rmtree(partial, ignore_errors=True)
                shutil.copytree(source / stage, partial, ignore=shutil.ignore_patterns("checkpoints"))
                partial.rename(run_dir / stage)
            return source
    return None


def train_in(run_dir: Path, cfg: dict, name: str) -> Outcome:
    """Train ``cfg`` in ``run_dir`` (resuming an interrupted run; stage 1 copied from its twin when that
    finished it, :func:`reuse_first_stages`), or read its metrics.json back when it finished before; a failure
    is the outcome's status."""
    start = time.perf_counter()
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        return Outcome(metrics, "ok", run_dir, run_seconds(metrics), cfg["data"])
    from frcnn.config.checks import validate_config
    from frcnn.engine.recipes import run_recipe

    print(f"  training {name} -> {run_dir}", flush=True)
    try:
        validate_config(cfg)
        twin = reuse_first_stages(run_dir, cfg)
        if twin is not None:
            print(f"  stage 1 (steps 1-2) copied from {twin}", flush=True)
        metrics = run_recipe(cfg, run_dir)
    except Exception as exc:  # noqa: BLE001
        return failed(exc, run_dir, start)
    return Outcome(metrics, "ok", run_dir, run_seconds(metrics), cfg["data"])


def run_seconds(metrics: Mapping[str, Any]) -> float:
    """A finished run's training and evaluation seconds (its stage_seconds), the same when read back."""
    return float(sum(metrics.get("stage_seconds", {}).values()))


def evaluate_with_test_settings(run_dir: Path, data_cfg: Mapping[str, Any], test: Mapping[str, Any], seed: int) -> dict:
    """VOC AP of ``<run_dir>/final/model.pt`` on the validation split of ``data_cfg`` (its run's
    data node) with the RPN's test settings changed by ``test`` (keys of rpn.test); ``seed`` seeds
    the random ranking."""
    import torch

    from frcnn.evaluation.eval_data import build_eval_loader, evaluation_data_cfg
    from frcnn.evaluation.evaluate import evaluate_split
    from frcnn.inference.predictor import Detector
    from frcnn.modeling.rpn import ProposalSettings

    allowed = [field.name for field in dataclasses.fields(ProposalSettings) if field.name != "min_size_px"]
    unknown = sorted(set(test) - set(allowed))
    if unknown:
        raise ValueError(f"test-time setting(s) {unknown} are not rpn.test keys; allowed: {allowed}")
    checkpoint = run_dir / "final" / "model.pt"
    detector = Detector.from_checkpoint(checkpoint, "cpu")
    model = detector.model
    model.rpn.test_proposals = dataclasses.replace(model.rpn.test_proposals, **test)  # validated there
    loader = build_eval_loader(evaluation_data_cfg(data_cfg, checkpoint, None), "val", 4)
    torch.manual_seed(seed)
    metrics, _ = evaluate_split(model, loader, detector.class_names, "cpu", top_ns=(), coco=False)
    return {key: metrics[key] for key in ("map_50", "map_voc07", "num_images", "num_detections")}
