"""The catalogue of bad inputs: each case, what a user expects, and the message that names the
file, key or value. Cases either fail with a clear error, or are documented to work (grayscale,
RGBA, an XML without objects, a COCO category-id gap, a box reaching past the border), or are
dropped and counted with ``data.on_bad_sample=skip``. Some overlap tests/test_datasets.py on
purpose: this file is the list.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from frcnn.config.checks import validate_config
from frcnn.data.build import build_dataset
from frcnn.data.checks import BadAnnotationError, BadImageError
from frcnn.data.coco import COCODataset
from frcnn.data.transforms import DetectionTransform
from frcnn.data.voc import VOCDataset
from frcnn.errors import ConfigError
from frcnn.inference.detector_file import load_detector, save_detector
from frcnn.modeling.build import build_model
from tests.data_trees import TREE_CLASSES, coco_json, truncate_file, voc_xml, write_coco_tree, write_voc_tree

TRANSFORM = DetectionTransform(scales=(64,), max_size=200, hflip_prob=0.5, train=True, seed=0)


def voc(root, split="trainval", **kwargs) -> VOCDataset:
    return VOCDataset(root, split, TREE_CLASSES, transform=TRANSFORM, **kwargs)


def read_all(dataset) -> list:
    return [dataset[i] for i in range(len(dataset))]


def write_xml(root: Path, image_id: str, width, height, objects) -> None:
    (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", width, height, objects))


# ------------------------------------------------------------------------------------------------
# Cases that must fail: (id, damage the tree, error type, regex the message must match)
# ------------------------------------------------------------------------------------------------
def _truncated_jpeg(root):
    truncate_file(root / "JPEGImages" / "000002.jpg")


def _zero_byte_image(root):
    (root / "JPEGImages" / "000002.jpg").write_bytes(b"")


def _not_an_image(root):
    (root / "JPEGImages" / "000002.jpg").write_text("<html>404 not found</html>")


def _one_pixel_image(root):
    Image.new("RGB", (1, 1)).save(root / "JPEGImages" / "000004.jpg")
    write_xml(root, "000004", 1, 1, [])


def _missing_size(root):
    write_xml(root, "000002", None, None, [{"name": "disc", "box": (21, 31, 100, 110)}])


def _missing_coordinate(root):
    write_xml(root, "000002", 120, 160, [{"name": "disc", "box": (21, 31, 100, 110), "omit": ("xmax",)}])


def _missing_bndbox(root):
    write_xml(root, "000002", 120, 160, [{"name": "disc", "box": None}])


def _text_coordinate(root):
    write_xml(root, "000002", 120, 160, [{"name": "disc", "box": ("ten", 31, 100, 110)}])


def _broken_xml(root):
    (root / "Annotations" / "000002.xml").write_text("<annotation><size><width>120")


def _reversed_box(root):
    write_xml(root, "000002", 120, 160, [{"name": "disc", "box": (100, 110, 21, 31)}])


def _zero_area_box(root):
    write_xml(root, "000002", 120, 160, [{"name": "disc", "box": (50, 31, 50, 110)}])


def _box_outside_image(root):
    write_xml(root, "000002", 120, 160, [{"name": "disc", "box": (300, 31, 400, 110)}])


def _negative_box_outside(root):
    write_xml(root, "000002", 120, 160, [{"name": "disc", "box": (-80, -50, -10, -5)}])


def _unknown_class(root):
    write_xml(root, "000002", 120, 160, [{"name": "zebra", "box": (21, 31, 100, 110)}])


def _bad_difficult_flag(root):
    write_xml(root, "000002", 120, 160, [{"name": "disc", "box": (21, 31, 100, 110), "difficult": "yes"}])


def _imagesets_id_without_files(root):
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n000099\n")


def _missing_image_file(root):
    (root / "JPEGImages" / "000002.jpg").unlink()


def _image_size_differs_from_xml(root):
    write_xml(root, "000002", 200, 100, [{"name": "disc", "box": (21, 31, 100, 90)}])


VOC_FAILURES = [
    # id, damage, error, message, found when: "construction" (annotations) or "read" (pixels)
    ("truncated-jpeg", _truncated_jpeg, BadImageError, r"000002\.jpg: unreadable image", "read"),
    ("zero-byte-image", _zero_byte_image, BadImageError, r"000002\.jpg: unreadable image", "read"),
    ("non-image-file", _not_an_image, BadImageError, r"000002\.jpg: unreadable image", "read"),
    ("image-1x1-pixels", _one_pixel_image, BadImageError, r"000004\.jpg: image is 1x1 pixels .* at least 16 px",
     "construction"),
    ("xml-missing-size", _missing_size, BadAnnotationError, r"000002\.xml: no <size>", "construction"),
    ("xml-missing-coordinate", _missing_coordinate, BadAnnotationError, r"000002\.xml: object 0 \(disc\): "
     r"<bndbox> has no <xmax>", "construction"),
    ("xml-missing-bndbox", _missing_bndbox, BadAnnotationError, r"000002\.xml: object 0 \(disc\) has no <bndbox>",
     "construction"),
    ("xml-text-coordinate", _text_coordinate, BadAnnotationError, r"000002\.xml: .*<xmin> is 'ten', not a number",
     "construction"),
    ("xml-not-well-formed", _broken_xml, BadAnnotationError, r"000002\.xml: not a readable XML annotation",
     "construction"),
    ("box-reversed", _reversed_box, BadAnnotationError, r"000002\.xml: .*\(100\.0, 110\.0, 21\.0, 31\.0\) has "
     r"xmax <= xmin", "construction"),
    ("box-zero-area", _zero_area_box, BadAnnotationError, r"000002\.xml: .*\(50\.0, 31\.0, 50\.0, 110\.0\) has "
     r"xmax <= xmin", "construction"),
    ("box-outside-image", _box_outside_image, BadAnnotationError, r"000002\.xml: box 0 .* has no area inside the "
     r"120x160 image", "construction"),
    ("box-negative-outside-image", _negative_box_outside, BadAnnotationError, r"000002\.xml: box 0 "
     r"\[-81\.0, -51\.0, -10\.0, -5\.0\] .* has no area inside", "construction"),
    ("unknown-class-name", _unknown_class, BadAnnotationError, r"000002\.xml: object 0 \(zebra\): class 'zebra' is "
     r"not in data\.classes \['box', 'disc'\]", "construction"),
    ("difficult-not-0-or-1", _bad_difficult_flag, BadAnnotationError, r"000002\.xml: .*<difficult> is 'yes', "
     "expected 0 or 1", "construction"),
    ("imagesets-id-without-files", _imagesets_id_without_files, BadAnnotationError, r"trainval\.txt: image id "
     r"'000099' has no annotation file", "construction"),
    ("image-file-missing", _missing_image_file, BadImageError, r"000002\.jpg: image file is missing", "construction"),
    ("image-size-differs-from-xml", _image_size_differs_from_xml, BadImageError, r"000002\.jpg: image is 120x160 "
     r"\(WxH\) but its annotation says 200x100", "read"),
]


@pytest.mark.parametrize("damage, error, message, when", [c[1:] for c in VOC_FAILURES],
                         ids=[c[0] for c in VOC_FAILURES])
def test_bad_voc_input_stops_naming_the_file(tmp_path, damage, error, message, when):
    root = write_voc_tree(tmp_path / "VOC2007")
    damage(root)
    if when == "construction":
        with pytest.raises(error, match=message):
            voc(root)
    else:
        dataset = voc(root)  # annotations are fine; the pixels are found bad when read ...
        with pytest.raises(error, match=message):
            read_all(dataset)
        with pytest.raises(error, match=message):  # ... or before training with data.verify_images=true
            voc(root, verify_images=True)


@pytest.mark.parametrize("damage, error, message, when", [c[1:] for c in VOC_FAILURES],
                         ids=[c[0] for c in VOC_FAILURES])
def test_bad_voc_input_with_skip_is_dropped_counted_and_reported(tmp_path, damage, error, message, when):
    root = write_voc_tree(tmp_path / "VOC2007")
    damage(root)
    listed = (root / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    dataset = voc(root, on_bad_sample="skip", verify_images=True)
    assert len(dataset) == len(listed) - 1 and len(dataset.skipped) == 1  # one dropped, counted
    _file, reason = dataset.skipped[0]
    assert re.search(message, reason)
    read_all(dataset)  # what is left trains


# ------------------------------------------------------------------------------------------------
# Inputs that must just work
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["L", "RGBA", "P"], ids=["grayscale-image", "rgba-image", "palette-image"])
def test_grayscale_rgba_and_palette_images_are_read_as_rgb(tmp_path, mode):
    root = write_voc_tree(tmp_path / "VOC2007")
    path = root / "JPEGImages" / "000001.jpg"
    image = Image.open(path).convert(mode)
    if mode in ("RGBA", "P"):  # JPEG holds neither alpha nor a palette: a PNG named in the XML
        path.unlink()
        path = path.with_suffix(".png")
        (root / "Annotations" / "000001.xml").write_text(
            voc_xml("000001.png", 160, 120, [{"name": "box", "box": (11, 21, 60, 80)}]))
    image.save(path)
    tensor, target = voc(root)[0]
    assert tensor.shape[0] == 3 and 1 in target["labels"].tolist()


def test_xml_without_objects_is_an_all_negative_image(tmp_path):
    root = write_voc_tree(tmp_path / "VOC2007")
    write_xml(root, "000002", 120, 160, [])
    _, target = voc(root)[1]
    assert target["boxes"].shape == (0, 4) and len(voc(root)) == 4


def test_box_reaching_past_the_border_is_clipped_to_the_image(tmp_path):
    root = write_voc_tree(tmp_path / "VOC2007")
    write_xml(root, "000002", 120, 160, [{"name": "disc", "box": (-5, -3, 130, 170)}])
    assert voc(root).records[1].boxes_xyxy.tolist() == [[0.0, 0.0, 120.0, 160.0]]


def test_coco_category_id_gap_gets_contiguous_labels(tmp_path):
    ann, images = write_coco_tree(tmp_path / "coco")  # category ids 2, 5, 9
    dataset = COCODataset(ann, images)
    assert dataset.category_ids == (2, 5, 9) and dataset.class_names == ("box", "disc", "star")
    record = next(r for r in dataset.records if r.name == "10")
    assert record.labels.tolist() == [1, 2]  # category ids 2 and 5 -> labels 1 and 2


def test_coco_string_image_ids_load_after_the_integer_ones(tmp_path):
    data = coco_json()  # COCO-style sets sometimes use string ids; a file may mix them
    renamed = {12: "img_12", 3: "img_03"}
    for entry in data["images"] + data["annotations"]:
        key = "id" if "file_name" in entry else "image_id"
        entry[key] = renamed.get(entry[key], entry[key])
    ann, images = write_coco_tree(tmp_path / "coco", data=data)
    dataset = COCODataset(ann, images)
    assert [r.name for r in dataset.records] == ["10", "11", "13", "img_03", "img_12"]
    assert dataset.records[-1].labels.tolist() == [1, 2]  # image 12's boxes followed its new id


# ------------------------------------------------------------------------------------------------
# COCO, splits, checkpoints, config values
# ------------------------------------------------------------------------------------------------
def test_coco_annotation_of_a_missing_image_names_the_annotation_and_image_id(tmp_path):
    data = coco_json()
    data["annotations"].append({"id": 99, "image_id": 777, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 0})
    ann, images = write_coco_tree(tmp_path / "coco", data=data)
    with pytest.raises(BadAnnotationError, match=r"instances\.json: annotation id 99 points at unknown image id 777"):
        COCODataset(ann, images)


def test_coco_image_entry_without_its_file_names_the_file(tmp_path):
    ann, images = write_coco_tree(tmp_path / "coco")
    (images / "c.jpg").unlink()
    with pytest.raises(BadImageError, match=r"c\.jpg: image file is missing \(image id 12 of .*instances\.json\)"):
        COCODataset(ann, images)


def test_coco_unknown_category_id_names_it(tmp_path):
    data = coco_json()
    data["annotations"][0]["category_id"] = 4  # between the ids 2 and 5 that exist
    ann, images = write_coco_tree(tmp_path / "coco", data=data)
    with pytest.raises(BadAnnotationError, match=r"annotation id 1 of image a\.jpg \(id 10\) has unknown category id "
                                                 r"4 \(categories: \[2, 5, 9\]\)"):
        COCODataset(ann, images)


def test_coco_json_not_json_names_the_file(tmp_path):
    ann, images = write_coco_tree(tmp_path / "coco")
    ann.write_text('{"images": [')
    with pytest.raises(BadAnnotationError, match=r"instances\.json: not valid JSON"):
        COCODataset(ann, images)


def test_empty_split_names_the_split_file_and_key(compose_cfg, tmp_path):
    root = write_voc_tree(tmp_path / "VOC2007")
    (root / "ImageSets" / "Main" / "empty.txt").write_text("\n")
    cfg = compose_cfg(["data=voc", f"data.root={root}", "data.classes=[box,disc]", "data.train_split=empty"], tmp_path)
    with pytest.raises(ConfigError, match=r"data\.root=.*VOC2007: split file .*empty\.txt lists no image ids"):
        build_dataset(cfg["data"], "train")


def test_missing_data_root_names_the_key(compose_cfg, tmp_path):
    cfg = compose_cfg(["data=voc", "data.root=null"], tmp_path)
    with pytest.raises(ConfigError, match=r"data\.root is not set \(data=voc needs data\.root"):
        build_dataset(cfg["data"], "train")


def test_data_root_that_does_not_exist_names_the_key_and_path(compose_cfg, tmp_path):
    cfg = compose_cfg(["data=voc", f"data.root={tmp_path / 'nowhere'}"], tmp_path)
    with pytest.raises(ConfigError, match=r"data\.root=.*nowhere: no such folder"):
        build_dataset(cfg["data"], "train")


def test_checkpoint_of_another_architecture_is_refused_naming_the_file(tmp_path):
    from tests.conftest import compose_config

    cfg = compose_config([], tmp_path)  # the small backbone
    model_cfg = {"backbone": dict(cfg["backbone"]), "rpn": dict(cfg["rpn"]), "roi_head": dict(cfg["roi_head"])}
    model = build_model(model_cfg, num_classes=2)
    save_detector(model, model_cfg, ["a", "b"], tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=False)
    payload["model_cfg"]["backbone"] = {**model_cfg["backbone"], "name": "zf"}  # weights of small, label zf
    torch.save(payload, tmp_path / "other_arch.pt")
    with pytest.raises(ValueError, match=r"other_arch\.pt: weights do not fit the architecture in its model_cfg"):
        load_detector(tmp_path / "other_arch.pt")
    torch.save({"state_dict": {}, "global_step": 3}, tmp_path / "lightning.ckpt")  # a Lightning stage checkpoint
    with pytest.raises(ValueError, match=r"lightning\.ckpt: not an frcnn detector file"):
        load_detector(tmp_path / "lightning.ckpt")


@pytest.mark.parametrize("override, message", [
    ("backbone.name=resnet18", r"backbone\.name='resnet18' is not allowed; allowed: .*small"),
    ("rpn.lambda=-1", r"rpn\.lambda=-1 is out of range: must be >= 0"),
    ("rpn.lambda=ten", r"rpn\.lambda: expected a number >= 0, got 'ten' \(str\)"),
    ("optim.lr=fast", r"optim\.lr: expected a number > 0, got 'fast' \(str\)"),
    ("rpn.anchor_ratios=[0.5,0,2]", r"rpn\.anchor_ratios\[1\]=0 is out of range: must be > 0"),
    ("rpn.anchor_ratios=[-1]", r"rpn\.anchor_ratios\[0\]=-1 is out of range: must be > 0"),
    ("rpn.batch_size=2.5", r"rpn\.batch_size: expected an integer, got 2\.5"),
], ids=["wrong-backbone-name", "lambda-negative", "string-for-lambda", "string-for-lr", "anchor-ratio-zero",
        "anchor-ratio-negative", "float-for-count"])
def test_bad_config_value_is_refused_naming_key_and_value(compose_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_cfg([override], tmp_path))


def test_corpus_ids_are_unique():
    ids = [c[0] for c in VOC_FAILURES]
    assert len(ids) == len(set(ids)) >= 18
