"""Lightning callbacks of every stage: per-step seeding (exact resume), a checkpoint on SIGTERM,
and the fault-injection point of the kill-and-resume tests."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from frcnn.data.resumable import item_seed
from frcnn.utils.fault_injection import fault_point

log = logging.getLogger(__name__)


def seed_stage(seed: int, stage_name: str) -> None:
    """Seed torch's global RNG from (seed, stage) before a stage builds its model, so its random
    init does not depend on what ran before it in this process (a rerun skips finished stages)."""
    torch.manual_seed(item_seed([int(seed), zlib.crc32(stage_name.encode())]))


class StepSeed(L.Callback):
    """Seed torch's global RNG before every training step from (seed, stage, step, rank), so the
    random anchor / RoI sampling of a step is the same whether or not the stage was resumed."""

    def __init__(self, seed: int, stage_name: str):
        self.seed, self.stage_key = int(seed), zlib.crc32(stage_name.encode())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.manual_seed(item_seed([self.seed, self.stage_key, trainer.global_step, trainer.global_rank]))


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM (a scheduler's stop), Lightning finishes the current step and raises
    SIGTERMException; this writes ``last.ckpt`` at that step first, so a rerun resumes there."""

    def __init__(self, last_ckpt: Path):
        self.last_ckpt = Path(last_ckpt)
        self.saved_step: int | None = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            start_next_epoch_if_ended(trainer)
            trainer.save_checkpoint(str(self.last_ckpt))  # atomically: frcnn.lit.checkpoint_io
            self.saved_step = trainer.global_step


def start_next_epoch_if_ended(trainer) -> None:
    """Between two epochs, zero the batch counters of the epoch that ended, as Lightning does when
    the next one starts.

    A SIGTERM during an epoch's last step is acted on after the epoch ends (Lightning raises from the
    fit loop's epoch end): the epoch is counted complete, but the epoch loop still holds the ended
    epoch's batch count. Saved as it is, a resume reads that count as batches already done in the
    next epoch, ends that epoch after one step and trains on the batches of the epoch after it (the
    resumed weights differ from an uninterrupted run's; tests/test_resume_weights.py). A SIGTERM
    within an epoch (Lightning raises after the step) leaves an epoch in flight: nothing to do.
    """
    epochs = trainer.fit_loop.epoch_progress.current
    if epochs.completed != epochs.ready:  # an epoch in flight: its batch counts are the resume position
        return
    epoch_loop = trainer.fit_loop.epoch_loop
    epoch_loop.batch_progress.reset_on_run()
    epoch_loop.scheduler_progress.reset_on_run()
    epoch_loop.automatic_optimization.optim_progress.reset_on_run()


class FaultPoint(L.Callback):
    """Calls :func:`frcnn.utils.fault_injection.fault_point` (stage, step) before every training step."""

    def __init__(self, stage_name: str):
        self.stage_name = stage_name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        fault_point(self.stage_name, trainer.global_step)
