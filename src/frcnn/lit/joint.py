"""Joint training (paper §3.2 ii approximate, iii non-approximate) as a LightningModule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from torch import Tensor

from frcnn.data.transforms import image_scales
from frcnn.lit.guards import LossGuard
from frcnn.lit.optim import build_optimizer
from frcnn.lit.validation import ValidationMAP
from frcnn.modeling.build import build_model


class JointModule(ValidationMAP, L.LightningModule):
    """One network, RPN loss + Fast R-CNN loss summed; validation mAP each validation epoch.

    model_cfg: {"backbone", "rpn", "roi_head"} config nodes as plain dicts; ``roi_head.warp_boxes``
    makes it non-approximate (frcnn.engine.recipes.model_config).

    ``images_per_pass``: None, one forward / backward pass over the mini-batch; n, the mini-batch is
    split into passes of n images whose losses are averaged, so one SGD update averages the passes'
    gradients, each pass sampling its own anchors and RoIs as a mini-batch of n images would (Caffe's
    ``iter_size``, ``schedule.joint.batches_per_update``: the authors' end2end solver averages 2 passes
    of 1 image). One data-loader batch is still one training step, so exact resume is unchanged.
    """

    def __init__(self, model_cfg: Mapping[str, Any], optim_cfg: Mapping[str, Any], lr_steps: list[int],
                 class_names: list[str], images_per_pass: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.model = build_model(model_cfg, num_classes=len(class_names))
        self.loss_guard = LossGuard("error", "joint")  # the recipe sets recipe.on_nonfinite_loss

    def forward(self, images):
        return self.model(images)

    def update_losses(self, images, targets) -> dict[str, Tensor]:
        """The losses of one SGD update: the model's on the whole mini-batch, or the mean over its passes
        of ``images_per_pass`` images (the last pass of an epoch's last batch may hold fewer)."""
        size = self.hparams.get("images_per_pass") or len(images)
        passes = [self.model(images[i:i + size], targets[i:i + size],  # min proposal size: original-image px
                             image_scales=image_scales(images[i:i + size], targets[i:i + size]))
                  for i in range(0, len(images), size)]
        if len(passes) == 1:
            return passes[0]
        return {name: sum(losses[name] for losses in passes) / len(passes) for name in passes[0]}

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.update_losses(images, targets)
        if not self.loss_guard.check(losses, self.global_step):
            return None  # skipped: no optimiser step
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=len(images), prog_bar=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=len(images))
        return losses["total"]

    def configure_optimizers(self):
        return build_optimizer(self.model, self.hparams.optim_cfg, self.hparams.lr_steps)
