"""An exponential moving average of the weights (``recipe.ema_decay``), by Lightning's WeightAveraging.

Not in the paper (its presets leave the key null). After every optimizer step the average moves towards the
trained weights: ``ema = decay * ema + (1 - decay) * w`` (torch.optim.swa_utils' EMA), the first step copying
them. Validations score the average, and the stage ends with it (model.pt, the next stage, final/model.pt).

Lightning's callback swaps the average in for a validation and back at the validation epoch's end, before the
validation's checkpoints are written; a weights-only ``best.ckpt`` (``recipe.keep_best``) would then hold the
trained weights, not the scored ones. Here the average stays in place until the next training batch starts,
so every checkpoint written after a validation holds what it scored; a full checkpoint (``last.ckpt``) also
holds the trained weights and the average's step count, and a resumed stage goes on with both.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightEMA(WeightAveraging):
    """EMA of parameters and buffers after each optimizer step, with ``decay`` in (0, 1)."""

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        super().__init__(use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self._average_in_place = False  # the module holds the average (from a validation until the next batch)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None  # every optimizer step, never again at an epoch's end

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a validation after fit (keep_best's of the last step) finds the average in the module for good
        if self._average_model is not None and not self._average_in_place and trainer.state.fn == TrainerFn.FITTING:
            self._swap_models(pl_module)
            self._average_in_place = True

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # the average stays until the next training batch: the validation's checkpoints hold it

    def _restore_trained(self, pl_module: L.LightningModule) -> None:
        if self._average_in_place:
            self._swap_models(pl_module)
            self._average_in_place = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._restore_trained(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_trained(pl_module)
        super().on_train_end(trainer, pl_module)  # the module takes the average for good

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """``state_dict``: the average; ``current_model_state``: the trained weights (Lightning's layout)."""
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._average_in_place:  # the module holds the average, the AveragedModel the trained weights: the
            # parent filed each under the other's key
            checkpoint["state_dict"], checkpoint["current_model_state"] = (checkpoint["current_model_state"],
                                                                           checkpoint["state_dict"])

def weight_averaging_callbacks(recipe_cfg: dict[str, Any]) -> list[L.Callback]:
    """``[WeightEMA(recipe.ema_decay)]``, or none when the key is null or absent."""
    decay = recipe_cfg.get("ema_decay")
    return [] if decay is None else [WeightEMA(float(decay))]
