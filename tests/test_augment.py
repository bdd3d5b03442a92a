"""The augment config group (frcnn.data.augment): boxes follow the pictures, bad entries stop at start-up."""

from __future__ import annotations

import numpy as np
import pytest

from frcnn.config.schema import check_schema
from frcnn.data.augment import build_augmentations
from frcnn.data.build import build_transform
from frcnn.data.transforms import DetectionTransform
from frcnn.errors import ConfigError

BRIGHT = 250


def picture_with_bright_box(box: tuple[int, int, int, int], hw=(120, 200)) -> np.ndarray:
    """Dark noise with one bright rectangle (x1, y1, x2, y2): where the box goes, the bright pixels must go."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 40, size=(*hw, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = BRIGHT
    return image


def bright_fraction(image_chw, box) -> float:
    """Share of the pixels inside ``box`` (output pixels) that are bright, any channel order or colour shift."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    inside = image_chw[:, y1 + 1:y2 - 1, x1 + 1:x2 - 1].mean(0)  # [h, w], margin for the resize's blur
    return float((inside > 0.5).float().mean())


@pytest.mark.parametrize("augment", ["paper", "photo", "aerial"])
def test_each_choice_composes_checks_and_boxes_follow_the_picture(compose_cfg, tmp_path, augment):
    cfg = compose_cfg([f"augment={augment}", "data.scales=[150]"], tmp_path)
    check_schema(cfg)
    assert cfg["data"]["augment"]["name"] == augment
    transform = build_transform(cfg["data"], train=True, seed=0)
    box = (30, 20, 70, 90)  # not symmetric under any flip or turn of the 120 x 200 picture
    image = picture_with_bright_box(box)
    placements = set()
    for i in range(48):
        transform.reseed([0, i])
        out, boxes, labels = transform(image, np.array([box], dtype=np.float32), np.array([1]))
        assert labels.tolist() == [1] and boxes.shape == (1, 4)
        assert bright_fraction(out, boxes[0].tolist()) > 0.95, (augment, i, boxes)
        placements.add(tuple(int(v) // 8 for v in boxes[0].tolist()) + tuple(out.shape[1:]))
    # paper: 2 placements (flip or not); aerial: the 8 symmetries of the picture; photo: flips x scale jitter
    assert len(placements) >= {"paper": 2, "photo": 4, "aerial": 8}[augment]


def test_evaluation_never_augments(compose_cfg, tmp_path):
    cfg = compose_cfg(["augment=aerial", "data.scales=[150]"], tmp_path)
    transform = build_transform(cfg["data"], train=False)
    assert transform.augment == ()
    image = picture_with_bright_box((30, 20, 70, 90))
    outputs = [transform(image, np.array([[30, 20, 70, 90]], np.float32), np.array([1]))[1] for _ in range(5)]
    assert all(o.tolist() == outputs[0].tolist() for o in outputs)


def test_same_key_same_draw_for_exact_resume(compose_cfg, tmp_path):
    cfg = compose_cfg(["augment=aerial", "data.scales=[150]"], tmp_path)
    a, b = build_transform(cfg["data"], True, seed=0), build_transform(cfg["data"], True, seed=0)
    image = picture_with_bright_box((30, 20, 70, 90))
    box = np.array([[30, 20, 70, 90]], np.float32)
    for key in ([0, 3, 1], [0, 7, 0]):
        a.reseed(key)
        b.reseed(key)
        out_a, boxes_a, _ = a(image, box, np.array([1]))
        out_b, boxes_b, _ = b(image, box, np.array([1]))
        assert boxes_a.tolist() == boxes_b.tolist() and bool((out_a == out_b).all())


def test_a_transform_that_removes_every_box_draws_the_picture_again_without_it():
    crop_away = build_augmentations([{"_target_": "albumentations.Crop", "x_min": 0, "y_min": 0,
                                      "x_max": 20, "y_max": 20}])
    transform = DetectionTransform(scales=(120,), hflip_prob=0.0, seed=0, augment=crop_away)
    image = picture_with_bright_box((30, 20, 70, 90))
    out, boxes, labels = transform(image, np.array([[30, 20, 70, 90]], np.float32), np.array([1]))
    assert labels.tolist() == [1] and tuple(out.shape[1:]) == (120, 200)  # the paper's rescale alone
    assert bright_fraction(out, boxes[0].tolist()) > 0.95
    # a picture without objects stays one
    out, boxes, labels = transform(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert tuple(out.shape[1:]) == (20, 20) and len(boxes) == 0


@pytest.mark.parametrize("entry, message", [
    ({"_target_": "albumentations.VerticalFlp", "p": 0.5}, "did you mean albumentations.VerticalFlip"),
    ({"_target_": "os.system", "command": "true"}, "not an albumentations transform"),
    ({"_target_": "albumentations.VerticalFlip", "q": 0.5}, "'q' are not valid"),
    ({"_target_": "albumentations.VerticalFlip", "p": 2.0}, "rejected its arguments"),
    ({"p": 0.5}, "expected a mapping with _target_"),
])
def test_bad_entries_stop_at_start_up_naming_the_entry(compose_cfg, tmp_path, entry, message):
    cfg = compose_cfg(["augment=aerial"], tmp_path)
    cfg["data"]["augment"]["transforms"].append(entry)
    with pytest.raises(ConfigError, match=r"data\.augment\.transforms\[3\]") as err:
        check_schema(cfg)
    assert message in str(err.value)


def test_each_transform_draws_on_its_own():
    """albumentations seeds every transform of a Compose alike; frcnn gives each its own stream, or a picture
    would be flipped vertically exactly when horizontally, and a multi-scale draw would be tied to the flip."""
    image = picture_with_bright_box((30, 10, 70, 40))  # in the top-left quarter
    box = np.array([[30, 10, 70, 40]], np.float32)
    flips = build_augmentations([{"_target_": "albumentations.VerticalFlip", "p": 0.5}])
    transform = DetectionTransform(scales=(120, 180), hflip_prob=0.5, seed=0, augment=flips)
    seen = set()
    for i in range(40):
        transform.reseed([0, i])
        out, boxes, _ = transform(image, box, np.array([1]))
        height, width = out.shape[1:]
        x1, y1 = float(boxes[0, 0]) / width, float(boxes[0, 1]) / height
        seen.add((height, x1 > 0.5, y1 > 0.5))  # scale drawn, flipped horizontally, flipped vertically
    assert len(seen) == 8


@pytest.mark.parametrize("augment, shifts", [("paper", False), ("photo", True)])
def test_photo_shifts_the_white_balance(augment, shifts):
    """augment=photo moves each colour channel on its own (another camera, light or site: the trees' held-out
    photo is bluer than the training one, docs/CPU_PRESET.md); brightness and contrast jitter alone keep a grey
    picture grey. Checked on the uint8 picture the albumentations list returns."""
    from omegaconf import OmegaConf

    from tests.conftest import REPO_ROOT

    spec = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "augment" / f"{augment}.yaml"))
    transforms = build_augmentations(spec["transforms"])
    grey = np.full((32, 32, 3), 128, dtype=np.uint8)
    spreads = []
    for seed in range(20):
        image = grey
        for transform in transforms:
            transform.set_random_seed(seed)
            image = transform(image=image, bboxes=np.zeros((0, 4)), labels=np.zeros(0))["image"]
        channel_means = image.reshape(-1, 3).mean(0)
        spreads.append(float(channel_means.max() - channel_means.min()))
    assert (max(spreads) > 10) == shifts, spreads


def test_the_own_data_preset_augments_as_photographs(compose_cfg, tmp_path):
    """experiment=cpu_own_data trains with augment=photo (trees, 3 seeds: docs/CPU_PRESET.md)."""
    assert compose_cfg(["experiment=cpu_own_data"], tmp_path)["data"]["augment"]["name"] == "photo"
