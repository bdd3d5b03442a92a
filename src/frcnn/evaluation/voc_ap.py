"""PASCAL VOC detection average precision, computed as the VOC devkit computes it.

Reference rules (VOC devkit ``VOCevaldet.m`` and its Python port ``voc_eval.py`` used by
py-faster-rcnn to report the Faster R-CNN numbers):

* All detections of one class, across all images, are sorted by score, descending (stable sort,
  so ties keep image order, as MATLAB's ``sort`` does).
* Each detection, in that order, is compared with *every* ground truth of the same class in its
  image; the gt of maximal IoU is taken (``[ovmax, jmax] = max(ov)``).
* If ``ovmax > iou_thresh`` (strictly greater):
    - the gt is ``difficult``  -> the detection is ignored (neither TP nor FP);
    - the gt is already matched -> FP (duplicate detection);
    - otherwise                 -> TP and the gt becomes matched.
  Otherwise the detection is FP.
* ``npos`` = number of non-difficult gts; recall = cumTP / npos, precision = cumTP / (cumTP + cumFP).
* AP is either the VOC2007 11-point interpolated AP or the VOC2010+ all-point AP (area under the
  monotonically decreasing precision envelope).

Boxes are ``(x1, y1, x2, y2)``. With ``pixel_plus_one=True`` widths/heights are ``x2 - x1 + 1``
(the devkit convention for 1-based inclusive pixel boxes); the default is continuous
coordinates (``x2 - x1``).

Ignored (difficult-matched) detections are dropped from the returned recall/precision curves.
The devkit keeps them as rows that repeat the previous (recall, precision) point (or (0, 0) at
the start); those rows never change either AP, so the AP is identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# 11 recall thresholds of the VOC2007 metric. Built exactly as voc_eval.py does
# (np.arange(0., 1.1, 0.1)), so the float values (e.g. 0.30000000000000004) and hence the
# ">= t" comparisons reproduce the reference numbers bit for bit.
VOC07_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)  # [11]

_EPS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------------------------
# Conversion helpers
# --------------------------------------------------------------------------------------------
def _to_numpy(x, dtype) -> np.ndarray:
    """Torch tensor (any device) or array-like -> numpy array of ``dtype``."""
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _as_boxes(x) -> np.ndarray:
    """Any box container -> float64 array [N, 4] (an empty input becomes [0, 4])."""
    return _to_numpy(x, np.float64).reshape(-1, 4)


# --------------------------------------------------------------------------------------------
# Average precision from a precision/recall curve
# --------------------------------------------------------------------------------------------
def _voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point AP: mean over t in {0, 0.1, ..., 1} of max(precision[recall >= t]), 0 if empty."""
    ap = 0.0
    for t in VOC07_RECALL_THRESHOLDS:
        reached = recall >= t  # [N] bool
        p = float(np.max(precision[reached])) if np.any(reached) else 0.0
        ap += p / 11.0
    return ap


def _all_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP: area under the precision envelope, summed where recall changes.

    mrec = [0, recall, 1], mpre = [0, precision, 0]; mpre[i] = max(mpre[i:]) (envelope);
    AP = sum over i with mrec[i+1] != mrec[i] of (mrec[i+1] - mrec[i]) * mpre[i+1].
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))  # [N+2]
    mpre = np.concatenate(([0.0], precision, [0.0]))  # [N+2]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotone-decreasing envelope
    change = np.where(mrec[1:] != mrec[:-1])[0]  # indices i where recall steps
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP of one class from its cumulative recall/precision curve (VOC devkit ``VOCap`` / ``voc_ap``).

    ``use_07_metric=True``: 11-point interpolated AP (VOC2007). ``False``: all-point AP (VOC2010+).
    """
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    if recall.shape != precision.shape:
        raise ValueError(f"recall {recall.shape} and precision {precision.shape} differ in shape")
    return _voc07_ap(recall, precision) if use_07_metric else _all_point_ap(recall, precision)


# --------------------------------------------------------------------------------------------
# IoU and greedy matching
# --------------------------------------------------------------------------------------------
def pairwise_iou(boxes_a: np.ndarray, boxes_b: np.ndarray, pixel_plus_one: bool = False) -> np.ndarray:
    """IoU matrix [A, B] of (x1, y1, x2, y2) boxes; widths are ``x2 - x1 (+1 if pixel_plus_one)``.

    Same arithmetic as the devkit: intersection sides clipped at 0, union = area_a + area_b - inter.
    """
    one = 1.0 if pixel_plus_one else 0.0
    a = boxes_a[:, None, :]  # [A, 1, 4]
    b = boxes_b[None, :, :]  # [1, B, 4]
    inter_w = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one, 0.0)
    inter_h = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one, 0.0)
    inter_area = inter_w * inter_h  # [A, B]
    area_a = (a[..., 2] - a[..., 0] + one) * (a[..., 3] - a[..., 1] + one)  # [A, 1]
    area_b = (b[..., 2] - b[..., 0] + one) * (b[..., 3] - b[..., 1] + one)  # [1, B]
    union_area = area_a + area_b - inter_area
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union_area > 0, inter_area / union_area, 0.0)
    return iou


def _flatten_detections(detections: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per-image (boxes, scores) -> (image index [N], score [N], row within image [N], boxes per image)."""
    image_ids, scores_all, rows, boxes_per_image = [], [], [], []
    for image_index, (boxes, scores) in enumerate(detections):
        boxes = _as_boxes(boxes)  # [D, 4]
        scores = _to_numpy(scores, np.float64).reshape(-1)  # [D]
        if len(boxes) != len(scores):
            raise ValueError(f"image {image_index}: {len(boxes)} boxes but {len(scores)} scores")
        boxes_per_image.append(boxes)
        image_ids.append(np.full(len(scores), image_index, dtype=np.int64))
        scores_all.append(scores)
        rows.append(np.arange(len(scores), dtype=np.int64))
    if not boxes_per_image:
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros(0, dtype=np.float64), empty, []
    return np.concatenate(image_ids), np.concatenate(scores_all), np.concatenate(rows), boxes_per_image


def _match_detections(
    image_ids: np.ndarray,
    rows: np.ndarray,
    iou_per_image: list[np.ndarray],
    difficult_per_image: list[np.ndarray],
    iou_thresh: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Devkit greedy assignment of score-sorted detections -> (is_tp [N], is_fp [N]) bool, matched gt [N]
    (its index in the image for a TP or an ignored detection, else -1).

    Detections with both flags False matched a difficult gt and are ignored.
    """
    num_dets = len(image_ids)
    is_tp = np.zeros(num_dets, dtype=bool)
    is_fp = np.zeros(num_dets, dtype=bool)
    matched_gt = np.full(num_dets, -1, dtype=np.int64)
    gt_taken = [np.zeros(len(d), dtype=bool) for d in difficult_per_image]
    for k in range(num_dets):
        img = image_ids[k]
        ious = iou_per_image[img][rows[k]]  # [G] IoU of this detection vs all gts of its image
        if ious.size == 0:
            is_fp[k] = True
            continue
        best_gt = int(np.argmax(ious))  # first max, as MATLAB max / np.argmax
        if not ious[best_gt] > iou_thresh:  # devkit: ovmax > ovthresh (strict)
            is_fp[k] = True
        elif difficult_per_image[img][best_gt]:
            matched_gt[k] = best_gt  # ignored: neither TP nor FP
        elif gt_taken[img][best_gt]:
            is_fp[k] = True  # duplicate detection
        else:
            is_tp[k] = True
            matched_gt[k] = best_gt
            gt_taken[img][best_gt] = True
    return is_tp, is_fp, matched_gt


def devkit_match(
    detections: Sequence,
    ground_truths: Sequence,
    iou_thresh: float = 0.5,
    pixel_plus_one: bool = False,
) -> dict[str, np.ndarray | int]:
    """The devkit's assignment of one class's detections (module rules; arguments as :func:`voc_class_ap`),
    every array in decreasing score order (ties in image order):
    ``image`` [N] image index, ``row`` [N] row in that image's detections, ``score`` [N], ``is_tp`` [N],
    ``is_fp`` [N] (both False: matched a difficult gt, ignored), ``gt`` [N] the matched gt's index in its image
    (TP or ignored; else -1), and ``npos`` (non-difficult gts)."""
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} images of detections but {len(ground_truths)} of ground truth")
    gt_boxes = [_as_boxes(boxes) for boxes, _ in ground_truths]  # per image [G, 4]
    gt_difficult = [_to_numpy(diff, bool).reshape(-1) for _, diff in ground_truths]  # per image [G]
    npos = int(sum(int((~d).sum()) for d in gt_difficult))

    image_ids, scores, rows, det_boxes = _flatten_detections(detections)
    order = np.argsort(-scores, kind="stable")  # score descending, ties in image order
    image_ids, rows, scores = image_ids[order], rows[order], scores[order]

    iou_per_image = [pairwise_iou(d, g, pixel_plus_one) for d, g in zip(det_boxes, gt_boxes)]  # [D_i, G_i]
    is_tp, is_fp, matched_gt = _match_detections(image_ids, rows, iou_per_image, gt_difficult, iou_thresh)
    return {"image": image_ids, "row": rows, "score": scores, "is_tp": is_tp, "is_fp": is_fp, "gt": matched_gt,
            "npos": npos}


def voc_class_ap(
    detections: Sequence,
    ground_truths: Sequence,
    iou_thresh: float = 0.5,
    use_07_metric: bool = False,
    pixel_plus_one: bool = False,
) -> tuple[float, np.ndarray, np.ndarray, int]:
    """AP of one class over a dataset, with the VOC devkit matching rule (VOCevaldet / voc_eval).

    Args:
        detections: per image ``(boxes [D, 4], scores [D])`` of this class (torch or numpy).
        ground_truths: per image ``(boxes [G, 4], difficult bool [G])`` of this class; same image order.
        iou_thresh: a detection matches only if IoU > iou_thresh (strict, like ``ovmax > ovthresh``).
        use_07_metric: 11-point (VOC2007) AP if True, else all-point (VOC2010+) AP.
        pixel_plus_one: devkit +1-pixel widths for IoU (1-based inclusive pixel boxes).

    Returns:
        ``(ap, recall [N'], precision [N'], npos)`` where N' counts non-ignored detections in score
        order. If ``npos == 0`` (class absent) ``ap`` is NaN and recall is NaN; exclude such classes
        from a mean.
    """
    matches = devkit_match(detections, ground_truths, iou_thresh, pixel_plus_one)
    is_tp, is_fp, npos = matches["is_tp"], matches["is_fp"], matches["npos"]
    counted = is_tp | is_fp  # drop ignored (difficult) detections
    cum_tp = np.cumsum(is_tp[counted]).astype(np.float64)  # [N']
    cum_fp = np.cumsum(is_fp[counted]).astype(np.float64)  # [N']
    precision = cum_tp / np.maximum(cum_tp + cum_fp, _EPS)
    if npos == 0:
        return math.nan, np.full_like(cum_tp, np.nan), precision, 0
    recall = cum_tp / float(npos)
    return average_precision(recall, precision, use_07_metric), recall, precision, npos


# --------------------------------------------------------------------------------------------
# Dataset-level accumulator
# --------------------------------------------------------------------------------------------
def _mean_ignoring_nan(values: Sequence[float]) -> float:
    """Mean of the non-NaN values; 0.0 if there are none (every class absent)."""
    present = [v for v in values if not math.isnan(v)]
    return float(sum(present) / len(present)) if present else 0.0


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


class DetectionEvaluator:
    """Accumulates detections and ground truth over batches; computes PASCAL VOC mAP at IoU > thresh.

    Labels are 1..num_classes (0 is background and must not appear). ``compute`` reports both the
    all-point (VOC2010+) and the 11-point (VOC2007) AP per class and their means over the classes
    that have at least one non-difficult gt (VOC devkit VOCevaldet / voc_eval rules).
    """

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        iou_thresh: float = 0.5,
        pixel_plus_one: bool = False,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is None:
            class_names = [f"class_{i}" for i in range(1, num_classes + 1)]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.iou_thresh = iou_thresh
        self.pixel_plus_one = pixel_plus_one
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._det_boxes: list[np.ndarray] = []  # per image [D, 4]
        self._det_scores: list[np.ndarray] = []  # per image [D]
        self._det_labels: list[np.ndarray] = []  # per image [D]
        self._gt_boxes: list[np.ndarray] = []  # per image [G, 4]
        self._gt_labels: list[np.ndarray] = []  # per image [G]
        self._gt_difficult: list[np.ndarray] = []  # per image [G]
        self._results_cache: list | None = None  # _class_results, until the next update
        self._matches_cache: dict[int, dict] = {}  # class_matches by label, until the next update

    def _check_labels(self, labels: np.ndarray, what: str) -> None:
        if labels.size and (labels.min() < 1 or labels.max() > self.num_classes):
            raise ValueError(f"{what} labels must be in 1..{self.num_classes}, got {labels.min()}..{labels.max()}")

    def update(self, preds: list[dict], targets: list[dict]) -> None:
        """Add one batch: ``preds[i]`` {boxes [D,4], scores [D], labels [D]}, ``targets[i]`` {boxes [G,4],
        labels [G], optional difficult [G]}; torch (any device) or numpy."""
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions but {len(targets)} targets")
        for pred, target in zip(preds, targets):
            det_boxes = _as_boxes(pred["boxes"])
            det_scores = _to_numpy(pred["scores"], np.float64).reshape(-1)
            det_labels = _to_numpy(pred["labels"], np.int64).reshape(-1)
            gt_boxes = _as_boxes(target["boxes"])
            gt_labels = _to_numpy(target["labels"], np.int64).reshape(-1)
            difficult = target.get("difficult")
            gt_difficult = (
                np.zeros(len(gt_labels), dtype=bool) if difficult is None else _to_numpy(difficult, bool).reshape(-1)
            )
            if not (len(det_boxes) == len(det_scores) == len(det_labels)):
                raise ValueError("prediction boxes, scores and labels differ in length")
            if not (len(gt_boxes) == len(gt_labels) == len(gt_difficult)):
                raise ValueError("target boxes, labels and difficult differ in length")
            self._check_labels(det_labels, "prediction")
            self._check_labels(gt_labels, "target")
            self._det_boxes.append(det_boxes)
            self._det_scores.append(det_scores)
            self._det_labels.append(det_labels)
            self._gt_boxes.append(gt_boxes)
            self._gt_labels.append(gt_labels)
            self._gt_difficult.append(gt_difficult)
        self._results_cache = None
        self._matches_cache = {}

    def _class_inputs(self, label: int) -> tuple[list, list]:
        """Per-image (boxes, scores) detections and (boxes, difficult) gts of one class label."""
        detections = [
            (boxes[labels == label], scores[labels == label])
            for boxes, scores, labels in zip(self._det_boxes, self._det_scores, self._det_labels)
        ]
        ground_truths = [
            (boxes[labels == label], difficult[labels == label])
            for boxes, labels, difficult in zip(self._gt_boxes, self._gt_labels, self._gt_difficult)
        ]
        return detections, ground_truths

    def _class_results(self) -> list[tuple[float, np.ndarray, np.ndarray, int]]:
        """``voc_class_ap`` (all-point) of every class label 1..C, in label order; cached until the
        next ``update`` / ``reset`` so ``compute`` and ``pr_curves`` match detections only once."""
        if self._results_cache is None:
            results = []
            for label in range(1, self.num_classes + 1):
                detections, ground_truths = self._class_inputs(label)
                results.append(voc_class_ap(
                    detections, ground_truths, self.iou_thresh, use_07_metric=False, pixel_plus_one=self.pixel_plus_one
                ))
            self._results_cache = results
        return self._results_cache

    def class_matches(self, label: int) -> dict[str, np.ndarray | int]:
        """:func:`devkit_match` of one class label over everything accumulated (cached until the next update)."""
        if label not in self._matches_cache:
            self._matches_cache[label] = devkit_match(*self._class_inputs(label), self.iou_thresh, self.pixel_plus_one)
        return self._matches_cache[label]

    def images(self) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """What :meth:`update` stored, per image: ({boxes, scores, labels}, {boxes, labels, difficult}), numpy."""
        return [({"boxes": db, "scores": ds, "labels": dl}, {"boxes": gb, "labels": gl, "difficult": gd})
                for db, ds, dl, gb, gl, gd in zip(self._det_boxes, self._det_scores, self._det_labels,
                                                  self._gt_boxes, self._gt_labels, self._gt_difficult)]

    def pr_curves(self) -> dict[str, dict]:
        """Per-class precision/recall curves behind the APs (devkit cumulative TP/FP, score order).

        -> ``{class name: {"recall": float64 [N'], "precision": float64 [N'], "ap": all-point AP or
        None, "npos": non-difficult gts}}``; N' = that class's non-ignored detections. A class without
        ground truth has ``ap`` None and NaN recall.
        """
        return {
            name: {"recall": recall, "precision": precision, "ap": _nan_to_none(ap), "npos": npos}
            for name, (ap, recall, precision, npos) in zip(self.class_names, self._class_results())
        }

    def compute(self) -> dict:
        """Per-class AP (all-point and 11-point) and their means over present classes (python values)."""
        ap_all_point, ap_11_point = [], []
        for ap, recall, precision, _ in self._class_results():
            ap_all_point.append(ap)
            # Same curve, other integration: no need to match again.
            ap_11_point.append(math.nan if math.isnan(ap) else average_precision(recall, precision, True))
        return {
            "map_50": _mean_ignoring_nan(ap_all_point),
            "map_voc07": _mean_ignoring_nan(ap_11_point),
            "ap_per_class": {n: _nan_to_none(a) for n, a in zip(self.class_names, ap_all_point)},
            "ap07_per_class": {n: _nan_to_none(a) for n, a in zip(self.class_names, ap_11_point)},
            "num_images": len(self._gt_boxes),
            "num_detections": int(sum(len(s) for s in self._det_scores)),
        }


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
def _fmt_ap(value: float | None) -> str:
    """AP as a percentage with one decimal, '-' for an absent class."""
    return "-" if value is None else f"{100.0 * value:.1f}"


def _table_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(name, all-point AP %, 11-point AP %) rows: one per class, then the mean."""
    rows = [
        (name, _fmt_ap(ap), _fmt_ap(metrics["ap07_per_class"].get(name)))
        for name, ap in metrics["ap_per_class"].items()
    ]
    rows.append(("mAP", _fmt_ap(metrics["map_50"]), _fmt_ap(metrics["map_voc07"])))
    return rows


_HEADER = ("class", "AP@0.5 (all-point)", "AP@0.5 (VOC07 11-pt)")


def format_table(metrics: dict) -> str:
    """Aligned plain-text table of per-class AP (%) for both VOC metrics, then the means."""
    rows = _table_rows(metrics)
    name_width = max(len(_HEADER[0]), *(len(r[0]) for r in rows))
    widths = (name_width, len(_HEADER[1]), len(_HEADER[2]))

    def line(cells: Sequence[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    rule = "-" * len(line(_HEADER))
    body = [line(r) for r in rows[:-1]]
    return "\n".join([line(_HEADER), rule, *body, rule, line(rows[-1])])


def format_markdown_table(metrics: dict) -> str:
    """GitHub-markdown table of per-class AP (%) for both VOC metrics, with the means in bold."""
    rows = _table_rows(metrics)
    lines = ["| " + " | ".join(_HEADER) + " |", "|:---|---:|---:|"]
    lines += [f"| {n} | {a} | {b} |" for n, a, b in rows[:-1]]
    name, a, b = rows[-1]
    lines.append(f"| **{name}** | **{a}** | **{b}** |")
    return "\n".join(lines)
