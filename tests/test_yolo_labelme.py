"""data=yolo and data=labelme: the readers give the records VOC and COCO give (exact boxes from generated folders),
with the same checks; every bad value names its file and line (YOLO) or shape (LabelMe)."""

import json
import re

import numpy as np
import pytest

from frcnn.config.checks import validate_config
from frcnn.data.build import build_dataset
from frcnn.data.checks import BadAnnotationError, BadImageError
from frcnn.data.labelme import LabelMeDataset, list_json_files, parse_labelme_json
from frcnn.data.yolo import YOLODataset, label_path_of, list_images, parse_yolo_labels, read_dataset_yaml
from frcnn.errors import ConfigError
from tests.data_trees import TREE_CLASSES, draw_image
from tests.label_trees import (LABELLED_IMAGES, labelme_shape, write_labelme_json, write_labelme_tree,
                               write_yolo_tree)

CLASS_INDEX = {"box": 1, "disc": 2}


def records_by_name(dataset) -> dict:
    return {record.name: record for record in dataset.records}


def expected_boxes(name: str) -> tuple[list, list]:
    _, _, objects = LABELLED_IMAGES[name]
    return [list(box) for _, box in objects], [TREE_CLASSES.index(c) + 1 for c, _ in objects]


# ----------------------------------------------------------------------------- YOLO
def test_yolo_folder_reads_into_pixel_boxes_and_labels(tmp_path):
    root = write_yolo_tree(tmp_path / "yolo")
    dataset = YOLODataset(root, list_images(root / "images"), TREE_CLASSES)
    records = records_by_name(dataset)
    assert sorted(records) == [f"images/{n}.jpg" for n in "abcde"]
    for name, (width, height, _) in LABELLED_IMAGES.items():
        record = records[f"images/{name}.jpg"]
        boxes, labels = expected_boxes(name)
        assert (record.width, record.height) == (width, height)  # from the image header
        assert np.allclose(record.boxes_xyxy.reshape(-1, 4), np.array(boxes).reshape(-1, 4), atol=1e-3)
        assert record.labels.tolist() == labels and not record.difficult.any()
    image, target = dataset[0]
    assert image.shape[1:] == (120, 160) and target["labels"].tolist() == [1, 2]


def test_yolo_rules_polygons_clipping_background_and_float_classes(tmp_path):
    root = tmp_path / "yolo"
    draw_image(200, 100, [], root / "images" / "sub" / "p.png")
    draw_image(200, 100, [], root / "images" / "sub" / "q.png")  # no label file: a background image
    label = label_path_of(root / "images" / "sub" / "p.png")
    assert label == root / "labels" / "sub" / "p.txt"
    label.parent.mkdir(parents=True)
    label.write_text("1 0.1 0.2 0.3 0.2 0.2 0.6\n"  # a polygon -> its box (20, 20, 60, 60)
                     "\n"
                     "0.0 0.95 0.5 0.2 0.4\n")  # class '0.0' (Ultralytics reads floats); reaches past x = 200: clipped
    dataset = YOLODataset(root, list_images(root / "images"), TREE_CLASSES)
    records = records_by_name(dataset)
    assert np.allclose(records["images/sub/p.png"].boxes_xyxy, [[20, 20, 60, 60], [170, 30, 200, 70]])
    assert records["images/sub/p.png"].labels.tolist() == [2, 1]
    assert len(records["images/sub/q.png"].labels) == 0 and dataset.background_images == 1


@pytest.mark.parametrize("line, message", [
    ("x 0.5 0.5 0.2 0.2", r"class 'x' is not a class index"),
    ("-1 0.5 0.5 0.2 0.2", r"class '-1' is not a class index"),
    ("2 0.5 0.5 0.2 0.2", r"class 2 is not one of the 2 classes \(0\.\.1: \['box', 'disc'\]\)"),
    ("0 0.5 0.5 0.2", r"4 values '0 0.5 0.5 0.2'; expected 5"),
    ("0 0.5 0.5 0.2 0.2 0.9", r"6 values .*expected 5 \(class cx cy w h"),
    ("0 0.5 0.5 abc 0.2", r"'abc' is not a number"),
    ("0 0.5 nan 0.2 0.2", r"'nan' is not a finite number"),
    ("0 80 60 20 30", r"value 80 is outside \[0, 1\]: YOLO coordinates are fractions"),
    ("0 0.5 0.5 0 0.2", r"box \(cx cy w h\) = 0\.5 0\.5 0 0\.2 has no area \(w or h is 0\)"),
    ("1 0.1 0.2 0.1 0.5 0.1 0.6", r"polygon of 3 points has no area"),
])
def test_yolo_bad_line_names_the_file_and_line(tmp_path, line, message):
    label = tmp_path / "a.txt"
    label.write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(BadAnnotationError, match=re.escape(f"{label}:2: ") + message):
        parse_yolo_labels(label, 160, 120, TREE_CLASSES)


def test_yolo_missing_images_and_bad_files_follow_on_bad_sample(tmp_path):
    root = write_yolo_tree(tmp_path / "yolo")
    (root / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # a label file without its image
    cfg = {"name": "yolo", "root": str(root), "scales": [120], "max_size": 200, "hflip_prob": 0.0,
           "train_split": None, "val_split": None, "split_dir": None}
    with pytest.raises(BadImageError, match=re.escape(f"{root / 'labels' / 'ghost.txt'}: label file without its image "
                                                      f"(no {root / 'images' / 'ghost'}.{{bmp,jpeg,jpg")):
        build_dataset(cfg, "train")
    (root / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n")
    train = build_dataset({**cfg, "on_bad_sample": "skip"}, "train")
    val = build_dataset({**cfg, "on_bad_sample": "skip"}, "val")
    assert {r.name for r in train.records + val.records} == {f"images/{n}.jpg" for n in "acde"}
    assert [reason.split(": ", 1)[1] for _, reason in train.skipped] == ["label file without its image (no "
                                                                         f"{root / 'images' / 'ghost'}.{{bmp,jpeg,jpg,"
                                                                         "png,tif,tiff,webp})"]
    listed = root / "train.txt"
    listed.write_text("images/a.jpg\n\nimages/nope.jpg\n")
    (root / "data.yaml").write_text("names: {0: box, 1: disc}\ntrain: train.txt\nval: images\n")
    with pytest.raises(BadImageError, match=re.escape(f"{listed}:3: image file 'images/nope.jpg' is missing")):
        build_dataset(cfg, "train")


def test_yolo_class_names_from_data_yaml_or_data_classes(tmp_path, compose_cfg):
    root = write_yolo_tree(tmp_path / "yolo", yaml_text="nc: 2\nnames:\n  0: box\n  1: disc\n")
    assert read_dataset_yaml(root / "data.yaml")["names"] == ["box", "disc"]
    cfg = compose_cfg(["data=yolo", f"data.root={root}"], tmp_path / "run")
    validate_config(cfg)
    assert build_dataset(cfg["data"], "train").class_names == ("box", "disc")
    with pytest.raises(ConfigError, match=r"data\.classes=\['disc', 'box'\] but .*data\.yaml names \['box', 'disc'\]"):
        build_dataset({**cfg["data"], "classes": ["disc", "box"]}, "train")
    (root / "data.yaml").unlink()
    with pytest.raises(ConfigError, match=rf"data\.root={root}: no data\.yaml with names: and no data\.classes"):
        build_dataset(cfg["data"], "train")
    assert build_dataset({**cfg["data"], "classes": ["box", "disc"]}, "val").class_names == ("box", "disc")
    for text, message in [("names: [box, box]\n", "lists a class twice"), ("nc: 3\nnames: [a, b]\n", "nc: 3 but"),
                          ("names: {0: a, 2: b}\n", r"expected the class indices 0\.\.1"),
                          ("[1, 2]\n", "expected a mapping")]:
        (root / "data.yaml").write_text(text)
        with pytest.raises(BadAnnotationError, match=message):
            read_dataset_yaml(root / "data.yaml")


def test_yolo_splits_from_data_yaml_folders_and_roboflow_paths(tmp_path, compose_cfg):
    root = tmp_path / "rf"
    for split, names in (("train", "abc"), ("valid", "de")):
        write_yolo_tree(root / split, {n: LABELLED_IMAGES[n] for n in names})
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['box', 'disc']\n")
    cfg = compose_cfg(["data=yolo", f"data.root={root}"], tmp_path / "run")["data"]
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert [r.name for r in train.records] == [f"train/images/{n}.jpg" for n in "abc"]
    assert [r.name for r in val.records] == [f"valid/images/{n}.jpg" for n in "de"]
    assert not (tmp_path / "run" / "data_split.json").exists()  # split files given: nothing split
    overridden = build_dataset({**cfg, "train_split": "valid/images", "val_split": "train/images"}, "train")
    assert [r.name for r in overridden.records] == [f"valid/images/{n}.jpg" for n in "de"]


# ----------------------------------------------------------------------------- LabelMe
def test_labelme_shapes_become_boxes(tmp_path):
    draw_image(200, 100, [], tmp_path / "pics" / "p.jpg")
    shapes = [labelme_shape("box", (60, 70, 10, 20)),  # corners in either order
              {"label": "disc", "points": [[20, 10], [50, 30], [30, 60]], "shape_type": "polygon"},
              {"label": "disc", "points": [[100, 50], [110, 50]], "shape_type": "circle"},
              {"label": "box", "points": [[5, 5]], "shape_type": "point"},  # not a box: left out
              {"label": "box", "points": [[150, 40], [230, 90], [160, 60]], "shape_type": None,  # old: a polygon
               "flags": {"difficult": True}},
              {"label": "box", "points": [[150, 40], [160, 90], [155, 95]]}]
    write_labelme_json(tmp_path / "p.json", "pics\\p.jpg", 200, 100, shapes)  # labelme on Windows
    parsed = parse_labelme_json(tmp_path / "p.json", CLASS_INDEX)
    assert parsed["image_path"] == tmp_path / "pics" / "p.jpg" and (parsed["width"], parsed["height"]) == (200, 100)
    assert np.allclose(parsed["boxes_xyxy"], [[10, 20, 60, 70], [20, 10, 50, 60], [90, 40, 110, 60],
                                              [150, 40, 200, 90], [150, 40, 160, 95]])
    assert parsed["labels"].tolist() == [1, 2, 2, 1, 1] and parsed["difficult"].tolist() == [0, 0, 0, 1, 0]
    assert dict(parsed["ignored"]) == {"point": 1}


def test_labelme_folder_reads_into_records_with_size_from_the_image(tmp_path):
    root = write_labelme_tree(tmp_path / "lm")
    write_labelme_json(root / "b.json", "b.jpg", None, None, [labelme_shape("disc", (20, 30, 100, 110))])
    (root / "e.jpg").rename(root / "e.png")  # imagePath names e.jpg: the image beside the JSON is found
    dataset = LabelMeDataset(root, list_json_files(root), TREE_CLASSES, keep_difficult=True)
    records = records_by_name(dataset)
    assert sorted(records) == [f"{n}.json" for n in "abcde"]
    for name, (width, height, _) in LABELLED_IMAGES.items():
        boxes, labels = expected_boxes(name)
        record = records[f"{name}.json"]
        assert (record.width, record.height) == (width, height)
        assert np.allclose(record.boxes_xyxy.reshape(-1, 4), np.array(boxes).reshape(-1, 4))
        assert record.labels.tolist() == labels
    assert records["e.json"].image_path.endswith("e.png")


@pytest.mark.parametrize("shape, message", [
    (labelme_shape("cat", (1, 1, 9, 9)), r"shapes\[1\] \(label 'cat'\): class 'cat' is not in data\.classes"),
    ({"label": "box", "points": [[1, 1], [9, 9]], "shape_type": "polygon"}, r"shapes\[1\] .*a polygon needs 3"),
    ({"label": "box", "points": [[1, "a"], [9, 9]], "shape_type": "rectangle"},
     r"shapes\[1\] .*not a list of \[x, y\]"),
    ({"label": "box", "points": [[1, 1], [1, 9]], "shape_type": "rectangle"}, r"shapes\[1\] .*has no area inside"),
    (labelme_shape("box", (170, 10, 190, 20)), r"shapes\[1\] .*has no area inside the 160x120 image"),
    ({"label": "box", "points": [[1, 1]], "shape_type": "ellipse"}, r"shapes\[1\] .*'ellipse' is not a LabelMe shape"),
    ("box", r"shapes\[1\] is 'box', not an object"),
])
def test_labelme_bad_shape_names_the_file_and_shape(tmp_path, shape, message):
    draw_image(160, 120, [], tmp_path / "a.jpg")
    write_labelme_json(tmp_path / "a.json", "a.jpg", 160, 120, [labelme_shape("box", (1, 1, 9, 9)), shape])
    with pytest.raises(BadAnnotationError, match=re.escape(f"{tmp_path / 'a.json'}: ") + message):
        parse_labelme_json(tmp_path / "a.json", CLASS_INDEX)


def test_labelme_missing_image_and_foreign_json_follow_on_bad_sample(tmp_path, compose_cfg):
    root = write_labelme_tree(tmp_path / "lm")
    write_labelme_json(root / "f.json", "gone.jpg", 160, 120, [])
    with pytest.raises(BadImageError, match=re.escape(f"{root / 'f.json'}: image file is missing (imagePath "
                                                      "'gone.jpg', relative to the JSON's folder")):
        parse_labelme_json(root / "f.json", CLASS_INDEX)
    (root / "g.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(BadAnnotationError, match="not a LabelMe annotation"):
        parse_labelme_json(root / "g.json", CLASS_INDEX)
    cfg = compose_cfg(["data=labelme", f"data.root={root}", "data.on_bad_sample=skip", "data.val_fraction=0.4"],
                      tmp_path / "run")
    validate_config(cfg)
    train, val = build_dataset(cfg["data"], "train"), build_dataset(cfg["data"], "val")
    assert train.class_names == ("box", "disc")  # every box label, sorted
    assert sorted(r.name for r in train.records + val.records) == [f"{n}.json" for n in "abcde"]
    assert len(val) == 2


def test_labelme_split_subfolders_and_difficult_objects(tmp_path, compose_cfg):
    root = tmp_path / "lm"
    write_labelme_tree(root / "train", {n: LABELLED_IMAGES[n] for n in "abc"})
    write_labelme_tree(root / "val", {n: LABELLED_IMAGES[n] for n in "de"})
    hard = labelme_shape("disc", (5, 5, 50, 50), flags={"difficult": True})
    write_labelme_json(root / "train" / "c.json", "c.jpg", 160, 120, [labelme_shape("box", (0, 0, 50, 40)), hard])
    cfg = compose_cfg(["data=labelme", f"data.root={root}", "data.train_split=train", "data.val_split=val",
                       "data.classes=[box,disc]"], tmp_path / "run")["data"]
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert [r.name for r in train.records] == ["train/a.json", "train/b.json", "train/c.json"]
    assert [r.name for r in val.records] == ["val/d.json", "val/e.json"]
    _, target = train[2]
    assert target["labels"].tolist() == [1]  # the difficult disc is no training target
    assert not (tmp_path / "run" / "data_split.json").exists()


@pytest.mark.parametrize("data", ["yolo", "labelme"])
def test_config_keys_of_the_new_formats_are_checked(compose_cfg, tmp_path, data):
    with pytest.raises(ConfigError, match=r"data\.val_fraction=1\.5 is out of range"):
        validate_config(compose_cfg([f"data={data}", "data.val_fraction=1.5"], tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"data\.root=.*nowhere: no such folder"):
        build_dataset(compose_cfg([f"data={data}", f"data.root={tmp_path / 'nowhere'}"], tmp_path / "run")["data"],
                      "train")
    with pytest.raises(ConfigError, match=rf"data\.root is not set \(data={data} needs data\.root"):
        build_dataset(compose_cfg([f"data={data}", "data.root=null"], tmp_path / "run")["data"], "train")


def test_pictures_stored_turned_are_refused_naming_the_orientation(tmp_path):
    """A phone photo stored sideways (EXIF orientation 6): labelling tools label it upright, frcnn reads the stored
    pixels, so its boxes would miss; both readers refuse it at start-up."""
    from PIL import Image

    root = write_yolo_tree(tmp_path / "yolo", {"a": LABELLED_IMAGES["a"]})
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(root / "images" / "a.jpg").save(root / "images" / "a.jpg", exif=exif)
    message = re.escape(f"{root / 'images' / 'a.jpg'}: stored turned (EXIF orientation 6)")
    with pytest.raises(BadImageError, match=message):
        YOLODataset(root, list_images(root / "images"), TREE_CLASSES)
    write_labelme_json(root / "images" / "a.json", "a.jpg", 160, 120, [labelme_shape("box", (10, 20, 60, 80))])
    with pytest.raises(BadImageError, match=message):
        parse_labelme_json(root / "images" / "a.json", CLASS_INDEX)
