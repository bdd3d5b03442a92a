"""The built-in VOC-like data (frcnn/data/voclike): deterministic, VOC 2007's statistics within the
documented tolerances, and read back through the VOCdevkit reader exactly as it was drawn."""

import filecmp
import json
import os

import numpy as np
import pytest

from frcnn.data.build import build_dataset
from frcnn.data.voc import VOCDataset
from frcnn.data.voclike.scene import render_scene
from frcnn.data.voclike.stats import ImageAnnotation, measure, statistics_table
from frcnn.data.voclike.tree import (
    MANIFEST,
    VoclikeParams,
    ensure_voclike_tree,
    image_id,
    render_item,
    tree_is_complete,
    write_tree,
)
from frcnn.data.voclike.voc2007 import CLASS_NAMES
from frcnn.errors import ConfigError

TINY = VoclikeParams(seed=3, num_trainval=6, num_test=3, longer_px=160)
STATISTICS_SAMPLE = 1000  # pictures measured against the tolerances (docs/VOCLIKE.md: 2000)


def tree_files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_parameters_write_the_same_bytes_and_another_seed_does_not(tmp_path):
    first, second = write_tree(TINY, tmp_path / "a"), write_tree(TINY, tmp_path / "b")
    files = tree_files(first)
    assert files == tree_files(second) and len(files) == 2 * (6 + 3) + 2 + 1  # jpg + xml, 2 split lists, manifest
    match, mismatch, errors = filecmp.cmpfiles(first, second, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    other = write_tree(VoclikeParams(seed=4, num_trainval=6, num_test=3, longer_px=160), tmp_path / "c")
    assert (other / "Annotations" / "000000.xml").read_bytes() != (first / "Annotations" / "000000.xml").read_bytes()


def test_statistics_are_within_the_documented_tolerances():
    images = []
    for index in range(STATISTICS_SAMPLE):
        image, objects = render_scene(np.random.default_rng([0, 0, index]), 320)
        images.append(ImageAnnotation(
            image.shape[:2], np.array([o.box_xyxy for o in objects], dtype=np.float64).reshape(-1, 4),
            np.array([o.label for o in objects], dtype=np.int64), np.array([o.difficult for o in objects], dtype=bool),
            np.array([o.truncated for o in objects], dtype=bool)))
    rows = measure(images)
    assert len(rows) == 20 + 20  # the 20 statistics and the 20 class shares
    outside = [row for row in rows if not row.within]
    assert not outside, statistics_table(outside)


def test_the_voc_reader_reads_back_what_was_drawn(tmp_path):
    root = write_tree(TINY, tmp_path / "tree")
    for split, count in (("trainval", 6), ("test", 3)):
        dataset = VOCDataset(root, split, CLASS_NAMES, keep_difficult=True)
        assert len(dataset) == count
        for index in range(count):
            drawn_image, drawn = render_item(TINY, split, index)
            image, boxes, labels = dataset.raw(index)
            record = dataset.records[index]
            assert record.name == image_id(split, index)
            np.testing.assert_array_equal(boxes, np.array([o.box_xyxy for o in drawn], dtype=np.float32).reshape(-1, 4))
            np.testing.assert_array_equal(labels, [o.label for o in drawn])
            np.testing.assert_array_equal(record.difficult, [o.difficult for o in drawn])
            assert image.shape == drawn_image.shape
            assert np.abs(image.astype(int) - drawn_image.astype(int)).mean() < 4.0  # JPEG, quality 90


def test_data_voclike_builds_voc_datasets_from_the_cached_tree(tmp_path, compose_cfg):
    cfg = compose_cfg(["experiment=cpu_voclike", f"data.cache_dir={tmp_path}", "data.num_trainval=5",
                       "data.num_test=4", "data.longer_px=128"], tmp_path / "run")
    train, val = build_dataset(cfg["data"], "train"), build_dataset(cfg["data"], "val")
    assert (len(train), len(val)) == (5, 4) and train.class_names == CLASS_NAMES
    (tree,) = (tmp_path / "voclike").iterdir()
    assert json.loads((tree / MANIFEST).read_text())["images"] == {"trainval": 5, "test": 4}
    flagged = [bool(d) for i in range(4) for d in val[i][1]["difficult"]]
    trained = [bool(d) for i in range(5) for d in train[i][1]["difficult"]]
    assert not any(trained) and len(flagged) >= len(trained) // 2  # difficult: evaluation only, as data=voc
    mtime = os.stat(tree / MANIFEST).st_mtime_ns
    build_dataset(cfg["data"], "val")
    assert os.stat(tree / MANIFEST).st_mtime_ns == mtime  # found again, not rewritten


def test_a_tree_without_its_manifest_is_written_again(tmp_path):
    root = ensure_voclike_tree(TINY, tmp_path)
    (root / MANIFEST).unlink()  # as a writer killed before its last file leaves it
    assert not tree_is_complete(root, TINY)
    assert ensure_voclike_tree(TINY, tmp_path) == root and tree_is_complete(root, TINY)
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no partial copy left


@pytest.mark.parametrize("key, value", [("num_trainval", 0), ("longer_px", 8), ("seed", "x")])
def test_bad_generator_values_name_their_key(tmp_path, compose_cfg, key, value):
    cfg = compose_cfg(["experiment=cpu_voclike", f"data.cache_dir={tmp_path}"], tmp_path / "run")
    cfg["data"][key] = value
    with pytest.raises(ConfigError, match=f"data.{key}="):
        build_dataset(cfg["data"], "train")
