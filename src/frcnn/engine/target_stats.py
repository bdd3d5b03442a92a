"""Empirical normalisation of the Fast R-CNN box-regression targets (``roi_head.target_normalization:
empirical``), as the authors' alternating-training code does it.

py-faster-rcnn's alt-opt Fast R-CNN stages (``lib/roi_data_layer/roidb.py`` ``add_bbox_regression_targets``,
``BBOX_NORMALIZE_TARGETS_PRECOMPUTED`` false) compute, before each detector stage, per-class means and
standard deviations of the eq. 2 targets over its training RoIs: every ground-truth box and every proposal
whose IoU with a ground truth is >= 0.5 (``BBOX_THRESH``), matched to the ground truth it overlaps most,
over the flipped copies too (``TRAIN.USE_FLIPPED``); the background class is left out. Targets are
then normalised per class, ``(t - mean_c) / std_c``, and the snapshot folds the statistics back into
``bbox_pred`` (``lib/fast_rcnn/train.py`` ``snapshot``: W std, b std + mean), so the saved net predicts
raw deltas. frcnn keeps the statistics in the RoI head's state dict instead and un-normalises the
predicted deltas before decoding (:meth:`frcnn.modeling.roi_head.RoIHead.raw_deltas`): the same boxes,
and the weights stay those that trained.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from frcnn.data.records import training_annotations
from frcnn.modeling.boxes import encode_boxes

log = logging.getLogger(__name__)


def ground_truth_per_image(dataset) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(boxes_xyxy [N, 4] in original-image px, labels [N]) of every image of ``dataset`` in index order,
    as training sees them (:func:`frcnn.data.records.training_annotations`)."""
    for _, _, boxes, labels in training_annotations(dataset):
        yield boxes, labels


def regression_target_statistics(
    ground_truth: Iterable[tuple[np.ndarray, np.ndarray]], proposals_per_image: Sequence[np.ndarray] | object,
    num_classes: int, fg_iou_thresh: float = 0.5, flip_prob: float = 0.5,
    fallback_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class means and stds [C+1, 4] of the eq. 2 targets (unit weights) of the training RoIs.

    RoIs of image i: its ground-truth boxes and ``proposals_per_image`` i (boxes [P, 4] in the same
    pixels; a :class:`frcnn.engine.proposal_store.ProposalFile` works, through ``.boxes(i)``); those with
    max IoU >= ``fg_iou_thresh`` count for the class of the ground truth they overlap most. A horizontal
    flip negates t_x: with ``flip_prob`` p every RoI counts with weight 1 - p and its mirror with weight p
    (p = 0.5: the authors' flipped copies). var = E[t^2] - E[t]^2, as the authors. Row 0 (background) and
    a class without RoIs get mean 0 and ``fallback_stds``; so does an std of 0 (a class seen only through
    its ground-truth boxes), where the authors' division would give inf.
    """
    sums = torch.zeros(num_classes + 1, 4, dtype=torch.float64)
    squares = torch.zeros_like(sums)
    counts = torch.zeros(num_classes + 1, dtype=torch.float64)
    boxes_of = getattr(proposals_per_image, "boxes", None) or proposals_per_image.__getitem__
    mirror = torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    for index, (gt_boxes, gt_labels) in enumerate(ground_truth):
        gt = torch.as_tensor(np.asarray(gt_boxes), dtype=torch.float64).reshape(-1, 4)
        if gt.numel() == 0:
            continue
        labels = torch.as_tensor(np.asarray(gt_labels), dtype=torch.int64).reshape(-1)
        proposals = torch.as_tensor(np.asarray(boxes_of(index)), dtype=torch.float64).reshape(-1, 4)
        rois = torch.cat((gt, proposals))  # [G + P, 4]
        max_iou, matched = box_iou(rois, gt).max(dim=1)
        chosen = max_iou >= fg_iou_thresh
        targets = encode_boxes(gt[matched[chosen]], rois[chosen])  # [F, 4]
        classes = labels[matched[chosen]]
        for weight, rows in ((1.0 - flip_prob, targets), (flip_prob, targets * mirror)):
            if weight > 0:
                sums.index_add_(0, classes, weight * rows)
                squares.index_add_(0, classes, weight * rows * rows)
                counts.index_add_(0, classes, torch.full_like(classes, 1, dtype=torch.float64) * weight)
    fallback = torch.tensor(list(fallback_stds), dtype=torch.float64).expand(num_classes + 1, 4)
    seen = (counts > 0)[:, None].expand(-1, 4).clone()  # [C+1, 4]
    seen[0] = False  # background: never regressed
    means = torch.where(seen, sums / counts.clamp(min=1e-300)[:, None], torch.zeros_like(sums))
    variances = (squares / counts.clamp(min=1e-300)[:, None] - means * means).clamp(min=0.0)
    stds = torch.where(seen & (variances > 0), variances.sqrt(), fallback)
    return means.float(), stds.float()


def use_empirical_targets(roi_head, dataset, proposals, flip_prob: float, stage_name: str) -> None:
    """Set ``roi_head``'s target statistics from the training RoIs of a detector stage (``dataset``'s
    ground truth, ``proposals``: the stage's proposal file) and log them as the authors' code prints
    them (the mean over the object classes)."""
    means, stds = regression_target_statistics(ground_truth_per_image(dataset), proposals, roi_head.num_classes,
                                               roi_head.fg_iou_thresh, flip_prob)
    roi_head.set_target_statistics(means, stds)
    log.info("%s: regression targets normalised per class (roi_head.target_normalization=empirical); "
             "mean over classes: means %s, stds %s", stage_name,
             [round(v, 4) for v in means[1:].mean(0).tolist()], [round(v, 4) for v in stds[1:].mean(0).tolist()])
