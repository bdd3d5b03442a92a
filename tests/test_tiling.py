"""Tiled inference (frcnn.inference.tiling, Detector(tile=...), frcnn-detect --tile, scripts/eval.py tile=):
where tiles fall, how boxes come back, the merge, the caps, batches, and the same scores as without tiles
where a tile is the whole image."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from frcnn.cli.detect import main as detect_main
from frcnn.cli.eval import evaluate_checkpoint
from frcnn.data.synthetic import CLASS_NAMES, ShapesDataset
from frcnn.evaluation.voc_ap import DetectionEvaluator
from frcnn.inference.detector_file import save_detector
from frcnn.inference.predictor import Detector
from frcnn.inference.tiling import image_detection_cap, merge_tiles, tile_origins, tile_windows
from frcnn.modeling.build import build_model
from tests.conftest import compose_config
from tests.test_eval_detect import compose_eval


def test_tiles_step_by_the_overlap_and_the_last_ends_at_the_edge():
    assert tile_origins(1249, 400, 0.2) == [0, 320, 640, 849]  # the trees' photo: 4 x 3 tiles
    assert tile_origins(1035, 400, 0.2) == [0, 320, 635]
    assert tile_origins(1249, 400, 0.0) == [0, 400, 800, 849]
    assert tile_origins(400, 400, 0.2) == [0] and tile_origins(300, 400, 0.2) == [0]
    assert tile_windows(300, 500, 400, 0.5) == [(0, 0, 400, 300), (100, 0, 500, 300)]  # a short side: one row


@pytest.mark.parametrize("size, tile, overlap", [(1249, 400, 0.2), (1000, 256, 0.25), (777, 100, 0.1), (401, 400, 0.2)])
def test_every_object_no_larger_than_the_overlap_lies_inside_a_tile(size, tile, overlap):
    origins = tile_origins(size, tile, overlap)
    assert origins[0] == 0 and origins[-1] + tile == size
    width = round(overlap * tile)
    for start in range(0, size - width + 1):
        assert any(o <= start and start + width <= o + tile for o in origins), start


def test_merge_keeps_one_box_per_object_and_class_and_the_cap():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.6])
    labels = torch.tensor([1, 1, 2, 1])
    assert merge_tiles(boxes, scores, labels, 0.5, 10).tolist() == [1, 2, 3]  # box 0: the same object, lower score
    assert merge_tiles(boxes, scores, labels, 0.5, 2).tolist() == [1, 2]
    assert image_detection_cap(64, 128, 64, 2) == 4 and image_detection_cap(30, 30, 64, 100) == 100


class Quadrants(torch.nn.Module):
    """A fake detector: on every network input of size (h, w) the four quadrants, label 1, scores .9 .8 .7 .6 on a
    white input and .5 .4 .3 .2 on a black one, at most its roi_head.detections_per_image of them (the model's
    cap, which tiles lift)."""

    def __init__(self, cap):
        super().__init__()
        self.roi_head = torch.nn.Module()
        self.roi_head.detections_per_image, self.roi_head.nms_thresh = cap, 0.5
        self.seen = []

    def forward(self, images, image_scales=None):
        self.seen.append(([tuple(image.shape) for image in images], list(image_scales)))
        out = []
        for image in images:
            h, w = image.shape[-2:]
            boxes = torch.tensor([[0, 0, w / 2, h / 2], [w / 2, 0, w, h / 2],
                                  [0, h / 2, w / 2, h], [w / 2, h / 2, w, h]])
            keep = slice(0, self.roi_head.detections_per_image)
            scores = torch.tensor([0.5, 0.4, 0.3, 0.2]) + 0.4 * image.mean()
            out.append({"boxes": boxes[keep], "scores": scores[keep],
                        "labels": torch.ones(4, dtype=torch.int64)[keep]})
        return out


def test_tiles_run_at_the_training_magnification_batched_and_their_boxes_come_back_shifted():
    model = Quadrants(cap=2)
    image = np.zeros((64, 128, 3), np.uint8)  # two tiles of 64 side by side: black left, white right
    image[:, 64:] = 255
    found = Detector(model, CLASS_NAMES, scale=128, max_size=1000, tile=64, overlap=0.0, batch_size=4)(image)
    assert model.seen == [([(3, 128, 128)] * 2, [2.0, 2.0])]  # one batch; each tile x2 (64 -> scale 128)
    # per tile all 4 quadrants (no cap per tile), the image keeps 2 x 2 (cap 2 per tile's area): the white tile's
    assert found.boxes.tolist() == [[64, 0, 96, 32], [96, 0, 128, 32], [64, 32, 96, 64], [96, 32, 128, 64]]
    assert found.scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6]) and found.image_size == (64, 128)
    assert model.roi_head.detections_per_image == 2  # the model's cap is back
    model.seen.clear()
    Detector(model, CLASS_NAMES, scale=128, max_size=1000, tile=64, overlap=0.0)(image[:48])  # tiles of 48 x 64
    assert model.seen == [([(3, 96, 128)], [2.0])] * 2  # a full tile's factor, not the rule's 128 / 48


def test_tile_and_overlap_are_checked():
    for options, message in (({"tile": 10}, "tile must be a whole number of pixels >= 32"),
                             ({"tile": 400, "overlap": 1.0}, "overlap must be a fraction of the tile in")):
        with pytest.raises(ValueError, match=message):
            Detector(Quadrants(2), CLASS_NAMES, **options)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run dir as training leaves it (untrained shapes detector, scale 256)."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose_config([], run)
    torch.manual_seed(0)
    model_cfg = {k: cfg[k] for k in ("backbone", "rpn", "roi_head")}
    save_detector(build_model(model_cfg, num_classes=5), model_cfg, list(CLASS_NAMES), run / "final" / "model.pt")
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(cfg), run / ".hydra" / "config.yaml")
    return run


def test_a_tile_the_size_of_the_image_gives_the_untiled_detections(run_dir):
    detector = Detector.from_checkpoint(run_dir / "final" / "model.pt")
    tiled = Detector.from_checkpoint(run_dir / "final" / "model.pt", tile=256)
    image = ShapesDataset("val", num_images=1).raw(0)[0]  # 256 x 256: one tile, the paper rule's factor
    whole, by_tiles = detector(image), tiled(image)
    assert len(whole) > 0
    assert torch.equal(whole.boxes, by_tiles.boxes) and torch.equal(whole.scores, by_tiles.scores)
    assert torch.equal(whole.labels, by_tiles.labels)


def test_eval_by_tiles_scores_as_untiled_where_a_tile_is_the_image_and_detect_writes_tiled_results(run_dir, tmp_path):
    checkpoint = run_dir / "final" / "model.pt"
    common = [f"checkpoint={checkpoint}", "data.num_val=3", "batch_size=1", "coco=false"]
    whole = evaluate_checkpoint(compose_eval([*common, f"out_dir={tmp_path / 'whole'}"]))
    tiled = evaluate_checkpoint(compose_eval([*common, f"out_dir={tmp_path / 'tiled'}", "tile=256"]))
    assert tiled["map_50"] == whole["map_50"] > 0 and tiled["num_detections"] == whole["num_detections"]
    assert tiled["tile"] == 256 and "proposal_recall" not in tiled  # proposals are per tile
    # tiles of 128 at scale 192 (x1.5): the images in their own pixels, scored as the Detector finds them
    smaller = evaluate_checkpoint(compose_eval([*common, f"out_dir={tmp_path / 'small'}", "tile=128", "overlap=0.25",
                                                "scale=192"]))
    assert smaller["tile"] == 128 and smaller["overlap"] == 0.25
    assert json.loads((tmp_path / "small" / "metrics.json").read_text())["tile"] == 128
    detector = Detector.from_checkpoint(checkpoint, scale=192, tile=128, overlap=0.25)
    evaluator = DetectionEvaluator(len(CLASS_NAMES), list(CLASS_NAMES))
    for image, boxes, labels in (ShapesDataset("val", num_images=3).raw(i) for i in range(3)):
        found = detector(image)
        evaluator.update([{"boxes": found.boxes, "scores": found.scores, "labels": found.labels}],
                         [{"boxes": boxes, "labels": labels}])
    assert evaluator.compute()["map_50"] == smaller["map_50"] != whole["map_50"]

    from PIL import Image

    Image.fromarray(ShapesDataset("val", num_images=1).raw(0)[0]).save(tmp_path / "a.png")
    assert detect_main([str(checkpoint), str(tmp_path / "a.png"), "--out-dir", str(tmp_path / "det"), "--tile", "128",
                        "--overlap", "0.25", "--batch-size", "4", "--score-thresh", "0"]) == 0
    results = json.loads((tmp_path / "det" / "detections.json").read_text())
    expected = Detector.from_checkpoint(checkpoint, tile=128, overlap=0.25)(tmp_path / "a.png")
    assert len(results) == len(expected) > 0
