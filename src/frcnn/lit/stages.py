"""LightningModules for the stages of the 4-step alternating recipe (paper §3.2).

Every stage module holds a whole :class:`FasterRCNN` (built by the same factory as joint
training), so weights move between stages by name; a stage trains only its part and freezes
the rest, so the optimiser and DDP see exactly the parameters the paper trains:

- RPN stage: shared conv (unless frozen) + RPN layers, loss = eq. 1.
- Detector stage: shared conv (unless frozen) + Fast R-CNN layers on precomputed proposals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

from frcnn.lit.guards import LossGuard
from frcnn.lit.optim import build_optimizer
from frcnn.lit.validation import ValidationMAP
from frcnn.modeling.backbone import freeze_prefix, set_trainable
from frcnn.modeling.build import build_model

STAGE_KINDS = ("rpn", "detector")


class StageModule(ValidationMAP, L.LightningModule):
    """One stage: which part trains (``kind``) and whether the shared conv layers are frozen.

    Validation (when the recipe asks for it) evaluates the whole detector; the recipe enables it
    only for the last stage, the first whose RPN and detector share their conv."""

    def __init__(self, kind: str, model_cfg: Mapping[str, Any], optim_cfg: Mapping[str, Any], lr_steps: list[int],
                 class_names: list[str], freeze_shared: bool = False, stage_name: str = ""):
        super().__init__()
        if kind not in STAGE_KINDS:
            raise ValueError(f"stage kind={kind!r}; allowed: {STAGE_KINDS}")
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.model = build_model(model_cfg, num_classes=len(class_names))
        self.loss_guard = LossGuard("error", stage_name or kind)  # the recipe sets recipe.on_nonfinite_loss
        self.apply_trainable()

    def apply_trainable(self) -> None:
        """Freeze what this stage does not train (call again after loading weights)."""
        kind, model = self.hparams.kind, self.model
        set_trainable(model.rpn, kind == "rpn")
        set_trainable(model.roi_head, kind == "detector")
        set_trainable(model.backbone, not self.hparams.freeze_shared)
        if not self.hparams.freeze_shared:
            freeze_prefix(model.backbone_info)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        feature_map, image_sizes = self.model.features(images)
        gt_boxes = [t["boxes"] for t in targets]
        if self.hparams.kind == "rpn":
            _, _, losses = self.model.rpn(feature_map, image_sizes, gt_boxes, with_proposals=False)
            total = losses["rpn"]
        else:
            proposals = [t["proposals"] for t in targets]
            _, losses = self.model.roi_head(feature_map, proposals, image_sizes, gt_boxes, [t["labels"] for t in targets])
            total = losses["det"]
        if not self.loss_guard.check(losses, self.global_step):
            return None  # skipped: no optimiser step
        prefix = self.hparams.stage_name or "train"
        self.log_dict({f"{prefix}/{k}": v.detach() for k, v in losses.items()}, batch_size=len(images))
        self.log(f"{prefix}/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=len(images))
        return total

    def configure_optimizers(self):
        return build_optimizer(self.model, self.hparams.optim_cfg, self.hparams.lr_steps)
