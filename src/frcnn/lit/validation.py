"""Validation mAP during training, shared by the joint module and the final detector stage."""

from __future__ import annotations

import torch

from frcnn.data.transforms import image_scales
from frcnn.evaluation.voc_ap import DetectionEvaluator


class ValidationMAP:
    """LightningModule mix-in: VOC AP@0.5 (all-point ``map_50`` and 11-point ``map_voc07``) of
    the whole detector on the validation split, logged as ``<prefix>/map_50`` at the end of
    each validation epoch. ``validation_step`` returns the detections, so callbacks (the
    validation pictures) can draw them. Needs ``self.model`` and ``self.class_names``."""

    val_prefix = "val"

    def _evaluator(self) -> DetectionEvaluator:
        if getattr(self, "_val_evaluator", None) is None:
            self._val_evaluator = DetectionEvaluator(num_classes=len(self.class_names), class_names=self.class_names)
        return self._val_evaluator

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        # eval mode: list of {"boxes" [D, 4], "labels" [D], "scores" [D]}; min proposal size in original px
        detections = self.model(images, image_scales=image_scales(images, targets))
        self._evaluator().update([{k: v.cpu() for k, v in d.items()} for d in detections],
                                 [{k: v.cpu() if torch.is_tensor(v) else v for k, v in t.items()} for t in targets])
        return detections

    def on_validation_epoch_end(self):
        metrics = self._evaluator().compute()
        self._evaluator().reset()
        self.log(f"{self.val_prefix}/map_50", metrics["map_50"], sync_dist=True)
        self.log(f"{self.val_prefix}/map_voc07", metrics["map_voc07"], sync_dist=True)
