"""``roi_head.target_normalization: empirical`` (the authors' alt-opt code, lib/roi_data_layer/roidb.py):
per-class means / stds of the training RoIs' regression targets, against a hand computation; training
targets normalised by them; the saved and the exported detector decode with them."""

import math

import pytest
import torch

from frcnn.data.synthetic import CLASS_NAMES
from frcnn.engine.target_stats import regression_target_statistics
from frcnn.errors import ConfigError
from frcnn.inference.detector_file import load_detector, save_detector
from frcnn.inference.exportable import export_detector, parity, run_exported
from frcnn.modeling.boxes import decode_boxes
from frcnn.modeling.build import build_model
from tests.conftest import compose_config

# one image, 2 classes: gt 1 = [0, 0, 10, 10] (class 1), gt 2 = [20, 0, 40, 20] (class 2)
GT = ([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 40.0, 20.0]], [1, 2])
PROPOSALS = [[[0.0, 0.0, 10.0, 12.0],    # IoU 100/120 with gt 1: t = (0, -1/12, 0, log(10/12))
              [0.0, 0.0, 20.0, 20.0],    # IoU 0.25 with gt 1, 0 with gt 2: not counted
              [22.0, 0.0, 40.0, 20.0]]]  # IoU 0.9 with gt 2: t = (-1/18, 0, log(20/18), 0)
FALLBACK = (0.1, 0.1, 0.2, 0.2)


def test_statistics_equal_a_hand_computation_without_flips():
    """Class 1: its gt (t = 0) and the first proposal; class 2: its gt and the third. Mean of two values
    a, 0 is a / 2, their std |a| / 2; an std of 0 (both values 0) takes the fallback."""
    means, stds = regression_target_statistics([GT], PROPOSALS, num_classes=2, flip_prob=0.0)
    expected_means = [[0, 0, 0, 0], [0, -1 / 24, 0, math.log(10 / 12) / 2], [-1 / 36, 0, math.log(20 / 18) / 2, 0]]
    expected_stds = [list(FALLBACK), [0.1, 1 / 24, 0.2, -math.log(10 / 12) / 2], [1 / 36, 0.1, math.log(20 / 18) / 2, 0.2]]
    torch.testing.assert_close(means, torch.tensor(expected_means), atol=1e-7, rtol=0)
    torch.testing.assert_close(stds, torch.tensor(expected_stds), atol=1e-7, rtol=0)


def test_flipped_copies_centre_t_x():
    """flip_prob 0.5 (the authors' flipped copy of every image): class 2's t_x values are 0, -1/18 and their
    mirrors 0, +1/18: mean 0, std sqrt(2 (1/18)^2 / 4) = 1 / (18 sqrt 2); t_w is unchanged by a flip."""
    means, stds = regression_target_statistics([GT], PROPOSALS, num_classes=2, flip_prob=0.5)
    assert abs(means[2, 0]) < 1e-8 and stds[2, 0] == pytest.approx(1 / (18 * math.sqrt(2)), abs=1e-7)
    assert means[2, 2] == pytest.approx(math.log(20 / 18) / 2, abs=1e-7)


def _empirical_model(seed=0):
    cfg = compose_config(["+roi_head.target_normalization=empirical"], "unused")
    torch.manual_seed(seed)
    model = build_model({k: cfg[k] for k in ("backbone", "rpn", "roi_head")}, num_classes=len(CLASS_NAMES)).eval()
    gen = torch.Generator().manual_seed(seed)
    rows = len(CLASS_NAMES) + 1
    model.roi_head.set_target_statistics(torch.randn(rows, 4, generator=gen) * 0.05,
                                         0.05 + torch.rand(rows, 4, generator=gen) * 0.3)
    return cfg, model


def test_training_targets_are_normalised_per_class_and_decoding_inverts_them():
    _, model = _empirical_model()
    head = model.roi_head
    gt_boxes, gt_labels = torch.tensor([[20.0, 30.0, 90.0, 100.0]]), torch.tensor([3])
    proposals = [torch.tensor([[22.0, 28.0, 95.0, 104.0], [150.0, 150.0, 200.0, 200.0]])]
    torch.manual_seed(0)
    rois, labels, targets = head.sample_rois(proposals, [gt_boxes], [gt_labels])
    fg = torch.nonzero(labels == 3).flatten()
    raw = torch.stack([torch.tensor([(55.0 - r[0] - (r[2] - r[0]) / 2) / (r[2] - r[0]),
                                     (65.0 - r[1] - (r[3] - r[1]) / 2) / (r[3] - r[1]),
                                     math.log(70.0 / (r[2] - r[0])), math.log(70.0 / (r[3] - r[1]))])
                       for r in rois[0][fg].tolist()])  # eq. 2 by hand
    torch.testing.assert_close(targets[fg], (raw - head.target_means[3]) / head.target_stds[3])
    # a prediction equal to the normalised target decodes to the ground-truth box (postprocess' path)
    predicted = torch.zeros(fg.numel(), (len(CLASS_NAMES) + 1) * 4)
    predicted[:, 12:16] = targets[fg]
    boxes = decode_boxes(head.raw_deltas(predicted), rois[0][fg], head.box_weights).reshape(-1, len(CLASS_NAMES) + 1, 4)
    torch.testing.assert_close(boxes[:, 3], gt_boxes.expand(fg.numel(), 4), atol=1e-4, rtol=0)


def test_saved_and_exported_detector_decode_with_the_statistics(tmp_path):
    """The statistics are in the state dict: a reloaded detector gives the in-memory model's detections,
    and the TorchScript graph matches eager frcnn; neither does with the statistics dropped."""
    cfg, model = _empirical_model()
    image = torch.rand(3, 160, 192, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        eager = model([image])[0]
    assert eager["scores"].numel() > 0
    save_detector(model, {k: cfg[k] for k in ("backbone", "rpn", "roi_head")}, list(CLASS_NAMES), tmp_path / "m.pt")
    reloaded, _ = load_detector(tmp_path / "m.pt")
    with torch.inference_mode():
        again = reloaded([image])[0]
    assert all(torch.equal(eager[k], again[k]) for k in ("boxes", "scores", "labels"))
    path = export_detector(model, list(CLASS_NAMES), 256, 1000, "torchscript", tmp_path / "m.ts")
    report = parity(model, run_exported(path, image), image, eager=eager)
    assert report["eager"] == report["exported"] == report["matched"] > 0 and report["max_box_diff_px"] <= 0.5
    plain = model.roi_head.target_stds.clone()
    model.roi_head.target_stds.fill_(1.0)  # statistics ignored: other boxes
    with torch.inference_mode():
        ignored = model([image])[0]["boxes"]
    assert ignored.shape != eager["boxes"].shape or not torch.allclose(ignored, eager["boxes"])
    model.roi_head.target_stds.copy_(plain)


def test_empirical_needs_the_alternating_recipe(compose_cfg, tmp_path):
    from frcnn.config.checks import validate_config

    with pytest.raises(ConfigError, match=r"roi_head\.target_normalization=empirical needs recipe=alternating"):
        validate_config(compose_cfg(["recipe=joint", "+roi_head.target_normalization=empirical"], tmp_path))
    with pytest.raises(ConfigError, match=r"roi_head\.target_normalization='per_class' is not allowed"):
        validate_config(compose_cfg(["+roi_head.target_normalization=per_class"], tmp_path))
