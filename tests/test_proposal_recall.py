"""Proposal recall vs. IoU (paper Fig. 4): hand-made boxes with known recall, then a real RPN."""

import json

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from frcnn.data.build import build_dataset
from frcnn.data.transforms import collate_detection
from frcnn.evaluation.plots import plot_proposal_recall
from frcnn.evaluation.proposal_recall import (
    PAPER_IOU_THRESHOLDS,
    format_recall_table,
    proposal_recall,
    ranked_proposals,
    recall_at_iou,
)
from frcnn.modeling.build import build_model
from tests.conftest import compose_config

KEYS = ["0.50", "0.55", "0.60", "0.65", "0.70", "0.75", "0.80", "0.85", "0.90", "0.95"]


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def test_paper_thresholds_are_point_five_to_point_nine_five_with_clean_keys():
    result = recall_at_iou([boxes([0, 0, 10, 10])], [boxes([0, 0, 10, 10])], top_ns=[300])
    assert list(result["recall"]["300"]) == KEYS
    assert PAPER_IOU_THRESHOLDS[2] == 0.6  # not 0.6000000000000001
    assert result["recall"]["300"] == {k: 1.0 for k in KEYS} and result["average_recall"]["300"] == 1.0


def test_recall_steps_down_past_the_proposals_iou():
    # proposal covers 7.2 of the gt's 10 rows: IoU 0.72 -> recalled at 0.50..0.70, not at 0.75..0.95
    result = recall_at_iou([boxes([0, 0, 10, 7.2])], [boxes([0, 0, 10, 10])], top_ns=[300])
    assert result["recall"]["300"] == {k: (1.0 if float(k) <= 0.7 else 0.0) for k in KEYS}
    assert result["average_recall"]["300"] == pytest.approx(0.5)


def test_only_the_top_n_proposals_count_in_rank_order():
    ranked = boxes([50, 50, 60, 60], [0, 0, 10, 10])  # the matching proposal is ranked second
    result = recall_at_iou([ranked], [boxes([0, 0, 10, 10])], top_ns=[1, 2], iou_thresholds=[0.5])
    assert result["recall"] == {"1": {"0.50": 0.0}, "2": {"0.50": 1.0}}


def test_difficult_gt_is_left_out_of_the_denominator():
    gts = boxes([0, 0, 10, 10], [100, 100, 120, 120])  # the second is difficult and not covered
    result = recall_at_iou([boxes([0, 0, 10, 10])], [gts], [torch.tensor([False, True])],
                           top_ns=[300], iou_thresholds=[0.5])
    assert result["recall"]["300"]["0.50"] == 1.0 and result["num_gt"] == 1
    # without the flag the uncovered gt counts: recall 1/2
    result = recall_at_iou([boxes([0, 0, 10, 10])], [gts], top_ns=[300], iou_thresholds=[0.5])
    assert result["recall"]["300"]["0.50"] == 0.5


def test_fewer_proposals_than_n_and_pooling_over_images():
    proposals = [boxes([0, 0, 10, 10], [20, 20, 30, 30]),  # image 0: 2 proposals, both gts found
                 boxes([0, 0, 5, 5]),  # image 1: one proposal, misses its gt (IoU 0.25)
                 torch.zeros(0, 4)]  # image 2: no proposal at all
    gts = [boxes([0, 0, 10, 10], [20, 20, 30, 30]), boxes([0, 0, 10, 10]), boxes([0, 0, 10, 10])]
    result = recall_at_iou(proposals, gts, top_ns=[300, 1000], iou_thresholds=[0.5, 0.9])
    for n in ("300", "1000"):
        assert result["recall"][n] == {"0.50": pytest.approx(2 / 4), "0.90": pytest.approx(2 / 4)}
        assert result["mean_proposals_per_image"][n] == pytest.approx(1.0)  # (2 + 1 + 0) / 3
    assert (result["num_gt"], result["num_images"]) == (4, 3)


def test_no_ground_truth_gives_undefined_recall_and_bad_settings_name_the_argument():
    result = recall_at_iou([boxes([0, 0, 10, 10])], [torch.zeros(0, 4)], top_ns=[300], iou_thresholds=[0.5])
    assert result["recall"]["300"]["0.50"] is None and result["average_recall"]["300"] is None
    json.dumps(result)  # JSON-ready
    with pytest.raises(ValueError, match="top_ns"):
        recall_at_iou([], [], top_ns=[0])
    with pytest.raises(ValueError, match="iou_thresholds"):
        recall_at_iou([], [], iou_thresholds=[1.5])
    with pytest.raises(ValueError, match="2 images of proposals but 1"):
        recall_at_iou([boxes(), boxes()], [boxes()])


# ----------------------------------------------------------------------------- with a real RPN
@pytest.fixture(scope="module")
def model_and_loader(tmp_path_factory):
    cfg = compose_config(["data.num_val=4"], tmp_path_factory.mktemp("cfg"))
    torch.manual_seed(0)
    model = build_model({k: cfg[k] for k in ("backbone", "rpn", "roi_head")}, num_classes=5).eval()
    loader = DataLoader(build_dataset(cfg["data"], "val"), batch_size=2, collate_fn=collate_detection)
    return model, loader


def test_ranked_proposals_extend_the_test_proposals_and_restore_the_settings(model_and_loader):
    model, loader = model_and_loader
    images, _ = next(iter(loader))
    saved = model.rpn.test_proposals
    test_time, _ = model.propose(images)  # post_nms_top_n = 300
    extended = ranked_proposals(model, images, 2000)
    assert model.rpn.test_proposals is saved and not model.training
    for short, long in zip(test_time, extended):
        assert len(long) > len(short) == 300  # an untrained RPN on 256 px images keeps > 300 after NMS
        assert torch.equal(long[: len(short)], short)  # same ranking: top 300 is a prefix of top 2000


def test_detect_and_rank_equals_separate_detection_and_ranking_passes(model_and_loader):
    """Evaluation's single conv pass gives what forward + ranked_proposals give with two."""
    model, loader = model_and_loader
    images, _ = next(iter(loader))
    detections, ranked = model.detect_and_rank(images, 2000)
    with torch.no_grad():
        separate = model(images)
    for one_pass, two_passes in zip(detections, separate):
        assert all(torch.equal(one_pass[k], two_passes[k]) for k in ("boxes", "scores", "labels"))
    for one_pass, two_passes in zip(ranked, ranked_proposals(model, images, 2000)):
        assert torch.equal(one_pass, two_passes)


def test_proposal_recall_on_a_split_grows_with_n_and_falls_with_iou(model_and_loader, tmp_path):
    model, loader = model_and_loader
    result = proposal_recall(model, loader, top_ns=(300, 1000, 2000))
    assert set(result["recall"]) == {"300", "1000", "2000"} and result["num_images"] == 4
    assert result["num_gt"] == sum(len(t["boxes"]) for _, targets in loader for t in targets)
    for n in ("300", "1000", "2000"):
        values = list(result["recall"][n].values())
        assert all(a >= b for a, b in zip(values, values[1:]))  # recall falls as IoU rises
    for key in KEYS:  # more proposals never lose a gt
        assert result["recall"]["300"][key] <= result["recall"]["1000"][key] <= result["recall"]["2000"][key]
    assert "300" in format_recall_table(result)

    path = plot_proposal_recall(result, tmp_path / "recall.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
