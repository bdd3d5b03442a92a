"""VOC AP (devkit rules) and COCO mAP wrapper, against hand-computed answers."""

import json
import math

import numpy as np
import pytest
import torch

from frcnn.evaluation.voc_ap import (
    DetectionEvaluator,
    average_precision,
    format_markdown_table,
    format_table,
    pairwise_iou,
    voc_class_ap,
)


def _boxes(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def _no_difficult(n):
    return np.zeros(n, dtype=bool)


# (a) ----------------------------------------------------------------------------------------
def test_perfect_detections_give_ap_one_for_both_metrics():
    gts = [(_boxes([0, 0, 10, 10], [20, 20, 40, 40]), _no_difficult(2)), (_boxes([5, 5, 15, 25]), _no_difficult(1))]
    dets = [(gts[0][0].copy(), np.array([0.9, 0.8])), (gts[1][0].copy(), np.array([0.7]))]
    for use_07 in (False, True):
        ap, recall, precision, npos = voc_class_ap(dets, gts, use_07_metric=use_07)
        assert ap == pytest.approx(1.0)
        assert npos == 3
        np.testing.assert_allclose(recall, [1 / 3, 2 / 3, 1.0])
        np.testing.assert_allclose(precision, [1.0, 1.0, 1.0])


def test_perfect_detections_through_evaluator_with_torch_inputs():
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), "labels": torch.tensor([1, 2])}
    pred = {"boxes": target["boxes"].clone(), "scores": torch.tensor([0.9, 0.3]), "labels": torch.tensor([1, 2])}
    ev = DetectionEvaluator(num_classes=2, class_names=["cat", "dog"])
    ev.update([pred], [target])
    m = ev.compute()
    assert m["map_50"] == pytest.approx(1.0) and m["map_voc07"] == pytest.approx(1.0)
    assert m["ap_per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert m["num_images"] == 1 and m["num_detections"] == 2


# (b) ----------------------------------------------------------------------------------------
def test_hand_computed_case_with_false_positives_and_a_duplicate():
    # Image A: gt1 [0,0,10,10], gt2 [20,20,30,30]   Image B: gt3 [0,0,10,10]   -> npos = 3
    # Detections in score order:
    #   d1 0.9 A [0,0,10,10]        -> TP (gt1)
    #   d3 0.8 B [50,50,60,60]      -> FP (no overlap)
    #   d4 0.7 B [0,0,10,10]        -> TP (gt3)
    #   d2 0.6 A [0,0,10,10]        -> FP (duplicate: best gt is gt1, already matched)
    #   d5 0.5 A [100,100,110,110]  -> FP
    # cumTP = 1,1,2,2,2   cumFP = 0,1,1,2,3
    # recall    = 1/3, 1/3, 2/3, 2/3, 2/3
    # precision = 1,   1/2, 2/3, 1/2, 2/5
    # All-point: envelope is 1 on (0, 1/3] and max(2/3, 1/2, 2/5) = 2/3 on (1/3, 2/3], 0 after:
    #   AP = 1/3 * 1 + 1/3 * 2/3 = 5/9
    # 11-point: t = 0, .1, .2, .3 -> max prec at recall >= t = 1      (4 points)
    #           t = .4, .5, .6    -> max prec at recall >= t = 2/3    (3 points)
    #           t = .7 ... 1.0    -> no recall reaches t -> 0         (4 points)
    #   AP = (4 * 1 + 3 * 2/3) / 11 = 6/11
    gts = [(_boxes([0, 0, 10, 10], [20, 20, 30, 30]), _no_difficult(2)), (_boxes([0, 0, 10, 10]), _no_difficult(1))]
    dets = [
        (_boxes([0, 0, 10, 10], [0, 0, 10, 10], [100, 100, 110, 110]), np.array([0.9, 0.6, 0.5])),
        (_boxes([50, 50, 60, 60], [0, 0, 10, 10]), np.array([0.8, 0.7])),
    ]
    ap, recall, precision, npos = voc_class_ap(dets, gts, use_07_metric=False)
    assert npos == 3
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 1 / 2, 2 / 5])
    assert ap == pytest.approx(5 / 9)
    ap07, *_ = voc_class_ap(dets, gts, use_07_metric=True)
    assert ap07 == pytest.approx(6 / 11)
    # The same curve through average_precision directly.
    assert average_precision(recall, precision, use_07_metric=False) == pytest.approx(5 / 9)
    assert average_precision(recall, precision, use_07_metric=True) == pytest.approx(6 / 11)


def test_no_detections_gives_zero_ap():
    gts = [(_boxes([0, 0, 10, 10]), _no_difficult(1))]
    dets = [(np.zeros((0, 4)), np.zeros(0))]
    for use_07 in (False, True):
        ap, recall, precision, npos = voc_class_ap(dets, gts, use_07_metric=use_07)
        assert ap == 0.0 and npos == 1 and recall.size == 0 and precision.size == 0


# (c) ----------------------------------------------------------------------------------------
def test_detection_on_difficult_gt_is_ignored_and_difficult_not_in_npos():
    # gt0 normal, gt1 difficult. The top-scoring detection (and a duplicate of it) hit the
    # difficult gt: both are neither TP nor FP, so the TP on gt0 keeps precision 1.
    gts = [(_boxes([0, 0, 10, 10], [20, 20, 30, 30]), np.array([False, True]))]
    dets = [(_boxes([20, 20, 30, 30], [20, 20, 30, 30], [0, 0, 10, 10]), np.array([0.9, 0.85, 0.8]))]
    ap, recall, precision, npos = voc_class_ap(dets, gts)
    assert npos == 1
    np.testing.assert_allclose(recall, [1.0])
    np.testing.assert_allclose(precision, [1.0])
    assert ap == pytest.approx(1.0)
    # Identical to not having made the difficult detections at all.
    ap_without, recall_without, precision_without, _ = voc_class_ap([(_boxes([0, 0, 10, 10]), np.array([0.8]))], gts)
    assert ap == ap_without
    np.testing.assert_array_equal(precision, precision_without)


def test_only_difficult_gts_means_class_absent():
    gts = [(_boxes([0, 0, 10, 10]), np.array([True]))]
    dets = [(_boxes([0, 0, 10, 10]), np.array([0.9]))]
    ap, _, _, npos = voc_class_ap(dets, gts)
    assert npos == 0 and math.isnan(ap)


# (d) ----------------------------------------------------------------------------------------
def test_iou_exactly_at_threshold_is_not_a_match():
    gt = _boxes([0, 0, 10, 10])
    det = _boxes([0, 0, 10, 5])  # IoU = 50 / 100 = 0.5 exactly
    assert pairwise_iou(det, gt)[0, 0] == 0.5
    gts = [(gt, _no_difficult(1))]
    dets = [(det, np.array([0.9]))]
    ap, _, precision, _ = voc_class_ap(dets, gts, iou_thresh=0.5)
    assert ap == 0.0 and precision[0] == 0.0  # FP
    ap_lower_thresh, *_ = voc_class_ap(dets, gts, iou_thresh=0.49)
    assert ap_lower_thresh == pytest.approx(1.0)


# (e) ----------------------------------------------------------------------------------------
def test_pixel_plus_one_widths_change_iou_and_the_match():
    gt = _boxes([0, 0, 4, 4])
    det = _boxes([0, 0, 4, 2])
    # continuous: inter 4*2 = 8, union 16           -> 0.5  (not > 0.5)
    # +1 pixel:   inter 5*3 = 15, union 25          -> 0.6
    assert pairwise_iou(det, gt)[0, 0] == pytest.approx(0.5)
    assert pairwise_iou(det, gt, pixel_plus_one=True)[0, 0] == pytest.approx(0.6)
    # Touching 1-pixel boxes: continuous IoU 0, inclusive pixels share one pixel: 1 / (4 + 4 - 1).
    assert pairwise_iou(_boxes([1, 1, 2, 2]), _boxes([2, 2, 3, 3]))[0, 0] == 0.0
    assert pairwise_iou(_boxes([1, 1, 2, 2]), _boxes([2, 2, 3, 3]), pixel_plus_one=True)[0, 0] == pytest.approx(1 / 7)
    gts, dets = [(gt, _no_difficult(1))], [(det, np.array([0.9]))]
    assert voc_class_ap(dets, gts)[0] == 0.0
    assert voc_class_ap(dets, gts, pixel_plus_one=True)[0] == pytest.approx(1.0)
    ev = DetectionEvaluator(num_classes=1, pixel_plus_one=True)
    ev.update([{"boxes": det, "scores": np.array([0.9]), "labels": np.array([1])}], [{"boxes": gt, "labels": [1]}])
    assert ev.compute()["map_50"] == pytest.approx(1.0)


# (f) ----------------------------------------------------------------------------------------
def test_class_without_gt_is_excluded_from_the_mean():
    # class 1: perfect; class 2: one gt, one FP only -> AP 0; class 3: no gt (a stray FP) -> absent.
    target = {"boxes": _boxes([0, 0, 10, 10], [20, 20, 30, 30]), "labels": np.array([1, 2])}
    pred = {
        "boxes": _boxes([0, 0, 10, 10], [60, 60, 70, 70], [40, 40, 50, 50]),
        "scores": np.array([0.9, 0.8, 0.7]),
        "labels": np.array([1, 2, 3]),
    }
    ev = DetectionEvaluator(num_classes=3, class_names=["a", "b", "c"])
    ev.update([pred], [target])
    m = ev.compute()
    assert m["ap_per_class"] == {"a": pytest.approx(1.0), "b": 0.0, "c": None}
    assert m["ap07_per_class"]["c"] is None
    assert m["map_50"] == pytest.approx(0.5)  # (1 + 0) / 2, not / 3
    assert m["map_voc07"] == pytest.approx(0.5)
    json.dumps(m)  # serialisable, no NaN
    table = format_table(m)
    assert "mAP" in table and "50.0" in table and len({len(line) for line in table.splitlines()}) == 1
    md = format_markdown_table(m)
    assert md.splitlines()[0].startswith("| class") and "| c | - | - |" in md


def test_every_class_absent_gives_zero_map():
    ev = DetectionEvaluator(num_classes=2)
    ev.update([{"boxes": np.zeros((0, 4)), "scores": [], "labels": []}], [{"boxes": np.zeros((0, 4)), "labels": []}])
    m = ev.compute()
    assert m["map_50"] == 0.0 and m["map_voc07"] == 0.0
    assert m["ap_per_class"] == {"class_1": None, "class_2": None}


# (g) ----------------------------------------------------------------------------------------
def _random_batch(rng, num_images, num_classes):
    preds, targets = [], []
    for _ in range(num_images):
        g = int(rng.integers(1, 5))
        gt_xy = rng.uniform(0, 100, size=(g, 2))
        gt_boxes = np.concatenate([gt_xy, gt_xy + rng.uniform(10, 40, size=(g, 2))], axis=1)
        gt_labels = rng.integers(1, num_classes + 1, size=g)
        # detections: jittered copies of the gts (some duplicated), plus random boxes
        jitter = gt_boxes[rng.integers(0, g, size=2 * g)] + rng.normal(0, 4, size=(2 * g, 4))
        rand_xy = rng.uniform(0, 100, size=(3, 2))
        rand_boxes = np.concatenate([rand_xy, rand_xy + 20], axis=1)
        det_boxes = np.concatenate([jitter, rand_boxes])
        preds.append(
            {
                "boxes": torch.as_tensor(det_boxes, dtype=torch.float32),
                "scores": torch.rand(len(det_boxes), generator=torch.Generator().manual_seed(int(rng.integers(1e6)))),
                "labels": torch.as_tensor(rng.integers(1, num_classes + 1, size=len(det_boxes))),
            }
        )
        targets.append(
            {
                "boxes": torch.as_tensor(gt_boxes, dtype=torch.float32),
                "labels": torch.as_tensor(gt_labels),
                "difficult": torch.as_tensor(rng.random(g) < 0.2),
            }
        )
    return preds, targets


def test_two_updates_equal_one_update_and_reset_clears():
    rng = np.random.default_rng(0)
    preds, targets = _random_batch(rng, num_images=6, num_classes=3)
    once = DetectionEvaluator(num_classes=3)
    once.update(preds, targets)
    twice = DetectionEvaluator(num_classes=3)
    twice.update(preds[:2], targets[:2])
    twice.update(preds[2:], targets[2:])
    m_once, m_twice = once.compute(), twice.compute()
    assert m_once == m_twice
    assert m_once["num_images"] == 6 and 0.0 < m_once["map_50"] < 1.0
    twice.reset()
    twice.update(preds, targets)
    assert twice.compute() == m_once


def test_labels_out_of_range_are_rejected():
    ev = DetectionEvaluator(num_classes=2)
    with pytest.raises(ValueError):
        ev.update([{"boxes": _boxes([0, 0, 1, 1]), "scores": [0.5], "labels": [0]}], [{"boxes": _boxes(), "labels": []}])


# (h) ----------------------------------------------------------------------------------------
def test_coco_evaluator_perfect_is_one_and_shifted_is_lower():
    from frcnn.evaluation.coco_map import CocoEvaluator

    gt_boxes = torch.tensor([[10.0, 10.0, 110.0, 110.0], [200.0, 50.0, 260.0, 140.0], [30.0, 150.0, 90.0, 230.0]])
    labels = torch.tensor([1, 2, 1])
    target = {"boxes": gt_boxes, "labels": labels}
    perfect = CocoEvaluator()
    perfect.update([{"boxes": gt_boxes.clone(), "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": labels}], [target])
    m = perfect.compute()
    assert set(m) == {"map_coco", "map_coco_50", "map_coco_75", "map_small", "map_medium", "map_large"}
    assert m["map_coco"] == pytest.approx(1.0) and m["map_coco_50"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in m.values())

    shifted = CocoEvaluator()
    shifted.update([{"boxes": gt_boxes + 12.0, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": labels}], [target])
    m_shifted = shifted.compute()
    assert m_shifted["map_coco"] < m["map_coco"]
    assert m_shifted["map_coco_50"] == pytest.approx(1.0)  # still IoU > 0.5 for every box


def test_coco_evaluator_ignores_detections_on_difficult_gts():
    from frcnn.evaluation.coco_map import CocoEvaluator

    target = {
        "boxes": np.array([[10.0, 10.0, 110.0, 110.0], [200.0, 50.0, 260.0, 140.0]]),
        "labels": np.array([1, 1]),
        "difficult": np.array([False, True]),
    }
    pred = {"boxes": target["boxes"].copy(), "scores": np.array([0.5, 0.9]), "labels": np.array([1, 1])}
    ev = CocoEvaluator()
    ev.update([pred], [target])
    assert ev.compute()["map_coco"] == pytest.approx(1.0)
