"""COCO AP: frcnn's evaluator uses faster_coco_eval (minutes -> seconds at 5k images, BENCHMARKS.md) and gives
pycocotools' numbers to 1e-4 on the same detections: every size range, crowd ground truths, images without
ground truth or without detections."""

import pytest
import torch

from frcnn.evaluation.coco_map import CocoEvaluator

NUM_CLASSES = 6


def generated_set(num_images=40, seed=0):
    """(predictions, targets) in frcnn's dict format: objects from 10 px (COCO 'small') to 300 px ('large'),
    detections near the ground truth (jittered, some with the wrong class) plus false positives, crowd
    regions as ``difficult``, and a few images with no ground truth or no detections."""
    g = torch.Generator().manual_seed(seed)

    def boxes(n):
        side = 10 * 30 ** torch.rand(n, 2, generator=g)  # 10..300 px
        corner = torch.rand(n, 2, generator=g) * (640 - side)
        return torch.cat([corner, corner + side], dim=1)

    predictions, targets = [], []
    for index in range(num_images):
        num_gt = 0 if index % 9 == 4 else int(torch.randint(1, 8, (1,), generator=g))
        gt_boxes, gt_labels = boxes(num_gt), torch.randint(1, NUM_CLASSES + 1, (num_gt,), generator=g)
        crowd = torch.rand(num_gt, generator=g) < 0.1
        jitter = torch.randn(num_gt, 4, generator=g) * gt_boxes[:, 2:].sub(gt_boxes[:, :2]).repeat(1, 2) * 0.08
        hit_labels = torch.where(torch.rand(num_gt, generator=g) < 0.8, gt_labels, (gt_labels % NUM_CLASSES) + 1)
        num_false = 0 if index % 11 == 7 else int(torch.randint(0, 12, (1,), generator=g))
        keep = index % 11 != 7  # some images without any detection
        det_boxes = torch.cat([gt_boxes + jitter, boxes(num_false)])[: None if keep else 0]
        det_labels = torch.cat([hit_labels, torch.randint(1, NUM_CLASSES + 1, (num_false,), generator=g)])[
            : None if keep else 0]
        predictions.append({"boxes": det_boxes, "labels": det_labels, "scores": torch.rand(len(det_boxes), generator=g)})
        targets.append({"boxes": gt_boxes, "labels": gt_labels, "difficult": crowd})
    return predictions, targets


def evaluate(backend, predictions, targets):
    evaluator = CocoEvaluator(backend=backend)
    for start in range(0, len(predictions), 8):
        evaluator.update(predictions[start : start + 8], targets[start : start + 8])
    return evaluator.compute()


def test_the_default_backend_is_faster_coco_eval():
    assert CocoEvaluator().backend == "faster_coco_eval"


@pytest.mark.parametrize("seed", [0, 1])
def test_faster_coco_eval_gives_pycocotools_ap_to_1e_4(seed):
    predictions, targets = generated_set(seed=seed)
    reference = evaluate("pycocotools", predictions, targets)
    fast = evaluate("faster_coco_eval", predictions, targets)
    assert set(fast) == set(reference)
    assert 0.05 < reference["map_coco"] < 0.95 and min(reference.values()) >= 0  # a set that tests something
    for key, value in reference.items():
        assert fast[key] == pytest.approx(value, abs=1e-4), key
