"""frcnn-convert-labels: VOC, COCO, YOLO and LabelMe into each other, read back by frcnn's own readers; the round
trip VOC -> YOLO -> LabelMe -> COCO -> VOC gives the same boxes within rounding."""

import json
import shutil

import numpy as np
import pytest

from frcnn.cli.convert_labels import convert_labels, main, read_source
from frcnn.data.label_writers import unique_stems
from frcnn.errors import ConfigError
from tests.data_trees import VOC_IMAGES, draw_image, write_voc_tree
from tests.label_trees import write_yolo_tree


def source_path(fmt, folder):
    return folder / "annotations.json" if fmt == "coco" else folder


def boxes_by_image(fmt, folder):
    """{image file stem: (boxes [N, 4], class names [N], difficult [N])} as frcnn reads ``folder``."""
    dataset = read_source(fmt, source_path(fmt, folder), None, None, None, "error")
    out = {}
    for record in dataset.records:
        names = [dataset.class_names[label - 1] for label in record.labels]
        out[record.image_path.rsplit("/", 1)[-1].split(".")[0]] = (record.boxes_xyxy, names, record.difficult.tolist())
    return out


def test_round_trip_voc_yolo_labelme_coco_voc_keeps_the_boxes(tmp_path, capsys):
    chain = [("voc", write_voc_tree(tmp_path / "voc")), ("yolo", tmp_path / "yolo"), ("labelme", tmp_path / "labelme"),
             ("coco", tmp_path / "coco"), ("voc", tmp_path / "voc_again")]
    for (source_format, source), (target_format, target) in zip(chain, chain[1:]):
        assert main(["--from", source_format, "--to", target_format, str(source_path(source_format, source)),
                     str(target)]) == 0
    out = capsys.readouterr().out
    assert "wrote 6 images, 7 boxes of 2 classes (box, disc) as yolo" in out
    assert "note: 1 difficult objects are ordinary boxes there (YOLO has no difficult flag)" in out
    assert "train on it: python train.py data=labelme data.root=" in out
    first, last = boxes_by_image("voc", tmp_path / "voc"), boxes_by_image("voc", tmp_path / "voc_again")
    assert sorted(first) == sorted(last) == sorted(VOC_IMAGES)
    for image_id, (boxes, names, _) in first.items():
        assert np.allclose(last[image_id][0], boxes, atol=0.5), image_id  # whole pixels again
        assert last[image_id][1] == names
    for fmt in ("yolo", "labelme", "coco"):  # every step on the way, read by its own reader
        for image_id, (boxes, names, _) in boxes_by_image(fmt, tmp_path / fmt).items():
            assert np.allclose(boxes, first[image_id][0], atol=0.01) and names == first[image_id][1], (fmt, image_id)
    assert last["000003"][2] == [False, False]  # YOLO dropped the difficult flag, as it said


def test_difficult_objects_survive_labelme_and_coco(tmp_path):
    source = write_voc_tree(tmp_path / "voc")
    chain = [("voc", source), ("labelme", tmp_path / "lm"), ("coco", tmp_path / "coco"), ("voc", tmp_path / "back")]
    for (f1, s1), (f2, s2) in zip(chain, chain[1:]):
        convert_labels(f1, source_path(f1, s1), f2, s2)
    assert boxes_by_image("voc", tmp_path / "back")["000003"][2] == [False, True]
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [a["iscrowd"] for a in coco["annotations"]].count(1) == 1  # difficult -> iscrowd (frcnn: ignored by the AP)


def test_sub_pixel_yolo_boxes_round_to_whole_voc_pixels(tmp_path):
    images = {"tiny": (100, 80, [("box", (10.3, 20.6, 11.1, 30.2)), ("disc", (99.6, 0.0, 100.0, 79.9))])}
    write_yolo_tree(tmp_path / "yolo", images)
    convert_labels("yolo", tmp_path / "yolo", "voc", tmp_path / "voc")
    boxes, names, _ = boxes_by_image("voc", tmp_path / "voc")["tiny"]
    # rounded to whole pixels, at least 2 px a side (VOC's reader needs xmax > xmin), inside the image
    assert boxes.tolist() == [[10, 21, 12, 30], [98, 0, 100, 80]] and names == ["box", "disc"]


def test_same_file_names_in_two_folders_stay_apart(tmp_path):
    root = tmp_path / "yolo"
    for split in ("train", "val"):
        write_yolo_tree(root / "x", {"a": (64, 48, [("box", (8, 8, 40, 40))])})
        shutil.move(root / "x" / "images", root / "images" / split)
        shutil.move(root / "x" / "labels", root / "labels" / split)
    (root / "data.yaml").write_text("names: [box, disc]\n")
    convert_labels("yolo", root, "labelme", tmp_path / "lm")
    assert sorted(p.name for p in (tmp_path / "lm").glob("*.json")) == ["images_train_a.json", "images_val_a.json"]
    records = read_source("labelme", tmp_path / "lm", None, None, None, "error").records
    assert [r.image_path.rsplit("/", 1)[-1] for r in records] == ["images_train_a.jpg", "images_val_a.jpg"]
    assert len(set(unique_stems(records))) == 2


def test_refusals_name_the_problem(tmp_path, capsys):
    source = write_voc_tree(tmp_path / "voc")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ConfigError, match="exists and is not an empty folder"):
        convert_labels("voc", source, "yolo", tmp_path / "full")
    (source / "Annotations" / "000002.xml").write_text("<annotation><size><width>9</width></size></annotation>")
    with pytest.raises(SystemExit) as stop:
        main(["--from", "voc", "--to", "coco", str(source), str(tmp_path / "coco")])
    assert stop.value.code == 2
    assert f"error: {source / 'Annotations' / '000002.xml'}: no <size> with positive integer" in capsys.readouterr().err
    assert main(["--from", "voc", "--to", "coco", "--skip-bad", str(source), str(tmp_path / "coco2")]) == 0
    captured = capsys.readouterr()
    assert "left out" in captured.err and "000002.xml" in captured.err and "wrote 5 images" in captured.out
    assert main(["--from", "voc", "--to", "yolo", "--split", "test", str(source), str(tmp_path / "test")]) == 0
    assert sorted(p.stem for p in (tmp_path / "test" / "labels").glob("*.txt")) == ["000003", "000005", "000006"]
    with pytest.raises(ConfigError, match="--split names an ImageSets/Main file of a VOC source"):
        convert_labels("yolo", tmp_path / "test", "voc", tmp_path / "v", split="test")
    draw_image(32, 32, [], tmp_path / "lonely" / "a.jpg")
    with pytest.raises(SystemExit):
        main(["--from", "labelme", "--to", "voc", str(tmp_path / "lonely"), str(tmp_path / "v2")])
    assert "no .json files" in capsys.readouterr().err
