"""Joint training (paper §3.2 ii approximate, iii non-approximate) as a LightningModule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

from frcnn.data.transforms import image_scales
from frcnn.lit.guards import LossGuard
from frcnn.lit.optim import build_optimizer
from frcnn.lit.validation import ValidationMAP
from frcnn.modeling.build import build_model


class JointModule(ValidationMAP, L.LightningModule):
    """One network, RPN loss + Fast R-CNN loss summed; validation mAP each validation epoch.

    model_cfg: {"backbone", "rpn", "roi_head"} config nodes as plain dicts; ``roi_head.warp_boxes``
    makes it non-approximate (frcnn.engine.recipes.model_config).
    """

    def __init__(self, model_cfg: Mapping[str, Any], optim_cfg: Mapping[str, Any], lr_steps: list[int],
                 class_names: list[str]):
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.model = build_model(model_cfg, num_classes=len(class_names))
        self.loss_guard = LossGuard("error", "joint")  # the recipe sets recipe.on_nonfinite_loss

    def forward(self, images):
        return self.model(images)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.model(images, targets, image_scales=image_scales(images, targets))  # min proposal size: orig. px
        if not self.loss_guard.check(losses, self.global_step):
            return None  # skipped: no optimiser step
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=len(images), prog_bar=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=len(images))
        return losses["total"]

    def configure_optimizers(self):
        return build_optimizer(self.model, self.hparams.optim_cfg, self.hparams.lr_steps)
