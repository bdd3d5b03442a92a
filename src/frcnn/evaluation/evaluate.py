"""Run a detector over a dataloader and score it (VOC AP, plain PyTorch loop)."""

from __future__ import annotations

import torch

from frcnn.evaluation.voc_ap import DetectionEvaluator


@torch.no_grad()
def evaluate_detector(model, dataloader, class_names: list[str], device: torch.device | str = "cpu") -> dict:
    """Detections for every image, then VOC AP at IoU 0.5 (all-point and 11-point)."""
    was_training = model.training
    model.eval()
    evaluator = DetectionEvaluator(num_classes=len(class_names), class_names=list(class_names))
    for images, targets in dataloader:
        images = [img.to(device) for img in images]
        detections = model(images)
        evaluator.update([{k: v.cpu() for k, v in d.items()} for d in detections], targets)
    model.train(was_training)
    return evaluator.compute()
