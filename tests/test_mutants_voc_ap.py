"""frcnn.evaluation.voc_ap where tests/test_voc_ap.py left mutants alive (scripts/mutation_test.sh):
the evaluator's own arguments (IoU threshold, +1-pixel widths, the two AP integrations), difficult
ground truth through ``update``, inputs of one box without their batch dimension, the error messages,
``pr_curves`` and the exact text of both AP tables."""

import warnings

import numpy as np
import pytest
import torch

from frcnn.evaluation.voc_ap import (
    DetectionEvaluator,
    average_precision,
    devkit_match,
    format_markdown_table,
    format_table,
    pairwise_iou,
    voc_class_ap,
)
from tests.test_voc_ap import _boxes


def _hand_case() -> tuple[list[dict], list[dict]]:
    """tests/test_voc_ap.py's hand-computed case as two images of class 1: all-point AP 5/9, 11-point 6/11.

    Image A: gts [0,0,10,10], [20,20,30,30]; image B: gt [0,0,10,10] (npos 3). Detections in score order:
    A 0.9 TP, B 0.8 FP, B 0.7 TP, A 0.6 duplicate FP, A 0.5 FP -> recall 1/3 1/3 2/3 2/3 2/3,
    precision 1 1/2 2/3 1/2 2/5."""
    preds = [
        {"boxes": _boxes([0, 0, 10, 10], [0, 0, 10, 10], [100, 100, 110, 110]), "scores": np.array([0.9, 0.6, 0.5]),
         "labels": np.array([1, 1, 1])},
        {"boxes": _boxes([50, 50, 60, 60], [0, 0, 10, 10]), "scores": np.array([0.8, 0.7]), "labels": np.array([1, 1])},
    ]
    targets = [{"boxes": _boxes([0, 0, 10, 10], [20, 20, 30, 30]), "labels": np.array([1, 1])},
               {"boxes": _boxes([0, 0, 10, 10]), "labels": np.array([1])}]
    return preds, targets


def _raster_iou(box_a, box_b, pixel_plus_one: bool) -> float:
    """IoU of two boxes with integer corners in [0, 20] by counting what they cover: unit cells [x, x + 1)
    with x1 <= x < x2 (continuous), or pixels x1 <= x <= x2 (devkit, inclusive); 0 for an empty union."""
    grid = np.arange(21)

    def covered(box):
        x1, y1, x2, y2 = box
        upto = np.less_equal if pixel_plus_one else np.less
        return ((grid >= y1) & upto(grid, y2))[:, None] & ((grid >= x1) & upto(grid, x2))[None, :]

    a, b = covered(box_a), covered(box_b)
    union = (a | b).sum()
    return (a & b).sum() / union if union else 0.0


@pytest.mark.parametrize("pixel_plus_one", [False, True])
def test_pairwise_iou_equals_counting_the_covered_pixels(pixel_plus_one):
    """Every pair of 40 random boxes (integer corners, sides 0 to 6 px, so many pairs are disjoint, touch or
    are empty) against an IoU counted on a grid; float64, no numpy warning for an empty union."""
    rng = np.random.default_rng(3)
    corners = rng.integers(0, 14, size=(40, 2))
    boxes = np.concatenate([corners, corners + rng.integers(0, 7, size=(40, 2))], axis=1).astype(np.float64)
    boxes = np.concatenate([boxes, _boxes([0, 0, 1, 1], [5, 5, 5, 5])])  # a 1-px box (union 1) and an empty one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iou = pairwise_iou(boxes, boxes[::-1], pixel_plus_one)
    expected = [[_raster_iou(a, b, pixel_plus_one) for b in boxes[::-1]] for a in boxes]
    assert iou.dtype == np.float64
    np.testing.assert_allclose(iou, expected, rtol=0, atol=1e-12)
    assert 0 < (iou == 0).mean() < 1 and pairwise_iou(_boxes([0, 0, 1, 1]), _boxes([0, 0, 1, 1]))[0, 0] == 1.0


def test_class_ap_of_no_images_is_absent():
    ap, recall, precision, npos = voc_class_ap([], [])
    assert np.isnan(ap) and npos == 0 and recall.shape == precision.shape == (0,)


def test_class_ap_takes_a_0d_score_of_one_box_and_names_a_count_mismatch():
    gts = [(_boxes([0, 0, 10, 10]), np.array([False]))]
    ap, recall, precision, npos = voc_class_ap([(np.array([0.0, 0, 10, 10]), np.float64(0.9))], gts)
    assert ap == 1.0 and recall.tolist() == [1.0] and precision.tolist() == [1.0] and npos == 1
    with pytest.raises(ValueError, match=r"^image 0: 1 boxes but 2 scores$"):
        voc_class_ap([(_boxes([0, 0, 10, 10]), np.array([0.9, 0.8]))], gts)


def test_class_ap_is_all_point_by_default_and_names_an_image_count_mismatch():
    preds, targets = _hand_case()
    detections = [(p["boxes"], p["scores"]) for p in preds]
    ground_truths = [(t["boxes"], np.zeros(len(t["boxes"]), dtype=bool)) for t in targets]
    assert voc_class_ap(detections, ground_truths)[0] == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match=r"^2 images of detections but 1 of ground truth$"):
        voc_class_ap(detections, ground_truths[:1])


def test_a_detection_in_an_image_without_ground_truth_is_a_false_positive():
    """The top detection lies in an image without a gt of the class: FP (precision 1/2 at the TP after it)."""
    detections = [(_boxes([0, 0, 10, 10]), np.array([0.8])), (_boxes([0, 0, 10, 10]), np.array([0.9]))]
    ground_truths = [(_boxes([0, 0, 10, 10]), np.array([False])), (_boxes(), np.zeros(0, dtype=bool))]
    ap, recall, precision, npos = voc_class_ap(detections, ground_truths)
    assert recall.tolist() == [0.0, 1.0] and precision.tolist() == [0.0, 0.5] and ap == 0.5 and npos == 1


def test_tied_scores_keep_image_order():
    """40 images, one gt and one detection each; the detections of images i % 3 == 0 score 0.9 and are TPs,
    the others score 0.5, TPs in the first 13 of those images and FPs in the last 13. The devkit's stable sort
    keeps ties in image order: 27 TPs, then 13 FPs (an unstable sort mixes FPs among the tied TPs)."""
    gt = _boxes([0, 0, 10, 10])
    tied = [i for i in range(40) if i % 3]
    detections = [(gt if i % 3 == 0 or i in tied[:13] else _boxes([50, 50, 60, 60]), np.array([0.9 if i % 3 == 0 else 0.5]))
                  for i in range(40)]
    ap, recall, precision, _ = voc_class_ap(detections, [(gt, np.array([False]))] * 40)
    np.testing.assert_array_equal(precision, [1.0] * 27 + [27 / (27 + k) for k in range(1, 14)])
    assert ap == pytest.approx(27 / 40)


def test_difficult_flags_as_integers_and_as_one_0d_flag():
    """VOC's <difficult> is 0 / 1: integer flags count as booleans (not bitwise-negated ints), and one gt's
    flag may come without its batch dimension."""
    gts = [(_boxes([0, 0, 10, 10], [20, 20, 30, 30]), [0, 1])]
    dets = [(_boxes([0, 0, 10, 10]), np.array([0.9]))]
    ap, _, _, npos = voc_class_ap(dets, gts)
    assert npos == 1 and ap == 1.0
    evaluator = DetectionEvaluator(num_classes=1)
    evaluator.update([{"boxes": dets[0][0], "scores": [0.9], "labels": [1]}],
                     [{"boxes": gts[0][0], "labels": [1, 1], "difficult": [0, 1]}])
    assert evaluator.pr_curves()["class_1"]["npos"] == 1
    ap, _, _, npos = voc_class_ap(dets, [(np.array([0.0, 0, 10, 10]), np.bool_(False))])
    assert npos == 1 and ap == 1.0


def test_absent_class_gives_a_nan_recall_per_counted_detection():
    ap, recall, precision, npos = voc_class_ap([(_boxes([50, 50, 60, 60]), np.array([0.9]))],
                                               [(_boxes([0, 0, 10, 10]), np.array([True]))])
    assert np.isnan(ap) and npos == 0 and recall.shape == (1,) and np.isnan(recall).all() and precision.tolist() == [0.0]


# float32 boxes (a model's output) whose IoU is 0.50000000447 in float64, the devkit's double precision,
# and exactly 0.5 when computed in float32: a match only when the boxes are taken to float64 first.
DET_F32 = [1220.2647705078125, 1846.4468994140625, 3094.2490234375, 3425.47705078125]
GT_F32 = [1023.6432495117188, 1900.9273681640625, 2303.221923828125, 3459.24365234375]


def test_float32_boxes_are_matched_in_float64():
    det, gt = np.array([DET_F32], dtype=np.float32), np.array([GT_F32], dtype=np.float32)
    assert pairwise_iou(det.astype(np.float64), gt.astype(np.float64))[0, 0] > 0.5 >= pairwise_iou(det, gt)[0, 0]
    assert voc_class_ap([(det, np.array([0.9], dtype=np.float32))], [(gt, np.array([False]))])[0] == 1.0
    evaluator = DetectionEvaluator(num_classes=1)
    evaluator.update([{"boxes": torch.tensor([DET_F32]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}],
                     [{"boxes": torch.tensor([GT_F32]), "labels": torch.tensor([1])}])
    assert evaluator.compute()["map_50"] == 1.0


def test_predictions_that_require_grad_are_taken_as_values():
    boxes = torch.tensor([[0.0, 0, 10, 10]], requires_grad=True)
    scores = torch.tensor([0.9], requires_grad=True)
    evaluator = DetectionEvaluator(num_classes=1)
    evaluator.update([{"boxes": boxes * 1, "scores": scores * 1, "labels": torch.tensor([1])}],
                     [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}])
    assert evaluator.compute()["map_50"] == 1.0


@pytest.mark.parametrize("use_07_metric, expected", [(False, 5 / 9), (True, 6 / 11)])
def test_average_precision_flattens_a_curve_of_any_shape(use_07_metric, expected):
    recall = np.array([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    precision = np.array([1, 1 / 2, 2 / 3, 1 / 2, 2 / 5])
    assert average_precision(recall[:, None], precision[:, None], use_07_metric) == pytest.approx(expected)
    assert average_precision(np.float64(1.0), np.float64(0.5), use_07_metric) == pytest.approx(0.5)  # one point, 0-d
    with pytest.raises(ValueError, match=r"^recall \(5,\) and precision \(4,\) differ in shape$"):
        average_precision(recall, precision[:4], use_07_metric)


def test_evaluator_reports_the_all_point_and_the_11_point_ap_of_the_same_curve():
    preds, targets = _hand_case()
    evaluator = DetectionEvaluator(num_classes=1, class_names=["cat"])
    evaluator.update(preds, targets)
    metrics = evaluator.compute()
    assert metrics["map_50"] == pytest.approx(5 / 9) and metrics["ap_per_class"] == {"cat": pytest.approx(5 / 9)}
    assert metrics["map_voc07"] == pytest.approx(6 / 11) and metrics["ap07_per_class"] == {"cat": pytest.approx(6 / 11)}


def test_devkit_match_gives_every_detection_in_score_order_with_its_gt():
    """The hand case: A 0.9 TP (gt 0), B 0.8 FP, B 0.7 TP (gt 0 of B), A 0.6 duplicate FP, A 0.5 FP."""
    preds, targets = _hand_case()
    matches = devkit_match([(p["boxes"], p["scores"]) for p in preds],
                           [(t["boxes"], np.zeros(len(t["boxes"]), dtype=bool)) for t in targets])
    assert set(matches) == {"image", "row", "score", "is_tp", "is_fp", "gt", "npos"}
    assert matches["image"].tolist() == [0, 1, 1, 0, 0] and matches["row"].tolist() == [0, 0, 1, 1, 2]
    assert matches["score"].tolist() == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert matches["is_tp"].tolist() == [True, False, True, False, False]
    assert matches["is_fp"].tolist() == [False, True, False, True, True]
    assert matches["gt"].tolist() == [0, -1, 0, -1, -1] and matches["gt"].dtype == np.int64 and matches["npos"] == 3


def test_devkit_match_names_the_difficult_gt_an_ignored_detection_hit():
    gts = [(_boxes([0, 0, 10, 10], [20, 20, 30, 30]), np.array([False, True]))]
    matches = devkit_match([(_boxes([20, 20, 30, 30], [0, 0, 10, 10], [50, 50, 60, 60]), np.array([0.9, 0.8, 0.7]))],
                           gts, iou_thresh=0.5)
    assert matches["is_tp"].tolist() == [False, True, False] and matches["is_fp"].tolist() == [False, False, True]
    assert matches["gt"].tolist() == [1, 0, -1] and matches["npos"] == 1
    with pytest.raises(ValueError, match=r"^1 images of detections but 2 of ground truth$"):
        devkit_match([(_boxes(), np.zeros(0))], gts * 2)


def test_devkit_match_uses_its_threshold_and_pixel_rule():
    """[0,0,4,2] on [0,0,4,4]: IoU 0.5 continuous, 0.6 with +1-pixel widths."""
    dets, gts = [(_boxes([0, 0, 4, 2]), np.array([0.9]))], [(_boxes([0, 0, 4, 4]), np.array([False]))]
    assert devkit_match(dets, gts)["is_tp"].tolist() == [False]
    assert devkit_match(dets, gts, 0.49)["is_tp"].tolist() == [True]
    assert devkit_match(dets, gts, pixel_plus_one=True)["is_tp"].tolist() == [True]
    assert devkit_match(dets, gts, 0.6, True)["is_tp"].tolist() == [False]


def test_evaluator_keeps_each_image_and_the_class_matches_until_the_next_update():
    preds, targets = _hand_case()
    evaluator = DetectionEvaluator(num_classes=2, iou_thresh=0.55, pixel_plus_one=True)
    evaluator.update(preds, targets)
    images = evaluator.images()
    assert len(images) == 2 and set(images[0][0]) == {"boxes", "scores", "labels"}
    assert set(images[0][1]) == {"boxes", "labels", "difficult"}
    np.testing.assert_array_equal(images[1][0]["scores"], [0.8, 0.7])
    np.testing.assert_array_equal(images[0][1]["boxes"], targets[0]["boxes"])
    assert images[1][1]["labels"].tolist() == [1] and images[1][1]["difficult"].tolist() == [False]
    matches = evaluator.class_matches(1)
    assert matches["is_tp"].tolist() == [True, False, True, False, False] and evaluator.class_matches(1) is matches
    assert evaluator.class_matches(2)["npos"] == 0
    # the evaluator's threshold and pixel rule reach the match: [0,0,4,2] on [0,0,4,4] is IoU 0.6 > 0.55 with
    # +1-pixel widths (0.5 without)
    evaluator.update([{"boxes": _boxes([0, 0, 4, 2]), "scores": [0.95], "labels": [2]}],
                     [{"boxes": _boxes([0, 0, 4, 4]), "labels": [2]}])
    assert evaluator.class_matches(2)["is_tp"].tolist() == [True]
    assert evaluator.class_matches(1) is not matches and len(evaluator.images()) == 3
    evaluator.reset()
    assert evaluator.images() == [] and evaluator.class_matches(1)["npos"] == 0


def test_pr_curves_give_the_curve_the_ap_npos_of_each_class():
    preds, targets = _hand_case()
    evaluator = DetectionEvaluator(num_classes=2, class_names=["cat", "dog"])
    evaluator.update(preds, targets)
    curves = evaluator.pr_curves()
    assert list(curves) == ["cat", "dog"]
    assert set(curves["cat"]) == {"recall", "precision", "ap", "npos"}
    np.testing.assert_allclose(curves["cat"]["recall"], [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(curves["cat"]["precision"], [1, 1 / 2, 2 / 3, 1 / 2, 2 / 5])
    assert curves["cat"]["ap"] == pytest.approx(5 / 9) and curves["cat"]["npos"] == 3
    assert curves["dog"]["ap"] is None and curves["dog"]["npos"] == 0 and len(curves["dog"]["recall"]) == 0


def test_evaluator_matches_at_its_own_iou_threshold():
    """IoU of [0,0,10,5] with [0,0,10,10] is 0.5 exactly: a match only for a threshold below 0.5."""
    pred = {"boxes": _boxes([0, 0, 10, 5]), "scores": np.array([0.9]), "labels": np.array([1])}
    target = {"boxes": _boxes([0, 0, 10, 10]), "labels": np.array([1])}
    for iou_thresh, expected in ((0.5, 0.0), (0.49, 1.0)):
        evaluator = DetectionEvaluator(num_classes=1, iou_thresh=iou_thresh)
        evaluator.update([pred], [target])
        assert evaluator.compute()["map_50"] == pytest.approx(expected), iou_thresh


def test_evaluator_uses_continuous_widths_unless_told_otherwise():
    """[0,0,4,2] on [0,0,4,4]: IoU 0.5 continuous (no match), 0.6 with +1-pixel widths (a match)."""
    pred = {"boxes": _boxes([0, 0, 4, 2]), "scores": np.array([0.9]), "labels": np.array([1])}
    target = {"boxes": _boxes([0, 0, 4, 4]), "labels": np.array([1])}
    evaluator = DetectionEvaluator(num_classes=1)
    evaluator.update([pred], [target])
    assert evaluator.pixel_plus_one is False and evaluator.compute()["map_50"] == 0.0


def test_difficult_ground_truth_given_to_update_is_ignored():
    """A detection on a difficult gt is neither TP nor FP and the difficult gt is not in npos: AP 1 from the
    one normal gt; with the flag left out the second gt would be missed (AP 0.5)."""
    pred = {"boxes": _boxes([20, 20, 30, 30], [0, 0, 10, 10]), "scores": np.array([0.9, 0.8]), "labels": np.array([1, 1])}
    boxes, labels = _boxes([0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]), np.array([1, 1, 1])
    evaluator = DetectionEvaluator(num_classes=1)
    evaluator.update([pred], [{"boxes": boxes, "labels": labels, "difficult": torch.tensor([False, True, True])}])
    assert evaluator.pr_curves()["class_1"]["npos"] == 1 and evaluator.compute()["map_50"] == pytest.approx(1.0)
    evaluator.reset()
    evaluator.update([pred], [{"boxes": boxes, "labels": labels}])  # no "difficult": all three count
    assert evaluator.pr_curves()["class_1"]["npos"] == 3


@pytest.mark.parametrize("field", ["scores", "labels", "target labels", "difficult"])
def test_one_box_without_its_batch_dimension_counts_as_one(field):
    """A 0-d score / label / difficult flag (one detection or gt, e.g. ``scores[i]``) is one value: flattened."""
    pred = {"boxes": torch.tensor([0.0, 0, 10, 10]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    target = {"boxes": torch.tensor([0.0, 0, 10, 10]), "labels": torch.tensor([1]), "difficult": torch.tensor([False])}
    container, key = {"scores": (pred, "scores"), "labels": (pred, "labels"), "target labels": (target, "labels"),
                      "difficult": (target, "difficult")}[field]
    container[key] = container[key][0]  # 0-d
    evaluator = DetectionEvaluator(num_classes=1)
    evaluator.update([pred], [target])
    metrics = evaluator.compute()
    assert metrics["map_50"] == pytest.approx(1.0) and metrics["num_detections"] == 1


def test_a_new_evaluator_computes_every_class_absent():
    metrics = DetectionEvaluator(num_classes=2).compute()
    assert metrics["ap_per_class"] == {"class_1": None, "class_2": None} and metrics["num_images"] == 0


@pytest.mark.parametrize("make, message", [
    (lambda: DetectionEvaluator(num_classes=0), "num_classes must be >= 1, got 0"),
    (lambda: DetectionEvaluator(num_classes=2, class_names=["a"]), "1 class names for 2 classes"),
    (lambda: DetectionEvaluator(1).update([], [{}]), "0 predictions but 1 targets"),
    (lambda: DetectionEvaluator(1).update(
        [{"boxes": _boxes([0, 0, 1, 1]), "scores": [0.5, 0.4], "labels": [1]}], [{"boxes": _boxes(), "labels": []}]),
     "prediction boxes, scores and labels differ in length"),
    (lambda: DetectionEvaluator(1).update(
        [{"boxes": _boxes(), "scores": [], "labels": []}], [{"boxes": _boxes([0, 0, 1, 1]), "labels": []}]),
     "target boxes, labels and difficult differ in length"),
    (lambda: DetectionEvaluator(2).update(
        [{"boxes": _boxes([0, 0, 1, 1]), "scores": [0.5], "labels": [3]}], [{"boxes": _boxes(), "labels": []}]),
     "prediction labels must be in 1..2, got 3..3"),
    (lambda: DetectionEvaluator(2).update(
        [{"boxes": _boxes(), "scores": [], "labels": []}], [{"boxes": _boxes([0, 0, 1, 1]), "labels": [0]}]),
     "target labels must be in 1..2, got 0..0"),
    # labels from a float tensor are class numbers: named as integers
    (lambda: DetectionEvaluator(2).update(
        [{"boxes": _boxes([0, 0, 1, 1]), "scores": [0.5], "labels": torch.tensor([3.0])}],
        [{"boxes": _boxes(), "labels": []}]), "prediction labels must be in 1..2, got 3..3"),
    (lambda: DetectionEvaluator(2).update(
        [{"boxes": _boxes(), "scores": [], "labels": []}], [{"boxes": _boxes([0, 0, 1, 1]), "labels": [0.0]}]),
     "target labels must be in 1..2, got 0..0"),
])
def test_bad_evaluator_input_says_what_is_wrong(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert str(error.value) == message


METRICS = {"ap_per_class": {"aeroplane": 0.5, "b": None, "cat": 0.25},
           "ap07_per_class": {"aeroplane": 0.456, "b": None, "cat": 0.3}, "map_50": 0.375, "map_voc07": 0.378}


def test_plain_table_text():
    """Names left-aligned to the longest, APs right-aligned under their headers, two spaces between, a rule
    of the header's length above the classes and above the means."""
    assert format_table(METRICS).split("\n") == [
        "class      AP@0.5 (all-point)  AP@0.5 (VOC07 11-pt)",
        "-" * 51,
        "aeroplane                50.0                  45.6",
        "b                           -                     -",
        "cat                      25.0                  30.0",
        "-" * 51,
        "mAP                      37.5                  37.8",
    ]


def test_markdown_table_text():
    assert format_markdown_table(METRICS).split("\n") == [
        "| class | AP@0.5 (all-point) | AP@0.5 (VOC07 11-pt) |",
        "|:---|---:|---:|",
        "| aeroplane | 50.0 | 45.6 |",
        "| b | - | - |",
        "| cat | 25.0 | 30.0 |",
        "| **mAP** | **37.5** | **37.8** |",
    ]
