"""What a detector gets wrong, and where to cut its scores: the detection confusion matrix, per-class precision /
recall / F1 at a score threshold, and the threshold that maximises F1 per class.

The confusion matrix is the usual one for detection (kaanakan/object_detection_confusion_matrix, adopted as
``ConfusionMatrix`` in Ultralytics YOLOv5's ``utils/metrics.py``): ground-truth classes x predicted classes,
plus a ``background`` row (detections that match no object: false positives on background) and a ``missed``
column (objects no detection matches: false negatives). Only detections with score >= ``score_thresh``
count, a detection and an object pair when their IoU > ``iou_thresh`` (0.5), and each detection and each
object is paired at most once. One refinement, stated so the numbers can be checked against the AP:

1. same-class pairs first, by the VOC devkit's rule that the AP uses (:mod:`frcnn.evaluation.voc_ap`: in
   decreasing score, each detection takes the object of its class it overlaps most; a second detection of
   an object is a duplicate; one on a ``difficult`` object is ignored), so the diagonal is the true
   positives of the precision / recall at the same threshold, and a right detection is never displaced by
   a wrong-class one that overlaps more (the reference matches class-blind);
2. then the remaining detections with the remaining (not difficult) objects of OTHER classes, class-blind,
   in decreasing IoU: ``[object class, detected class]``, a confusion;
3. what is left: ``[background, detected class]`` and ``[object class, missed]``.

So row c sums to class c's objects (not difficult), column c to class c's counted detections (score >=
threshold, not ignored): precision_c = M[c, c] / column c, recall_c = M[c, c] / row c.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from frcnn.evaluation.voc_ap import DetectionEvaluator, pairwise_iou

BACKGROUND, MISSED = "background", "missed"


def confusion_matrix(evaluator: DetectionEvaluator, score_thresh: float) -> np.ndarray:
    """[C + 1, C + 1] int64 counts: rows the object classes 1..C then ``background``; columns the detected classes
    1..C then ``missed`` (module docstring); IoU threshold and box convention of ``evaluator``."""
    num = evaluator.num_classes
    matrix = np.zeros((num + 1, num + 1), dtype=np.int64)
    images = evaluator.images()
    # step 1: the devkit's same-class matches (one pass over the dataset per class, as the AP)
    det_used = [np.zeros(len(pred["scores"]), dtype=bool) for pred, _ in images]  # TP or ignored
    gt_used = [np.zeros(len(target["labels"]), dtype=bool) for _, target in images]  # matched or difficult
    for label in range(1, num + 1):
        matches = evaluator.class_matches(label)
        for image, row, score, gt, is_tp in zip(matches["image"], matches["row"], matches["score"], matches["gt"],
                                                matches["is_tp"]):
            if score < score_thresh or gt < 0:
                continue
            pred, target = images[image]
            det_index = np.flatnonzero(pred["labels"] == label)[row]
            gt_index = np.flatnonzero(target["labels"] == label)[gt]
            det_used[image][det_index] = True
            if is_tp:
                gt_used[image][gt_index] = True
                matrix[label - 1, label - 1] += 1
    for image, (pred, target) in enumerate(images):
        gt_used[image] |= target["difficult"]
        free_dets = np.flatnonzero(~det_used[image] & (pred["scores"] >= score_thresh))  # [D']
        free_gts = np.flatnonzero(~gt_used[image])  # [G']
        # step 2: other-class pairs, class-blind, in decreasing IoU
        iou = pairwise_iou(pred["boxes"][free_dets], target["boxes"][free_gts], evaluator.pixel_plus_one)
        det_labels, gt_labels = pred["labels"][free_dets], target["labels"][free_gts]
        iou[det_labels[:, None] == gt_labels[None, :]] = 0.0  # same class: step 1 decided
        det_left, gt_left = np.ones(len(free_dets), bool), np.ones(len(free_gts), bool)
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            d, g = np.unravel_index(flat, iou.shape)
            if not iou[d, g] > evaluator.iou_thresh:
                break
            if det_left[d] and gt_left[g]:
                matrix[gt_labels[g] - 1, det_labels[d] - 1] += 1
                det_left[d] = gt_left[g] = False
        # step 3: the rest
        np.add.at(matrix, (num, det_labels[det_left] - 1), 1)
        np.add.at(matrix, (gt_labels[gt_left] - 1, num), 1)
    return matrix


def _ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator == 0 else float(numerator / denominator)


def f1_score(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def threshold_curve(evaluator: DetectionEvaluator, label: int) -> dict[str, np.ndarray] | None:
    """Precision, recall and F1 of one class when its detections are cut at each score they take (keeping
    score >= threshold; the devkit's matching, as the AP) -> {score_thresh, precision, recall, f1} arrays [K]
    in decreasing threshold; None when the class has no objects or no counted detection."""
    matches = evaluator.class_matches(label)
    counted = matches["is_tp"] | matches["is_fp"]
    scores, is_tp = matches["score"][counted], matches["is_tp"][counted]  # [N'] decreasing score
    if matches["npos"] == 0 or scores.size == 0:
        return None
    tp = np.cumsum(is_tp)
    cut = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))  # last index of each run of equal scores
    precision, recall = tp[cut] / (cut + 1), tp[cut] / matches["npos"]
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return {"score_thresh": scores[cut], "precision": precision, "recall": recall, "f1": f1}


def best_f1_threshold(evaluator: DetectionEvaluator, label: int) -> dict | None:
    """The score threshold that maximises F1 for one class (:func:`threshold_curve`; the highest threshold
    among equal best) -> {score_thresh, precision, recall, f1}; None where the curve is."""
    curve = threshold_curve(evaluator, label)
    if curve is None:
        return None
    best = int(np.argmax(curve["f1"]))  # first maximum: the highest threshold
    return {key: float(values[best]) for key, values in curve.items()}


def detection_mistakes(evaluator: DetectionEvaluator, score_thresh: float) -> dict:
    """metrics.json's ``mistakes``: the confusion matrix (rows, columns, counts) at ``score_thresh`` and IoU >
    the evaluator's threshold, per-class precision / recall / F1 at ``score_thresh`` (None where undefined),
    and per class the F1-maximising threshold (:func:`best_f1_threshold`)."""
    matrix = confusion_matrix(evaluator, score_thresh)
    names = list(evaluator.class_names)
    per_class = {}
    for index, name in enumerate(names):
        true_positives = matrix[index, index]
        precision = _ratio(true_positives, matrix[:, index].sum())
        recall = _ratio(true_positives, matrix[index, :].sum())
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1_score(precision, recall),
                           "objects": int(matrix[index, :].sum()), "detections": int(matrix[:, index].sum()),
                           "best_f1": best_f1_threshold(evaluator, index + 1)}
    return {"score_thresh": float(score_thresh), "iou_thresh": float(evaluator.iou_thresh),
            "confusion": {"rows": names + [BACKGROUND], "columns": names + [MISSED], "counts": matrix.tolist()},
            "per_class": per_class}


def format_mistakes_table(mistakes: dict) -> str:
    """Per class: precision / recall / F1 at the score threshold, and the F1-maximising threshold."""
    thresh = mistakes["score_thresh"]
    header = f"{'class':<14} {'P@' + format(thresh, 'g'):>8} {'R':>6} {'F1':>6}   {'best F1':>7} {'at score':>8}"
    lines = [header, "-" * len(header)]

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    for name, row in mistakes["per_class"].items():
        best = row["best_f1"] or {}
        at = "-" if not best else f"{best['score_thresh']:.3f}"
        lines.append(f"{name[:14]:<14} {pct(row['precision']):>8} {pct(row['recall']):>6} {pct(row['f1']):>6}   "
                     f"{pct(best.get('f1')):>7} {at:>8}")
    return "\n".join(lines)


def confused_pairs(mistakes: dict, top: int = 5) -> Sequence[tuple[str, str, int]]:
    """The largest off-diagonal cells: (object class, detected as, count), most first."""
    confusion = mistakes["confusion"]
    counts = np.asarray(confusion["counts"])
    cells = [(confusion["rows"][r], confusion["columns"][c], int(counts[r, c]))
             for r in range(counts.shape[0]) for c in range(counts.shape[1]) if r != c and counts[r, c] > 0]
    return sorted(cells, key=lambda cell: -cell[2])[:top]
