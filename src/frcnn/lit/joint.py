"""Approximate joint training (paper §3.2 ii) as a LightningModule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from frcnn.evaluation.voc_ap import DetectionEvaluator
from frcnn.factory import build_model
from frcnn.lit.optim import build_optimizer


class JointModule(L.LightningModule):
    """One network, RPN loss + Fast R-CNN loss summed; validation mAP each validation epoch.

    model_cfg: {"backbone", "rpn", "roi_head"} config nodes as plain dicts.
    """

    def __init__(self, model_cfg: Mapping[str, Any], optim_cfg: Mapping[str, Any], lr_steps: list[int],
                 class_names: list[str]):
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.model = build_model(model_cfg, num_classes=len(class_names))
        self.evaluator = DetectionEvaluator(num_classes=len(class_names), class_names=self.class_names)

    def forward(self, images):
        return self.model(images)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.model(images, targets)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=len(images), prog_bar=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=len(images))
        return losses["total"]

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        detections = self.model(images)
        self.evaluator.update([{k: v.cpu() for k, v in d.items()} for d in detections],
                              [{k: v.cpu() if torch.is_tensor(v) else v for k, v in t.items()} for t in targets])

    def on_validation_epoch_end(self):
        metrics = self.evaluator.compute()
        self.evaluator.reset()
        self.log("val/map_50", metrics["map_50"], sync_dist=True)
        self.log("val/map_voc07", metrics["map_voc07"], sync_dist=True)

    def configure_optimizers(self):
        return build_optimizer(self.model, self.hparams.optim_cfg, self.hparams.lr_steps)
