"""PASCAL VOC and COCO datasets on generated trees: box conversion, difficult / crowd handling, category
mapping, every bad input's error (and the counted skip), config wiring, aspect-ratio batches."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

from frcnn.data.build import build_dataset
from frcnn.data.checks import BadAnnotationError, BadImageError
from frcnn.data.coco import COCODataset
from frcnn.data.datamodule import DetectionDataModule
from frcnn.data.records import ConcatDetectionDataset
from frcnn.data.sampler import AspectRatioBatchSampler, aspect_group_ids
from frcnn.data.transforms import DetectionTransform
from frcnn.data.voc import VOCDataset, voc_box_to_xyxy
from frcnn.errors import ConfigError
from tests.data_trees import (
    TREE_CLASSES,
    VOC_IMAGES,
    coco_json,
    truncate_file,
    voc_xml,
    write_coco_tree,
    write_voc_tree,
)

CLASSES_OVERRIDE = "data.classes=[box,disc]"


@pytest.fixture
def voc_root(tmp_path) -> Path:
    return write_voc_tree(tmp_path / "VOC2007")


@pytest.fixture
def coco_tree(tmp_path) -> tuple[Path, Path]:
    return write_coco_tree(tmp_path / "coco")


def voc(root, split="trainval", **kwargs) -> VOCDataset:
    return VOCDataset(root, split, TREE_CLASSES, **kwargs)


# ----------------------------------------------------------------------------- VOC
def test_voc_box_rule_is_one_based_inclusive_to_continuous():
    assert voc_box_to_xyxy(1, 1, 10, 20) == (0, 0, 10, 20)  # pixels 1..10 -> [0, 10): 10 px wide


def test_voc_loads_with_exact_boxes_sizes_and_labels(voc_root):
    ds = voc(voc_root)
    assert len(ds) == 4 and ds.class_names == TREE_CLASSES and ds.num_classes == 2
    assert [ds.image_size_hw(i) for i in range(4)] == [(120, 160), (160, 120), (120, 160), (120, 160)]
    image, boxes, labels = ds.raw(0)
    assert image.dtype == np.uint8 and image.shape == (120, 160, 3)
    np.testing.assert_array_equal(boxes, [[10, 20, 60, 80], [80, 10, 140, 70]])
    np.testing.assert_array_equal(labels, [1, 2])
    # the painted pixels agree with the converted box: box 0 covers x in [10, 60), y in [20, 80)
    red = (image[..., 0] > 180) & (image[..., 1] < 100)
    ys, xs = np.nonzero(red)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (10, 60, 20, 80)
    item_image, target = ds[0]
    assert item_image.shape == (3, 120, 160) and item_image.dtype == torch.float32
    assert target["image_id"] == 0 and target["orig_size"] == (120, 160)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    empty_image, empty = ds[3]  # 000004 has no object: kept as an all-negative image
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["difficult"].shape == (0,)


def test_voc_difficult_out_of_training_targets_and_flagged_in_evaluation(voc_root):
    train = voc(voc_root, keep_difficult=False)
    evaluation = voc(voc_root, keep_difficult=True)
    _, train_target = train[2]  # 000003: one normal box, one difficult disc
    _, eval_target = evaluation[2]
    assert train_target["labels"].tolist() == [1] and not train_target["difficult"].any()
    assert eval_target["labels"].tolist() == [1, 2] and eval_target["difficult"].tolist() == [False, True]
    np.testing.assert_array_equal(eval_target["boxes"][1].numpy(), [100, 50, 150, 110])


def test_voc_transform_rescales_and_keeps_difficult_flags(voc_root):
    transform = DetectionTransform(scales=(240,), max_size=1000, hflip_prob=0.0, train=False)
    ds = voc(voc_root, keep_difficult=True, transform=transform)
    image, target = ds[2]  # 120 x 160 -> 240 x 320 (factor 2)
    assert image.shape == (3, 240, 320)
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0, 100, 80], [200, 100, 300, 220]]))
    assert target["difficult"].tolist() == [False, True] and target["labels"].tolist() == [1, 2]
    assert target["orig_size"] == (120, 160)


def break_voc(root: Path, case: str) -> tuple[type, str, str]:
    """Damage the tree for one case -> (error class, file named in the message, problem text)."""
    ann, img = root / "Annotations", root / "JPEGImages"
    if case == "missing image":
        (img / "000002.jpg").unlink()
        return BadImageError, "000002.jpg", "image file is missing"
    if case == "no bndbox":
        (ann / "000002.xml").write_text(voc_xml("000002.jpg", 120, 160, [{"name": "disc", "box": None}]))
        return BadAnnotationError, "000002.xml", "has no <bndbox>"
    if case == "missing coordinate":
        obj = {"name": "disc", "box": (21, 31, 100, 110), "omit": ("ymax",)}
        (ann / "000002.xml").write_text(voc_xml("000002.jpg", 120, 160, [obj]))
        return BadAnnotationError, "000002.xml", "<bndbox> has no <ymax>"
    if case == "xmax <= xmin":
        (ann / "000002.xml").write_text(voc_xml("000002.jpg", 120, 160, [{"name": "disc", "box": (50, 31, 50, 110)}]))
        return BadAnnotationError, "000002.xml", "xmax <= xmin"
    if case == "unknown class":
        (ann / "000002.xml").write_text(voc_xml("000002.jpg", 120, 160, [{"name": "cat", "box": (21, 31, 100, 110)}]))
        return BadAnnotationError, "000002.xml", "'cat' is not in data.classes"
    if case == "id without xml":
        (ann / "000002.xml").unlink()
        return BadAnnotationError, "trainval.txt", "'000002' has no annotation file"
    if case == "no size":
        (ann / "000002.xml").write_text(voc_xml("000002.jpg", None, None, []))
        return BadAnnotationError, "000002.xml", "no <size>"
    if case == "box outside image":
        (ann / "000002.xml").write_text(voc_xml("000002.jpg", 120, 160, [{"name": "disc", "box": (300, 31, 400, 110)}]))
        return BadAnnotationError, "000002.xml", "no area inside"
    raise AssertionError(case)


ANNOTATION_CASES = ["missing image", "no bndbox", "missing coordinate", "xmax <= xmin", "unknown class",
                    "id without xml", "no size", "box outside image"]


@pytest.mark.parametrize("case", ANNOTATION_CASES)
def test_voc_bad_annotation_fails_at_construction_naming_the_file(voc_root, case):
    error, file_name, problem = break_voc(voc_root, case)
    with pytest.raises(error) as info:
        voc(voc_root)
    assert file_name in str(info.value) and problem in str(info.value)


@pytest.mark.parametrize("case", ANNOTATION_CASES)
def test_voc_bad_annotation_is_dropped_and_counted_with_skip(voc_root, case, caplog):
    _, file_name, problem = break_voc(voc_root, case)
    with caplog.at_level(logging.WARNING, logger="frcnn.data.records"):
        ds = voc(voc_root, on_bad_sample="skip")
    assert len(ds) == 3 and "000002" not in {r.name for r in ds.records}
    assert len(ds.skipped) == 1
    file, reason = ds.skipped[0]
    assert file.endswith(file_name) and problem in reason
    summaries = [r.getMessage() for r in caplog.records if "skipped 1 of 4 images" in r.getMessage()]
    assert len(summaries) == 1  # one summary line


@pytest.mark.parametrize("damage", ["truncated", "not an image"])
def test_undecodable_image_raises_when_read_naming_the_file(voc_root, damage):
    path = voc_root / "JPEGImages" / "000002.jpg"
    truncate_file(path) if damage == "truncated" else path.write_bytes(b"this is not a JPEG")
    ds = voc(voc_root)  # only annotations are checked at construction
    ds[0]
    with pytest.raises(BadImageError, match=r"000002\.jpg: unreadable image"):
        ds[1]
    with pytest.raises(BadImageError, match=r"000002\.jpg: unreadable image"):
        voc(voc_root, verify_images=True)  # verification finds it before training


def test_undecodable_image_with_skip_is_replaced_counted_and_consistent(voc_root, caplog):
    truncate_file(voc_root / "JPEGImages" / "000002.jpg")
    ds = voc(voc_root, on_bad_sample="skip")
    with caplog.at_level(logging.WARNING, logger="frcnn.data.records"):
        image, target = ds[1]
    assert target["image_id"] == 2  # the next readable image stands in
    assert image.shape == (3, 120, 160) and target["labels"].tolist() == [1]
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("000002.jpg")
    assert "unreadable image" in ds.skipped[0][1] and any("000002.jpg" in r.getMessage() for r in caplog.records)
    raw_image, _, _ = ds.raw(1)  # raw(i) agrees with __getitem__(i); counted once
    assert raw_image.shape == (120, 160, 3) and len(ds.skipped) == 1
    verified = voc(voc_root, on_bad_sample="skip", verify_images=True)  # found and dropped up front
    assert len(verified) == 3 and len(verified.skipped) == 1


def test_image_of_another_size_than_its_annotation_is_an_error(voc_root):
    (voc_root / "Annotations" / "000004.xml").write_text(voc_xml("000004.jpg", 200, 100, []))
    with pytest.raises(BadImageError, match=r"000004\.jpg: image is 160x120 \(WxH\) but its annotation says 200x100"):
        voc(voc_root)[3]


# ----------------------------------------------------------------------------- COCO
def test_coco_category_mapping_boxes_and_order(coco_tree):
    ann_file, images = coco_tree
    ds = COCODataset(ann_file, images)
    assert ds.class_names == ("box", "disc", "star")  # ascending category id 2, 5, 9
    assert ds.category_ids == (2, 5, 9)
    assert [r.name for r in ds.records] == ["3", "10", "11", "12", "13"]  # sorted by image id
    _, boxes, labels = ds.raw(1)  # image 10
    np.testing.assert_array_equal(boxes, [[10, 20, 60, 80], [80, 10, 140, 70]])
    np.testing.assert_array_equal(labels, [1, 2])
    assert ds.raw(2)[2].tolist() == [3]  # star
    assert ds.image_size_hw(0) == (160, 120)


def test_coco_crowd_not_a_training_target_and_ignored_in_evaluation(coco_tree):
    ann_file, images = coco_tree
    train = COCODataset(ann_file, images, keep_crowd=False)
    evaluation = COCODataset(ann_file, images, keep_crowd=True)
    _, train_target = train[3]  # image 12: a box and a crowd disc
    _, eval_target = evaluation[3]
    np.testing.assert_array_equal(train_target["boxes"].numpy(), [[5.5, 5.5, 45.5, 35.5]])
    assert train_target["labels"].tolist() == [1] and not train_target["difficult"].any()
    assert eval_target["labels"].tolist() == [1, 2] and eval_target["difficult"].tolist() == [False, True]
    np.testing.assert_array_equal(eval_target["boxes"][1].numpy(), [90, 40, 150, 110])  # xywh -> xyxy
    for ds in (train, evaluation):  # image 13 has no annotation: kept, all negative
        _, empty = ds[4]
        assert empty["boxes"].shape == (0, 4)


def test_coco_class_subset_keeps_id_order_and_ignores_other_categories(coco_tree):
    ann_file, images = coco_tree
    ds = COCODataset(ann_file, images, class_names=["star", "box"])
    assert ds.class_names == ("box", "star") and ds.ignored_annotations == 3  # three disc boxes
    assert ds.raw(1)[2].tolist() == [1] and ds.raw(2)[2].tolist() == [2]
    with pytest.raises(ValueError, match=r"\['cow'\].*not categories of .*instances\.json"):
        COCODataset(ann_file, images, class_names=["cow"])


def break_coco(root: Path, case: str) -> tuple[type, str, str, int]:
    """-> (error class, file named, problem, images left with skip)."""
    data = coco_json()
    ann_file = root / "annotations" / "instances.json"
    if case == "unknown image":
        data["annotations"][0]["image_id"] = 999
        ann_file.write_text(json.dumps(data))
        return BadAnnotationError, "instances.json", "annotation id 1 points at unknown image id 999", 5
    if case == "unknown category":
        data["annotations"][0]["category_id"] = 77
        ann_file.write_text(json.dumps(data))
        return BadAnnotationError, "a.jpg", "unknown category id 77", 4
    if case == "degenerate box":
        data["annotations"][0]["bbox"] = [10.0, 20.0, 0.0, 60.0]
        ann_file.write_text(json.dumps(data))
        return BadAnnotationError, "a.jpg", "w <= 0 or h <= 0", 4
    if case == "missing image":
        (root / "images" / "b.jpg").unlink()
        return BadImageError, "b.jpg", "image file is missing", 4
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["unknown image", "unknown category", "degenerate box", "missing image"])
def test_coco_bad_input_error_or_counted_skip(coco_tree, case):
    ann_file, images = coco_tree
    error, file_name, problem, left = break_coco(ann_file.parents[1], case)
    with pytest.raises(error) as info:
        COCODataset(ann_file, images)
    assert file_name in str(info.value) and problem in str(info.value)
    ds = COCODataset(ann_file, images, on_bad_sample="skip")
    assert len(ds) == left and len(ds.skipped) == 1 and problem in ds.skipped[0][1]


def test_coco_not_json_names_the_file(coco_tree):
    ann_file, images = coco_tree
    ann_file.write_text("{not json")
    with pytest.raises(BadAnnotationError, match=r"instances\.json: not valid JSON"):
        COCODataset(ann_file, images)


# ----------------------------------------------------------------------------- config wiring
def test_data_voc_config_builds_train_and_val(compose_cfg, tmp_path, voc_root):
    cfg = compose_cfg(["data=voc", f"data.root={voc_root}", CLASSES_OVERRIDE, "data.scales=[240]"], tmp_path)
    data_cfg = cfg["data"]
    assert data_cfg["scales"] == [240] and data_cfg["max_size"] == 1000 and data_cfg["train_split"] == "trainval"
    train, val = build_dataset(data_cfg, "train"), build_dataset(data_cfg, "val")
    assert (len(train), len(val)) == (4, 3) and train.class_names == val.class_names == TREE_CLASSES
    assert train.eval_transform.hflip_prob == 0.0 and train.transform.train
    _, val_target = val[2]  # 000003 in test: difficult kept and flagged
    assert val_target["difficult"].tolist() == [False, True]
    assert val[0][0].shape == (3, 320, 240)  # 160 x 120 portrait at shorter side 240
    assert not train.keep_difficult and build_dataset(data_cfg | {"use_difficult": True}, "train").keep_difficult


def test_default_voc_config_has_the_paper_values_and_voc_classes(compose_cfg, tmp_path):
    data_cfg = compose_cfg(["data=voc"], tmp_path)["data"]
    assert data_cfg["scales"] == [600] and data_cfg["max_size"] == 1000 and data_cfg["hflip_prob"] == 0.5
    assert len(data_cfg["classes"]) == 20 and data_cfg["classes"][0] == "aeroplane"
    assert data_cfg["use_difficult"] is False and data_cfg["on_bad_sample"] == "error"
    shapes_keys = set(compose_cfg([], tmp_path)["data"]) - {"num_train", "num_val", "image_size", "min_objects",
                                                           "max_objects"}
    for name in ("voc", "voc0712", "coco"):
        assert shapes_keys <= set(compose_cfg([f"data={name}"], tmp_path)["data"]), name


def test_data_voc0712_concatenates_train_roots(compose_cfg, tmp_path):
    devkit = tmp_path / "VOCdevkit"
    write_voc_tree(devkit / "VOC2007")
    write_voc_tree(devkit / "VOC2012", images={k: VOC_IMAGES[k] for k in ("000005", "000006")},
                   splits={"trainval": ["000005", "000006"]})
    cfg = compose_cfg(["data=voc0712", f"data.devkit={devkit}", CLASSES_OVERRIDE], tmp_path)
    train, val = build_dataset(cfg["data"], "train"), build_dataset(cfg["data"], "val")
    assert isinstance(train, ConcatDetectionDataset) and len(train) == 6 and len(val) == 3
    assert train.class_names == TREE_CLASSES and train.num_classes == 2
    assert [train.image_size_hw(i) for i in (3, 4, 5)] == [(120, 160), (160, 120), (120, 160)]
    _, target = train[4]
    assert target["image_id"] == 4 and target["labels"].tolist() == [1]
    np.testing.assert_array_equal(train.raw(4)[1], [[30, 40, 90, 150]])
    assert train.eval_transform is not None and train.skipped == []
    assert aspect_group_ids(train) == [0, 1, 0, 0, 1, 0]


def test_data_coco_config_builds_from_root(compose_cfg, tmp_path, coco_tree):
    ann_file, images = coco_tree
    overrides = ["data=coco", f"data.train_ann={ann_file}", f"data.train_images={images}",
                 f"data.val_ann={ann_file}", f"data.val_images={images}"]
    data_cfg = compose_cfg(overrides, tmp_path)["data"]
    train, val = build_dataset(data_cfg, "train"), build_dataset(data_cfg, "val")
    assert train.class_names == ("box", "disc", "star") and len(train) == len(val) == 5
    assert not train.keep_difficult and val.keep_difficult
    default = compose_cfg(["data=coco", "data.root=/data/coco"], tmp_path)["data"]
    assert default["train_ann"] == "/data/coco/annotations/instances_train2017.json"
    assert default["val_images"] == "/data/coco/val2017"


@pytest.mark.parametrize("overrides, message", [
    (["data=voc", "data.root=/no/such/devkit"], r"data\.root=/no/such/devkit: no such folder \(expected VOCdevkit"),
    (["data=voc", "data.on_bad_sample=ignore"], r"data\.on_bad_sample='ignore'; allowed"),
    (["data=voc", "data.classes=[box,box]"], r"data\.classes lists a class twice"),
    (["data=coco", "data.root=/no/coco"], r"data\.train_images=/no/coco/train2017: no such image folder"),
])
def test_config_errors_name_the_key(compose_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_dataset(compose_cfg(overrides, tmp_path)["data"], "train")


def test_voc_root_without_annotations_names_the_key(compose_cfg, tmp_path, voc_root):
    for child in (voc_root / "Annotations").iterdir():
        child.unlink()
    (voc_root / "Annotations").rmdir()
    cfg = compose_cfg(["data=voc", f"data.root={voc_root}", CLASSES_OVERRIDE], tmp_path)
    expected = re.escape(f"data.root={voc_root}: no Annotations/ folder (expected VOCdevkit layout")
    with pytest.raises(ConfigError, match=expected):
        build_dataset(cfg["data"], "train")


# ----------------------------------------------------------------------------- aspect-ratio batches
def test_aspect_ratio_batches_are_pure_and_cover_every_index_once():
    group_ids = [0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0]  # 7 landscape, 4 portrait
    sampler = RandomSampler(range(11), generator=torch.Generator().manual_seed(3))
    batch_sampler = AspectRatioBatchSampler(sampler, group_ids, batch_size=3)
    for _ in range(3):  # epochs
        batches = list(batch_sampler)
        assert len(batches) == len(batch_sampler) == math.ceil(7 / 3) + math.ceil(4 / 3)
        assert all(len({group_ids[i] for i in batch}) == 1 for batch in batches)
        assert sorted(i for batch in batches for i in batch) == list(range(11))
        assert all(len(batch) <= 3 for batch in batches)


def test_aspect_ratio_batches_are_seeded_and_reproducible():
    group_ids = [i % 3 == 0 for i in range(20)]

    def epochs(seed):
        sampler = RandomSampler(range(20), generator=torch.Generator().manual_seed(seed))
        batch_sampler = AspectRatioBatchSampler(sampler, group_ids, batch_size=2)
        return [list(batch_sampler) for _ in range(2)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert first == again and first != other and first[0] != first[1]  # fixed seed, new order per epoch


def test_aspect_ratio_drop_last_and_sequential_order():
    batch_sampler = AspectRatioBatchSampler(SequentialSampler(range(7)), [0, 1, 0, 1, 0, 0, 1], 2, drop_last=True)
    assert list(batch_sampler) == [[0, 2], [1, 3], [4, 5]] and len(batch_sampler) == 3


def test_aspect_ratio_batches_same_count_on_every_rank():
    group_ids = [0] * 9 + [1] * 4
    counts = []
    for rank in range(2):
        shard = DistributedSampler(range(13), num_replicas=2, rank=rank, shuffle=True, seed=0)
        batches = list(AspectRatioBatchSampler(shard, group_ids, batch_size=2))
        assert all(len({group_ids[i] for i in batch}) == 1 for batch in batches)
        counts.append(len(batches))
    assert counts[0] == counts[1] == math.ceil(7 / 2) + 1


def test_datamodule_groups_training_batches_by_orientation(voc_root):
    transform = DetectionTransform(scales=(60,), max_size=1000, hflip_prob=0.5, train=True, seed=0)
    dm = DetectionDataModule(lambda: voc(voc_root, transform=transform), lambda: voc(voc_root, "test"),
                             batch_size=2, aspect_ratio_grouping=True, seed=0)
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler.batch_sampler, AspectRatioBatchSampler)  # inside ResumeBatchSampler
    batches = list(loader)
    assert sum(len(images) for images, _ in batches) == 4
    for images, _ in batches:
        assert len({tuple(image.shape) for image in images}) == 1  # all landscape or all portrait
    plain = DetectionDataModule(lambda: voc(voc_root), lambda: voc(voc_root, "test"), batch_size=2)
    assert not isinstance(plain.train_dataloader().batch_sampler.batch_sampler, AspectRatioBatchSampler)


def test_datamodule_rejects_val_classes_that_differ(voc_root):
    dm = DetectionDataModule(lambda: voc(voc_root), lambda: VOCDataset(voc_root, "test", ("box", "disc", "cat")))
    with pytest.raises(ValueError, match="val set's classes"):
        dm.setup()


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_joint_training_on_voc_tree_writes_metrics_with_its_classes(compose_cfg, tmp_path, voc_root):
    from frcnn.engine.recipes import run_recipe

    run_dir = tmp_path / "run"
    cfg = compose_cfg([
        "recipe=joint", "~experiment", "backbone=small", "trainer=cpu", "schedule=cpu_shapes", "data=voc",
        f"data.root={voc_root}", CLASSES_OVERRIDE, "data.scales=[128]", "data.num_workers=0", "logger=none",
        "schedule.joint.max_steps=3", "schedule.joint.images_per_batch=2", "recipe.val_every_n_epochs=null",
    ], run_dir)
    metrics = run_recipe(cfg, run_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved["ap_per_class"]) == {"box", "disc"} and saved["num_images"] == 3
    assert metrics["num_images"] == 3 and (run_dir / "joint" / "DONE").exists()
