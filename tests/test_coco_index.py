"""The COCO index built with arrays (frcnn/data/coco.py: ``_objects_at_once``, a train2017-size file in seconds)
gives exactly the records, skips and errors of the annotation-by-annotation checks: on generated COCO-like
files and on every JSON mutation of the data-reader fuzzer."""

import json
import random

import numpy as np
import pytest

from frcnn.data.checks import DataError
from frcnn.data.coco import COCODataset
from tests.fuzz_mutations import MUTATIONS
from tests.fuzz_trees import mutated, write_trees

NUM_CATEGORIES = 12


def write_generated(root, num_images=300, seed=0):
    """A COCO-like file: sparse, unsorted and a few string image ids, 0-15 boxes per image (some crowd,
    some reaching past the border), category ids with gaps, a polygon per box; an empty file per image."""
    rng = random.Random(seed)
    images, annotations = [], []
    (root / "images").mkdir(parents=True)
    ids = rng.sample(range(1, 10 * num_images), num_images)
    for k, image_id in enumerate(ids):
        image_id = f"img{image_id}" if k % 50 == 7 else image_id
        width, height = rng.choice([(640, 480), (480, 640), (500, 375)])
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": width, "height": height})
        (root / "images" / f"{image_id}.jpg").touch()
        for _ in range(rng.choice([0, 0, 1, 3, 7, 15])):
            w, h = rng.uniform(25, 300), rng.randint(1, 200)
            x, y = rng.uniform(-20, width - 2), rng.uniform(0, height - 1)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": [x, y, w, h],
                                "category_id": 3 * rng.randrange(NUM_CATEGORIES) + 1,
                                "iscrowd": int(rng.random() < 0.05), "segmentation": [[x, y, x + w, y]]})
    rng.shuffle(annotations)
    categories = [{"id": 3 * c + 1, "name": f"class{c}"} for c in range(NUM_CATEGORIES)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, root / "images"


def one_by_one(monkeypatch):
    monkeypatch.setattr(COCODataset, "_objects_at_once", lambda self, *args: None)


def outcome(build):
    """What building the data set gives: its records, skips and ignored count, or the error it raises."""
    try:
        dataset = build()
    except DataError as exc:
        return ("error", type(exc).__name__, str(exc))
    records = [(r.image_path, r.height, r.width, r.name, r.source, r.boxes_xyxy.dtype, r.boxes_xyxy.tolist(),
                r.labels.dtype, r.labels.tolist(), r.difficult.dtype, r.difficult.tolist()) for r in dataset.records]
    return ("loaded", records, dataset.skipped, dataset.ignored_annotations, dataset.class_names)


@pytest.mark.parametrize("class_names", [None, ["class7", "class2"]])
def test_array_index_equals_the_one_by_one_index_on_a_coco_like_file(tmp_path, monkeypatch, class_names):
    ann_file, images = write_generated(tmp_path)
    at_once = outcome(lambda: COCODataset(ann_file, images, class_names=class_names, keep_crowd=True))
    assert at_once[0] == "loaded" and sum(len(r[6]) for r in at_once[1]) > 150
    assert any(any(r[10]) for r in at_once[1]) and any(not r[6] for r in at_once[1])  # crowd boxes, empty images
    boxes = np.array([b for r in at_once[1] for b in r[6]])
    assert (boxes[:, 0] == 0).any()  # boxes past the left border were clipped
    one_by_one(monkeypatch)
    assert outcome(lambda: COCODataset(ann_file, images, class_names=class_names, keep_crowd=True)) == at_once


BAD_VALUES = {  # field -> values the one-by-one checks refuse or accept, each with its own message
    "bbox": [[[1, 2], [30, 40]], [1, 2, 30], [1, 2, 30, 40, 5], ["1", 2, 30, 40], None, [True, 2, 30, 40],
             [2**70, 2, 30, 40], [float("nan"), 2, 30, 40], [1, 2, -30, 40], [1e308, 2, 1e308, 40], [900, 2, 30, 40]],
    "iscrowd": [2, None, [1], True, 1.0], "image_id": [None, 1.5, True, "nope"], "category_id": [None, 2.0, 99],
}


@pytest.mark.parametrize("field", sorted(BAD_VALUES))
def test_a_bad_value_gives_what_the_one_by_one_checks_give(tmp_path, monkeypatch, field):
    ann_file, images = write_generated(tmp_path, num_images=30)
    data = json.loads(ann_file.read_text())
    for value in BAD_VALUES[field]:
        data["annotations"][5][field] = value
        ann_file.write_text(json.dumps(data))
        for policy, classes in (("error", None), ("skip", None), ("skip", ["class0", "class5"])):
            def build(policy=policy, classes=classes):
                return COCODataset(ann_file, images, class_names=classes, on_bad_sample=policy)
            at_once = outcome(build)
            with monkeypatch.context() as patch:
                one_by_one(patch)
                assert outcome(build) == at_once, (value, policy, classes)


def test_every_bbox_of_another_shape_gives_what_the_one_by_one_checks_give(tmp_path, monkeypatch):
    ann_file, images = write_generated(tmp_path, num_images=30)
    data = json.loads(ann_file.read_text())
    for ann in data["annotations"]:  # all alike: numpy reads them as one [M, 2, 2] array
        x, y, w, h = ann["bbox"]
        ann["bbox"] = [[x, y], [w, h]]
    ann_file.write_text(json.dumps(data))
    at_once = outcome(lambda: COCODataset(ann_file, images, on_bad_sample="skip"))
    one_by_one(monkeypatch)
    assert outcome(lambda: COCODataset(ann_file, images, on_bad_sample="skip")) == at_once


JSON_KINDS = [kind for kind, (tree, _) in MUTATIONS.items() if tree == "coco"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    return write_trees(tmp_path_factory.mktemp("coco_index"))


def test_every_json_mutation_ends_as_the_one_by_one_checks_end(trees, monkeypatch, caplog):
    caplog.set_level("ERROR", logger="frcnn")
    compared = {"error": 0, "loaded": 0}
    for kind in JSON_KINDS:
        for seed in range(12):
            with mutated(trees, kind, seed):
                for policy in ("error", "skip"):
                    def build(policy=policy):
                        return COCODataset(trees.coco_ann, trees.coco_images, on_bad_sample=policy)
                    at_once = outcome(build)
                    with monkeypatch.context() as patch:
                        one_by_one(patch)
                        assert outcome(build) == at_once, (kind, seed, policy)
                    compared[at_once[0]] += 1
    assert compared["error"] > 50 and compared["loaded"] > 50  # both ends were reached
