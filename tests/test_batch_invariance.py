"""Evaluation and proposal files do not depend on how images are batched (issue 11, rule 3).

The paper tests one image at a time. Zero padding changes the conv features near the padded
border, so a model that pads an image to a larger batch-mate's size gives it other proposals and
detections. FasterRCNN runs each group of one padded size on its own; with images of mixed sizes
and orientations (a VOCdevkit tree written here), batch size 1 and 4 give bit-identical
detections, metrics and proposal files on the CPU.
"""

import pytest
import torch

from frcnn.data.build import build_dataset
from frcnn.engine.proposal_files import generate_proposal_file, load_proposal_file
from frcnn.engine.recipes import model_config
from frcnn.evaluation.eval_data import build_eval_loader
from frcnn.evaluation.evaluate import evaluate_split
from frcnn.modeling.build import build_model
from frcnn.modeling.faster_rcnn import padded_size_groups
from frcnn.modeling.rpn import ProposalSettings
from tests.data_trees import TREE_CLASSES, write_voc_tree

# id -> (width, height, objects): landscape, portrait and square images of five padded sizes at scale 120
MIXED_IMAGES = {
    "000001": (160, 120, [("box", (11, 21, 60, 80), 0), ("disc", (81, 11, 140, 70), 0)]),
    "000002": (120, 160, [("disc", (21, 31, 100, 110), 0)]),
    "000003": (200, 120, [("box", (1, 1, 50, 40), 0), ("disc", (101, 51, 150, 110), 1)]),
    "000004": (130, 130, [("box", (31, 41, 90, 120), 0)]),
    "000005": (120, 180, [("disc", (41, 21, 100, 100), 0), ("box", (10, 110, 70, 170), 0)]),
    "000006": (160, 120, [("disc", (41, 21, 120, 100), 0)]),
}
SPLITS = {"trainval": ["000001", "000002", "000003", "000004", "000005"], "test": list(MIXED_IMAGES)}


@pytest.fixture(scope="module")
def mixed_voc(tmp_path_factory):
    """(config with the mixed-size VOC tree, random-init small detector in eval mode)."""
    from tests.conftest import compose_config

    root = write_voc_tree(tmp_path_factory.mktemp("voc_mixed"), MIXED_IMAGES, SPLITS)
    cfg = compose_config(["data=voc", f"data.root={root}", f"data.classes=[{','.join(TREE_CLASSES)}]",
                          "data.scales=[120]", "data.num_workers=0", "backbone=small"], root / "run")
    torch.manual_seed(0)
    model = build_model(model_config(cfg), len(TREE_CLASSES)).eval()
    return cfg, model


def test_mixed_sizes_would_be_padded_differently_in_one_batch(mixed_voc):
    """The control: the data really mixes padded sizes within a batch of 4, and running such a
    batch as one padded tensor (the old behaviour) changes the detections."""
    cfg, model = mixed_voc
    images, _ = next(iter(build_eval_loader(cfg["data"], "val", 4)))
    assert len(padded_size_groups(images, model.size_divisible)) >= 3
    with torch.no_grad():
        alone = [model([image])[0] for image in images]
        padded_together = model._detect_same_size(images, None)[0]  # one zero-padded batch of mixed sizes
    assert any(not torch.equal(a["scores"], b["scores"]) for a, b in zip(alone, padded_together))


def test_evaluation_is_identical_for_batch_size_1_and_4(mixed_voc):
    cfg, model = mixed_voc
    results = {}
    for batch_size in (1, 4):
        detections = []
        metrics, _ = evaluate_split(model, build_eval_loader(cfg["data"], "val", batch_size), list(TREE_CLASSES),
                                   on_batch=lambda images, targets, found, out=detections: out.extend(found))
        results[batch_size] = detections, metrics
    (dets_1, metrics_1), (dets_4, metrics_4) = results[1], results[4]
    assert len(dets_1) == len(dets_4) == len(MIXED_IMAGES)
    for one, four in zip(dets_1, dets_4):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(one[key], four[key]), key  # bit for bit
    assert metrics_1 == metrics_4  # VOC AP, COCO AP and proposal recall, exactly
    assert metrics_1["num_detections"] > 0


def test_proposal_file_is_identical_for_batch_size_1_and_4(mixed_voc, tmp_path):
    cfg, model = mixed_voc
    dataset = build_dataset(cfg["data"], "train")
    settings = ProposalSettings(pre_nms_top_n=-1, post_nms_top_n=2000, nms_thresh=0.7, min_size_px=4.0)
    files = {bs: generate_proposal_file(model, dataset, settings, tmp_path / f"bs{bs}.safetensors", batch_size=bs)
             for bs in (1, 4)}
    proposals = load_proposal_file(files[1], len(SPLITS["trainval"]))
    assert all(len(proposals.boxes(i)) > 0 for i in range(len(proposals)))
    assert files[1].read_bytes() == files[4].read_bytes()  # boxes and scores, bit for bit
