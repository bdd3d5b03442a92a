"""frcnn.Detector: every input kind, original pixels, training scale, batch invariance, threshold."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from frcnn import Detections, Detector
from frcnn.data.synthetic import CLASS_NAMES, ShapesDataset
from frcnn.data.transforms import DetectionTransform
from frcnn.inference.detector_file import save_detector
from frcnn.inference.predictor import same_size_batches
from frcnn.modeling.build import build_model
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def model():
    cfg = compose_config([], "unused")
    torch.manual_seed(0)
    return build_model({k: cfg[k] for k in ("backbone", "rpn", "roi_head")}, num_classes=len(CLASS_NAMES)).eval()


def shapes_image(height: int, width: int, index: int = 0) -> np.ndarray:
    return ShapesDataset("val", num_images=index + 1, image_size=(height, width)).raw(index)[0]  # uint8 [H, W, 3]


def same(a: Detections, b: Detections) -> bool:
    return (torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)
            and a.class_names == b.class_names and a.image_size == b.image_size)


def test_every_input_kind_gives_the_same_detections(model, tmp_path):
    pixels = shapes_image(128, 176)  # shorter side = the scale: the resize is the identity
    Image.fromarray(pixels).save(tmp_path / "a.png")
    detector = Detector(model, CLASS_NAMES, scale=128, max_size=1000)
    from_array = detector(pixels)
    assert len(from_array) > 0 and from_array.image_size == (128, 176)
    assert from_array.class_names == [CLASS_NAMES[i - 1] for i in from_array.labels.tolist()]
    assert not from_array.boxes.is_inference()  # ordinary tensors: a user may edit them in place
    for other in (tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(pixels),
                  torch.from_numpy(pixels).permute(2, 0, 1).float() / 255):
        assert same(detector(other), from_array), type(other)


def test_network_input_is_the_evaluation_transform_and_boxes_come_back_in_original_pixels(model):
    pixels = shapes_image(150, 210)
    detector = Detector(model, CLASS_NAMES, scale=100, max_size=1000)
    tensor, original_hw = detector.network_input(pixels)
    expected, _, _ = DetectionTransform(scales=(100,), max_size=1000, train=False)(
        pixels, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert torch.equal(tensor, expected) and original_hw == (150, 210) and tuple(tensor.shape) == (3, 100, 140)
    with torch.inference_mode():
        raw = model([tensor])[0]
    found = detector(pixels)
    torch.testing.assert_close(found.boxes, raw["boxes"] * 1.5)  # 150 / 100 and 210 / 140
    assert found.boxes[:, 2].max() <= 210 and found.boxes[:, 3].max() <= 150


def close(a: Detections, b: Detections) -> bool:
    """Same detections up to the convolution's float rounding (oneDNN blocks a batch of 3 differently
    from a batch of 1: features differ by ~1e-7, bitwise identity is not on offer)."""
    return (torch.equal(a.labels, b.labels) and a.class_names == b.class_names and a.image_size == b.image_size
            and torch.allclose(a.boxes, b.boxes, rtol=0, atol=1e-3) and torch.allclose(a.scores, b.scores, rtol=0, atol=1e-6))


def test_batching_never_changes_a_result(model):
    images = [shapes_image(h, w, i) for i, (h, w) in enumerate([(96, 128), (128, 96), (96, 128), (96, 160),
                                                                (96, 128), (128, 96)])]
    seen = []
    handle = model.backbone.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    try:
        one_by_one = Detector(model, CLASS_NAMES, scale=96, batch_size=1)(images)
        del seen[:]
        batched = Detector(model, CLASS_NAMES, scale=96, batch_size=4)(images)
    finally:
        handle.remove()
    assert sorted(seen) == sorted([(3, 3, 96, 128), (2, 3, 128, 96), (1, 3, 96, 160)])  # same-size batches only
    assert all(close(a, b) for a, b in zip(one_by_one, batched))
    assert [d.image_size for d in batched] == [img.shape[:2] for img in images]  # input order kept
    assert same_size_batches([(1, 1), (2, 2), (1, 1), (1, 1)], 2) == [[0, 2], [3], [1]]


def test_score_threshold_keeps_the_confident_detections(model):
    pixels = shapes_image(96, 96)
    everything = Detector(model, CLASS_NAMES, scale=96)(pixels)
    cut = float(everything.scores.median())
    confident = Detector(model, CLASS_NAMES, scale=96, score_thresh=cut)(pixels)
    keep = everything.scores >= cut
    assert 0 < len(confident) < len(everything)
    assert torch.equal(confident.boxes, everything.boxes[keep]) and torch.equal(confident.scores, everything.scores[keep])


def test_from_checkpoint_uses_the_training_scale(model, tmp_path):
    cfg = compose_config([], tmp_path)
    model_cfg = {k: cfg[k] for k in ("backbone", "rpn", "roi_head")}
    save_detector(model, model_cfg, list(CLASS_NAMES), tmp_path / "final" / "model.pt")
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(cfg), tmp_path / ".hydra" / "config.yaml")
    detector = Detector.from_checkpoint(tmp_path / "final" / "model.pt", device="cpu")
    assert (detector.scale, detector.max_size) == (cfg["data"]["scales"][0], cfg["data"]["max_size"])
    assert detector.class_names == list(CLASS_NAMES) and not detector.model.training
    assert Detector.from_checkpoint(tmp_path / "final" / "model.pt", scale=64).scale == 64


@pytest.mark.parametrize("bad, message", [
    (torch.rand(3, 32, 32) * 255, r"values in \[0, 1\].*got \[0"),
    (np.zeros((32, 32), np.uint8), r"uint8 \[H, W, 3\].*got uint8 \[32, 32\]"),
    (np.zeros((32, 32, 3), np.float32), r"uint8 \[H, W, 3\].*got float32"),
    ([1, 2, 3], r"cannot detect on a int"),
])
def test_bad_inputs_are_named(model, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Detector(model, CLASS_NAMES, scale=32)(bad)
