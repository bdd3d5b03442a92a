"""A training stage's progress: Lightning's tqdm bar in a terminal, a progress line every N seconds
when stdout is piped or a file (frcnn.utils.progress), global rank 0 only.

Both count the stage's optimiser steps (``step k/max_steps``), not the epoch's batches, so the
ETA is the stage's; a resumed stage starts at its checkpoint's step and its rate counts the steps
of this process only. A line reads

    [..][frcnn.progress][INFO] - stage1_rpn: step 120/500 (24%), loss 0.412, 9.8 images/s, elapsed 1m02s, ETA 3m17s
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from frcnn.utils.progress import ProgressLines, stdout_is_terminal


def step_loss(outputs: Any) -> torch.Tensor | None:
    """The loss a training step returned (Lightning passes ``{"loss": tensor}``; None when skipped)."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss.detach() if isinstance(loss, torch.Tensor) else None


def batch_images(batch: Any) -> int:
    """Images in a (images, targets) batch."""
    return len(batch[0]) if isinstance(batch, (list, tuple)) and batch else 0


class StageProgressLines(L.Callback):
    """A progress line at most every ``every_s`` s of training: stage, step / max, mean loss since the
    last line, images/s, ETA; during validation inside a stage, the batches done."""

    def __init__(self, stage_name: str, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.stage_name, self.every_s, self.clock = stage_name, float(every_s), clock
        self.lines: ProgressLines | None = None
        self.val_lines: ProgressLines | None = None
        self.images, self.loss_sum, self.loss_count = 0, None, 0

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self.lines = ProgressLines(self.stage_name, int(trainer.max_steps), "step", self.every_s,
                                   done_at_start=trainer.global_step, clock=self.clock)
        self.images, self.loss_sum, self.loss_count = 0, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.lines is None:
            return
        self.images += batch_images(batch)
        loss = step_loss(outputs)
        if loss is not None:  # summed on the device; read (one sync) only when a line is printed
            self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
            self.loss_count += 1
        self.lines.done = trainer.global_step
        if self.lines.due():
            self.print_line()

    def print_line(self) -> None:
        """The line of the steps so far: the mean loss since the last line, images/s since the start."""
        fields = {"loss": f"{float(self.loss_sum) / self.loss_count:.4g}"} if self.loss_count else {}
        elapsed = self.clock() - self.lines.start
        self.lines.print_line(fields, rate=self.images / elapsed if elapsed > 0 else None, rate_unit="images")
        self.loss_sum, self.loss_count = None, 0

    def on_train_end(self, trainer, pl_module) -> None:
        if self.lines is not None and self.lines.lines and self.lines.last_done != self.lines.done:
            self.print_line()  # where the stage ended, when it was long enough to print a line before
        self.lines = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            batches = trainer.num_val_batches
            total = sum(batches) if isinstance(batches, list) else batches
            self.val_lines = ProgressLines(f"{self.stage_name} validation", int(total), "batches", self.every_s,
                                           clock=self.clock)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.val_lines is not None:
            self.val_lines.update(self.val_lines.done + 1)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.val_lines is not None:
            self.val_lines.close()
        self.val_lines = None


class StageProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar over the whole stage: described by the stage's name, ``step/max_steps`` (not
    the epoch's batches), the step's loss as postfix."""

    def __init__(self, stage_name: str):
        super().__init__()
        self.stage_name = stage_name

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # the first epoch of this fit: one bar for all its epochs
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = trainer.global_step  # resumed: the rate counts this process's steps
            bar.set_description(self.stage_name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            loss = step_loss(outputs)
            if loss is not None:
                bar.set_postfix(loss=f"{float(loss):.4g}", refresh=False)
            bar.n = trainer.global_step
            bar.refresh()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass  # the bar runs on across epochs; Lightning's would show its version number here

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def stage_progress(stage_name: str, trainer_cfg: Mapping[str, Any]) -> tuple[list[L.Callback], bool]:
    """(callbacks, Trainer's enable_progress_bar) of a stage: the bar in a terminal, the lines when
    stdout is not one, neither with ``trainer.enable_progress_bar=false``."""
    if not trainer_cfg.get("enable_progress_bar", True):
        return [], False
    if stdout_is_terminal():
        return [StageProgressBar(stage_name)], True
    return [StageProgressLines(stage_name, float(trainer_cfg.get("progress_every_s", 30)))], False
