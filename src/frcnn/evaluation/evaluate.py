"""Run a detector over a dataloader and score it (VOC AP, COCO AP, proposal recall; plain PyTorch loop)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from frcnn.data.transforms import image_scales
from frcnn.evaluation.coco_map import CocoEvaluator
from frcnn.evaluation.mistakes import detection_mistakes, threshold_curve
from frcnn.evaluation.proposal_recall import (
    PAPER_IOU_THRESHOLDS,
    PAPER_TOP_NS,
    ProposalRecallAccumulator,
    update_from_targets,
)
from frcnn.evaluation.voc_ap import DetectionEvaluator
from frcnn.utils.progress import start_progress

# CocoEvaluator's keys -> the keys under metrics["coco"]
_COCO_KEYS = {
    "map_coco": "map", "map_coco_50": "map_50", "map_coco_75": "map_75",
    "map_small": "map_small", "map_medium": "map_medium", "map_large": "map_large",
}


def _scale_boxes(boxes: Tensor, scale_x: float, scale_y: float) -> Tensor:
    """[N, 4] (x1, y1, x2, y2) scaled per axis."""
    factors = boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
    return boxes.reshape(-1, 4) * factors


def detections_in_original_pixels(detections: list[dict], targets: list[dict], images: list[Tensor]) -> tuple[list, list]:
    """Detections and gts from network-input pixels back to original-image pixels (``orig_size``).

    COCO's small / medium / large ranges (32², 96² px²) are defined on original images; IoU, and so
    every AP, is unchanged by the per-axis rescale. Targets without ``orig_size`` are left as they are.
    """
    dets_out, targets_out = [], []
    for det, target, image in zip(detections, targets, images):
        if "orig_size" not in target:
            dets_out.append(det)
            targets_out.append(target)
            continue
        orig_h, orig_w = (int(v) for v in target["orig_size"])
        scale_x, scale_y = orig_w / image.shape[-1], orig_h / image.shape[-2]
        dets_out.append({**det, "boxes": _scale_boxes(det["boxes"], scale_x, scale_y)})
        targets_out.append({**target, "boxes": _scale_boxes(torch.as_tensor(target["boxes"]), scale_x, scale_y)})
    return dets_out, targets_out


@torch.no_grad()
def evaluate_split(
    model,
    dataloader,
    class_names: Sequence[str],
    device: torch.device | str = "cpu",
    top_ns: Sequence[int] = PAPER_TOP_NS,
    iou_thresholds: Sequence[float] = PAPER_IOU_THRESHOLDS,
    coco: bool = True,
    on_batch: Callable[[list[Tensor], list[dict], list[dict]], None] | None = None,
    progress_name: str = "evaluation",
    score_thresh: float | None = None,
) -> tuple[dict, dict]:
    """One pass over the split scoring detections and proposals -> (metrics, pr_curves).

    * VOC AP at IoU > 0.5 (devkit rules, all-point and 11-point): ``map_50``, ``map_voc07``,
      ``ap_per_class``, ``ap07_per_class``, ``num_images``, ``num_detections``;
    * ``coco`` (if ``coco``): COCO AP@[.5:.95] ``map``, ``map_50``, ``map_75``, ``map_small`` /
      ``map_medium`` / ``map_large`` (-1 where undefined), boxes in original-image pixels;
    * ``proposal_recall`` (if ``top_ns``): the paper's Fig. 4 for the RPN's top-N proposals
      (:func:`frcnn.evaluation.proposal_recall.recall_at_iou`);
    * ``mistakes`` (if ``score_thresh`` is given): the confusion matrix at that score threshold, per-class
      precision / recall / F1 there and the F1-maximising threshold
      (:func:`frcnn.evaluation.mistakes.detection_mistakes`).

    ``pr_curves`` is :meth:`DetectionEvaluator.pr_curves` (numpy arrays; not for JSON), with ``score_thresh``
    each class's ``threshold_curve`` (:func:`frcnn.evaluation.mistakes.threshold_curve`) added.
    The shared conv layers run once per image (``model.detect_and_rank``); ``on_batch(images,
    targets, detections)`` sees every batch (e.g. to draw the first few). The result does not
    depend on the loader's batch size (:func:`frcnn.modeling.faster_rcnn.padded_size_groups`) up to the
    float rounding of convolutions batched with images of the same padded size (docs/REPRODUCING.md).
    Progress (images done, ETA) as ``progress_name`` (:func:`frcnn.utils.progress.start_progress`).
    """
    was_training = model.training
    model.eval()
    voc = DetectionEvaluator(num_classes=len(class_names), class_names=list(class_names))
    coco_evaluator = CocoEvaluator() if coco else None
    recall = ProposalRecallAccumulator(top_ns, iou_thresholds) if top_ns else None
    progress = start_progress(progress_name, len(getattr(dataloader, "dataset", ())), "images")
    done = 0
    try:
        for images, targets in dataloader:
            images = [img.to(device) for img in images]
            scales = image_scales(images, targets)  # the proposal layer's minimum size is in original pixels
            if recall is not None:
                detections, proposals = model.detect_and_rank(images, recall.top_ns[-1], scales)
                update_from_targets(recall, [p.cpu() for p in proposals], targets)
            else:
                detections = model(images, image_scales=scales)
            detections = [{k: v.cpu() for k, v in d.items()} for d in detections]
            voc.update(detections, targets)
            if coco_evaluator is not None:
                coco_evaluator.update(*detections_in_original_pixels(detections, targets, images))
            if on_batch is not None:
                on_batch(images, targets, detections)
            done += len(images)
            progress.update(done)
    finally:
        model.train(was_training)
        progress.close()
    metrics = voc.compute()
    if coco_evaluator is not None:
        coco_result = coco_evaluator.compute()
        metrics["coco"] = {ours: coco_result[theirs] for theirs, ours in _COCO_KEYS.items()}
    if recall is not None:
        metrics["proposal_recall"] = recall.compute()
    pr_curves = voc.pr_curves()
    if score_thresh is not None:
        metrics["mistakes"] = detection_mistakes(voc, score_thresh)
        for label, name in enumerate(class_names, start=1):
            pr_curves[name]["threshold_curve"] = threshold_curve(voc, label)
    return metrics, pr_curves


def evaluate_detector(model, dataloader, class_names: list[str], device: torch.device | str = "cpu") -> dict:
    """Detections for every image, then VOC AP at IoU 0.5 (all-point and 11-point)."""
    metrics, _ = evaluate_split(model, dataloader, class_names, device, top_ns=(), coco=False)
    return metrics
