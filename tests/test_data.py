"""Tests for the synthetic shapes data set, the paper-rule transforms and the data module."""

from __future__ import annotations

import math
import pickle
import time

import numpy as np
import pytest
import torch

from frcnn.data.datamodule import DetectionDataModule, build_shapes_datamodule
from frcnn.data.synthetic import ShapesDataset
from frcnn.data.transforms import DetectionTransform, collate_detection, paper_scale_factor

NUM_CLASSES = 5


def small_dataset(**kwargs) -> ShapesDataset:
    defaults = dict(num_images=16, image_size=(128, 160), min_size_px=16, max_size_px=64)
    return ShapesDataset(**(defaults | kwargs))


# ----------------------------------------------------------------------------- data set
def test_item_is_deterministic():
    ds = small_dataset()
    for index in (0, 5, 15):
        image_a, target_a = ds[index]
        image_b, target_b = small_dataset()[index]  # a fresh instance, other call order
        assert torch.equal(image_a, image_b)
        assert torch.equal(target_a["boxes"], target_b["boxes"])
        assert torch.equal(target_a["labels"], target_b["labels"])


def test_different_seeds_give_different_images():
    image_0, _, _ = small_dataset(seed=0).raw(3)
    image_1, _, _ = small_dataset(seed=1).raw(3)
    assert not np.array_equal(image_0, image_1)


def test_train_and_val_splits_are_disjoint():
    train = small_dataset(split="train")
    val = small_dataset(split="val")
    train_images = {train.raw(i)[0].tobytes() for i in range(len(train))}
    val_images = {val.raw(i)[0].tobytes() for i in range(len(val))}
    assert train_images.isdisjoint(val_images)


def test_item_format():
    ds = small_dataset()
    image, target = ds[2]
    assert image.dtype == torch.float32 and image.shape == (3, 128, 160)
    assert 0.0 <= image.min() and image.max() <= 1.0
    n = len(target["labels"])
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
    assert target["labels"].dtype == torch.int64
    assert target["difficult"].dtype == torch.bool and target["difficult"].shape == (n,)
    assert not target["difficult"].any()
    assert target["image_id"] == 2 and isinstance(target["image_id"], int)
    assert target["orig_size"] == (128, 160)
    assert ds.class_names == ("circle", "square", "triangle", "bar", "ring")


def test_boxes_inside_image_non_degenerate_and_labels_valid():
    ds = ShapesDataset(num_images=100, seed=7)
    h, w = ds.image_size_hw
    seen_labels = set()
    for i in range(len(ds)):
        image_u8, boxes_xyxy, labels = ds.raw(i)
        assert image_u8.dtype == np.uint8 and image_u8.shape == (h, w, 3)
        assert 1 <= len(labels) <= 4 and boxes_xyxy.shape == (len(labels), 4)
        assert np.all(boxes_xyxy[:, :2] >= 0)
        assert np.all(boxes_xyxy[:, 2] <= w) and np.all(boxes_xyxy[:, 3] <= h)
        assert np.all(boxes_xyxy[:, 2:] - boxes_xyxy[:, :2] >= 3)  # non-degenerate
        assert np.all((labels >= 1) & (labels <= NUM_CLASSES))
        seen_labels.update(labels.tolist())
    assert seen_labels == set(range(1, NUM_CLASSES + 1))


def test_boxes_are_tight_around_drawn_shapes():
    """Each shape has one flat colour (the most common one in its box on the noisy
    background); all four box edges must touch it, and boxes have integer corners."""
    ds = small_dataset(min_objects=1, max_objects=1)
    for index in range(8):
        image_u8, boxes_xyxy, _ = ds.raw(index)
        assert np.array_equal(boxes_xyxy, np.round(boxes_xyxy))
        x1, y1, x2, y2 = boxes_xyxy[0].astype(int)
        crop = image_u8[y1:y2, x1:x2].reshape(-1, 3)
        colours, counts = np.unique(crop, axis=0, return_counts=True)
        hit = np.all(image_u8[y1:y2, x1:x2] == colours[counts.argmax()], axis=-1)  # [h, w]
        assert hit[0].any() and hit[-1].any() and hit[:, 0].any() and hit[:, -1].any()


def test_empty_images_work():
    ds = small_dataset(min_objects=0, max_objects=0)
    image, target = ds[0]
    assert image.shape == (3, 128, 160)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["difficult"].shape == (0,)
    transformed = small_dataset(min_objects=0, max_objects=0, transform=DetectionTransform(scales=(64,)))
    image, target = transformed[0]
    assert image.shape == (3, 64, 80) and target["boxes"].shape == (0, 4)


def test_some_empty_images_with_min_objects_zero():
    ds = small_dataset(num_images=40, min_objects=0, max_objects=2)
    counts = [len(ds.raw(i)[2]) for i in range(len(ds))]
    assert 0 in counts and max(counts) > 0


def test_index_out_of_range_and_bad_split():
    ds = small_dataset(num_images=3)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError):
        ShapesDataset(split="holdout")


# ----------------------------------------------------------------------------- transforms
@pytest.mark.parametrize(
    ("h", "w", "scale", "max_size", "expected"),
    [
        (375, 500, 600, 1000, 600 / 375),  # shorter side -> 600, longer 800 <= 1000
        (500, 1500, 600, 1000, 1000 / 1500),  # capped: longer side -> 1000
        (1500, 500, 600, 1000, 1000 / 1500),  # portrait, capped
        (800, 1200, 600, 1000, 600 / 800),  # downscale, longer 900 <= 1000
        (100, 100, 600, 1000, 6.0),  # upscale
    ],
)
def test_paper_scale_factor(h, w, scale, max_size, expected):
    assert paper_scale_factor(h, w, scale, max_size) == pytest.approx(expected)


@pytest.mark.parametrize(("h", "w"), [(375, 500), (500, 1500), (60, 40)])
def test_transform_output_size_follows_rule(h, w):
    transform = DetectionTransform(scales=(600,), max_size=1000, train=False)
    image, boxes, labels = transform(np.zeros((h, w, 3), np.uint8), np.array([[1.0, 2.0, 30.0, 40.0]]), [2])
    factor = paper_scale_factor(h, w, 600, 1000)
    assert image.shape == (3, round(h * factor), round(w * factor))
    assert image.dtype == torch.float32
    assert min(image.shape[1:]) == 600 or max(image.shape[1:]) == 1000
    sx, sy = image.shape[2] / w, image.shape[1] / h
    assert torch.allclose(boxes, torch.tensor([[1.0 * sx, 2.0 * sy, 30.0 * sx, 40.0 * sy]]), atol=1e-3)
    assert boxes.dtype == torch.float32 and labels.dtype == torch.int64 and labels.tolist() == [2]


def test_transform_hflip_moves_box_consistently():
    h, w = 100, 200
    image = np.zeros((h, w, 3), np.uint8)
    image[10:50, 5:45] = 255  # object at the left
    boxes = np.array([[5.0, 10.0, 45.0, 50.0]], np.float32)
    flip = DetectionTransform(scales=(100,), max_size=1000, hflip_prob=1.0, train=True)
    out_image, out_boxes, _ = flip(image, boxes, [1])
    assert out_image.shape == (3, h, w)
    assert torch.allclose(out_boxes, torch.tensor([[w - 45.0, 10.0, w - 5.0, 50.0]]))
    x1, y1, x2, y2 = out_boxes[0].int().tolist()
    assert out_image[:, y1:y2, x1:x2].min() == 1.0  # the pixels moved with the box
    assert out_image[:, :, : w // 2].max() == 0.0
    no_flip = DetectionTransform(scales=(100,), max_size=1000, hflip_prob=0.0, train=True)
    assert torch.allclose(no_flip(image, boxes, [1])[1], torch.from_numpy(boxes))


def test_eval_transform_is_deterministic_and_unflipped():
    transform = DetectionTransform(scales=(50, 300), max_size=1000, hflip_prob=1.0, train=False)
    boxes = np.array([[0.0, 0.0, 10.0, 10.0]])
    for _ in range(3):
        image, out_boxes, _ = transform(np.zeros((100, 100, 3), np.uint8), boxes, [1])
        assert image.shape == (3, 50, 50)
        assert torch.allclose(out_boxes, torch.tensor([[0.0, 0.0, 5.0, 5.0]]))


def test_multiscale_training_draws_every_scale():
    transform = DetectionTransform(scales=(40, 60, 80), max_size=1000, hflip_prob=0.5, seed=0)
    sizes = {transform(np.zeros((20, 30, 3), np.uint8), np.zeros((0, 4)), [])[0].shape[1] for _ in range(40)}
    assert sizes == {40, 60, 80}


def test_transform_is_picklable():
    transform = DetectionTransform(scales=(64,), hflip_prob=0.0)
    clone = pickle.loads(pickle.dumps(transform))
    image = np.zeros((32, 48, 3), np.uint8)
    assert clone(image, np.zeros((0, 4)), [])[0].shape == (3, 64, 96)


def test_collate_returns_lists():
    ds = small_dataset(transform=DetectionTransform(scales=(64, 96)))
    images, targets = collate_detection([ds[0], ds[1], ds[2]])
    assert isinstance(images, list) and isinstance(targets, list)
    assert len(images) == len(targets) == 3
    assert all(image.ndim == 3 and image.shape[0] == 3 for image in images)
    assert [target["image_id"] for target in targets] == [0, 1, 2]


# ----------------------------------------------------------------------------- data module
def test_datamodule_batches():
    dm = build_shapes_datamodule(
        num_train=5, num_val=3, image_size=(96, 128), scales=(96,), batch_size=2, val_batch_size=2
    )
    assert dm.class_names == ShapesDataset.class_names
    dm.setup("fit")
    train_batches = list(dm.train_dataloader())
    assert [len(images) for images, _ in train_batches] == [2, 2, 1]
    images, targets = train_batches[0]
    assert all(image.shape == (3, 96, 128) for image in images)
    assert all(set(target) >= {"boxes", "labels", "image_id", "difficult", "orig_size"} for target in targets)
    val_batches = list(dm.val_dataloader())
    assert [len(images) for images, _ in val_batches] == [2, 1]
    assert [t["image_id"] for _, ts in val_batches for t in ts] == [0, 1, 2]  # not shuffled


def test_datamodule_from_factories_and_seeded_shuffle():
    def make(seed: int) -> DetectionDataModule:
        return DetectionDataModule(
            lambda: small_dataset(num_images=8), lambda: small_dataset(split="val"), seed=seed
        )

    def order(dm: DetectionDataModule) -> list[int]:
        return [t["image_id"] for _, targets in dm.train_dataloader() for t in targets]

    assert order(make(0)) == order(make(0))
    assert sorted(order(make(0))) == list(range(8))
    assert make(0).num_classes == NUM_CLASSES


def test_generation_is_fast():
    ds = ShapesDataset(num_images=20)
    ds.raw(0)
    start = time.perf_counter()
    for i in range(len(ds)):
        ds.raw(i)
    per_image_ms = (time.perf_counter() - start) / len(ds) * 1e3
    assert per_image_ms < 25  # target is < 5 ms; loose bound for busy CI machines
    assert math.isfinite(per_image_ms)


def test_resize_factor_reads_the_paper_rescale_back_from_the_sizes():
    from frcnn.data.transforms import image_scales, paper_scale_factor, resize_factor, scaled_size_hw

    for orig_hw in [(375, 500), (500, 375), (500, 1500), (333, 499)]:
        factor = paper_scale_factor(*orig_hw, 600, 1000)
        assert abs(resize_factor(scaled_size_hw(*orig_hw, factor), orig_hw) - factor) < 1e-3
    assert resize_factor((600, 800), (375, 500)) == 1.6
    images = [torch.zeros(3, 600, 800), torch.zeros(3, 256, 256)]
    assert image_scales(images, [{"orig_size": (375, 500)}, {}]) == [1.6, 1.0]
