"""Model selection on the validation split, by Lightning's own callbacks: ``recipe.keep_best`` keeps the
best validation checkpoint of a stage (ModelCheckpoint) and the stage ends with its weights;
``recipe.early_stop_patience`` ends a stage after that many validations without improvement (EarlyStopping).

Both callbacks keep their state (best score so far, validations without improvement) in the stage's
``last.ckpt``, rewritten after every validation (:class:`LastCheckpointAfterValidation`), so a stage stopped
and resumed selects as the uninterrupted one would. A stage whose last step falls between validations (its
length not a multiple of ``recipe.val_every_n_epochs`` epochs) validates that step once more after training
(Lightning's ``Trainer.validate``), so the weights it ends with are always a candidate. What the stage ended
with is written to ``<stage>/best.json`` for metrics.json, also when a rerun finds the stage finished.

A selection uses the split it is scored on: the chosen checkpoint's validation score is an optimistic
estimate of what it scores on new pictures (metrics.json says so). The paper trains fixed schedules and
selects nothing; its presets leave both keys null.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from frcnn.checkpoint.safe_load import read_torch_file
from frcnn.lit.validation import ValidationMAP

KEEP_BEST_METRICS = ("map_50", "map_voc07")  # recipe.keep_best: the validation metrics ValidationMAP logs
BEST_CHECKPOINT_NAME = "best"  # <stage>/checkpoints/best.ckpt
SELECTION_FILE = "best.json"
log = logging.getLogger(__name__)


def monitored_metric(recipe_cfg: Mapping[str, Any]) -> str | None:
    """The logged key a stage selects or stops on: ``val/<recipe.keep_best>``; with early stopping alone,
    ``val/map_50``; None when neither key is set."""
    metric = recipe_cfg.get("keep_best") or ("map_50" if recipe_cfg.get("early_stop_patience") else None)
    if metric is None:
        return None
    if metric not in KEEP_BEST_METRICS:
        raise ValueError(f"recipe.keep_best={metric!r}; allowed: {list(KEEP_BEST_METRICS)} or null")
    return f"{ValidationMAP.val_prefix}/{metric}"


class LastCheckpointAfterValidation(Checkpoint):
    """Writes ``last.ckpt`` after every validation, with the selection state it changed.

    Lightning writes a step checkpoint (``recipe.checkpoint_every_n_steps``) of the step that ends an epoch
    before that epoch's validation, and a stage resumed from it does not validate that step again: its score
    would be lost to the selection (a later, worse step kept as the best; tests/test_keep_best.py). A
    ``Checkpoint`` subclass, so Lightning runs it after the ModelCheckpoint / EarlyStopping updates."""

    def __init__(self, last_ckpt: Path):
        self.last_ckpt = Path(last_ckpt)
        self.validated_step: int | None = None  # the global step of the last validation during fit

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.validated_step = int(trainer.global_step)
        trainer.save_checkpoint(str(self.last_ckpt))  # atomically: frcnn.lit.checkpoint_io

    def state_dict(self) -> dict[str, Any]:
        return {"validated_step": self.validated_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validated_step = state_dict.get("validated_step")


def selection_callbacks(recipe_cfg: Mapping[str, Any], checkpoint_dir: Path) -> list[L.Callback]:
    """The callbacks of a stage that validates: the best checkpoint (weights only, ``best.ckpt``, replaced by a
    strictly better validation: on a tie the earlier step stays), early stopping (``patience`` validations
    without a strictly better score) and ``last.ckpt`` after each validation; empty when both keys are null."""
    monitor = monitored_metric(recipe_cfg)
    callbacks: list[L.Callback] = []
    if monitor is None:
        return callbacks
    if recipe_cfg.get("keep_best"):
        callbacks.append(ModelCheckpoint(
            dirpath=checkpoint_dir, filename=BEST_CHECKPOINT_NAME, monitor=monitor, mode="max", save_top_k=1,
            save_weights_only=True, save_on_train_epoch_end=False, auto_insert_metric_name=False,
            enable_version_counter=False))  # a resumed stage overwrites best.ckpt, never writes best-v1.ckpt
    patience = recipe_cfg.get("early_stop_patience")
    if patience:
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=int(patience),
                                       check_on_train_epoch_end=False))
    return [*callbacks, LastCheckpointAfterValidation(checkpoint_dir / "last.ckpt")]


def _selection_callback(trainer: L.Trainer, kind: type) -> Any:
    return next((c for c in trainer.callbacks if isinstance(c, kind) and c.monitor is not None), None)


def finish_selection(trainer: L.Trainer, module: L.LightningModule, stage_name: str,
                     datamodule: L.LightningDataModule) -> dict | None:
    """After a stage's fit: with keep_best, validate the last step if training ended between validations, then
    load the best checkpoint's weights into ``module`` unless the last step scored strictly better; return the
    record of the selection (also what early stopping did); None when the stage selected nothing."""
    best, early = _selection_callback(trainer, ModelCheckpoint), _selection_callback(trainer, EarlyStopping)
    if best is None and early is None:
        return None
    monitor = (best or early).monitor
    record: dict[str, Any] = {"stage": stage_name, "metric": monitor, "last_step": int(trainer.global_step),
                              "stopped_early": bool(early is not None and early.stopped_epoch > 0)}
    if early is not None:
        record["early_stop_patience"] = int(early.patience)
    if best is None:
        return record
    tracker = next(c for c in trainer.callbacks if isinstance(c, LastCheckpointAfterValidation))
    has_best = bool(best.best_model_path) and Path(best.best_model_path).is_file()
    if tracker.validated_step != trainer.global_step:  # training ended between two validations
        last_score = float(trainer.validate(module, datamodule=datamodule, verbose=False)[0][monitor])
        log.info("stage %s: the last step (%d), not validated during training, scores %s %.4f", stage_name,
                 trainer.global_step, monitor, last_score)
        if not has_best or last_score > float(best.best_model_score):
            record.update(best_step=int(trainer.global_step), best_score=last_score)
            return record  # the weights the stage ended with
    if not has_best:
        raise RuntimeError(f"stage {stage_name}: its best validation checkpoint {best.best_model_path!r} is gone "
                           "(deleted, or the run dir moved since it was written): rerun the stage in a new run dir")
    payload = read_torch_file(best.best_model_path, "best validation checkpoint")
    module.load_state_dict(payload["state_dict"])
    record.update(best_step=int(payload["global_step"]), best_score=float(best.best_model_score))
    log.info("stage %s: keeping the best validation checkpoint, step %d of %d (%s %.4f)", stage_name,
             record["best_step"], record["last_step"], monitor, record["best_score"])
    return record


def read_selection(stage_dir: Path) -> dict | None:
    """The record :func:`finish_selection` left in a finished stage's folder, or None."""
    path = Path(stage_dir) / SELECTION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def selection_summary(record: Mapping[str, Any]) -> dict:
    """metrics.json's ``model_selection``: the record and what it means for the scores beside it."""
    summary = dict(record)
    if record.get("best_step") is not None:
        summary["note"] = (
            f"final/model.pt is stage {record['stage']}'s checkpoint of step {record['best_step']} (of "
            f"{record['last_step']}), the best by {record['metric']} on the validation split these scores are "
            "measured on: they are optimistic for that reason (the split chose the step); judge the detector on "
            "pictures the selection did not see")
    return summary
