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
            trainer.save_checkpoint(str(self.last_ckpt))  # atomically: frcnn.lit.checkpoint_io
            self.saved_step = trainer.global_step


class FaultPoint(L.Callback):
    """Calls :func:`frcnn.utils.fault_injection.fault_point` (stage, step) before every training step."""

    def __init__(self, stage_name: str):
        self.stage_name = stage_name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        fault_point(self.stage_name, trainer.global_step)
