"""Write :class:`~frcnn.data.records.ImageRecord` s as a VOC, COCO, YOLO or LabelMe folder that frcnn's readers
(and the tools of each format) read back: the writing half of ``frcnn-convert-labels``.

Boxes are the records' 0-based continuous (x1, y1, x2, y2) pixels, written in each format's own rule,
the inverse of its reader's:

* VOC (``voc.py``): 1-based inclusive whole pixels, (xmin, ymin, xmax, ymax) = (x1 + 1, y1 + 1, x2, y2)
  rounded, at least 2 px a side (the reader needs xmax > xmin); ``difficult`` kept. No ImageSets: the folder
  is split automatically (``frcnn.data.split``) or by split files the user adds.
* COCO (``coco.py``): [x1, y1, x2 - x1, y2 - y1] to 0.01 px, categories 1..C in class order; a difficult
  object is ``iscrowd: 1`` (both mean "not a training target, ignored by the AP" to frcnn).
* YOLO (``yolo.py``): ``class cx cy w h``, fractions to 6 decimals, class = label - 1; ``data.yaml`` with
  ``names:``. YOLO has no difficult flag: difficult objects are written as ordinary boxes (counted).
* LabelMe (``labelme.py``): a ``rectangle`` of the two corners to 0.01 px; difficult in the shape's flags.

Image files are copied (or hard-linked, ``link=True``) under a name unique in the folder: the image's own
name, or its path in the source folder with ``/`` -> ``_`` where two images share a name.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np

from frcnn.data.records import ImageRecord

__all__ = ["LABEL_FORMATS", "unique_stems", "write_labels"]

LABEL_FORMATS = ("voc", "coco", "yolo", "labelme")
LABELME_VERSION = "5.4.1"  # the labelme release whose files these follow


def unique_stems(records: Sequence[ImageRecord]) -> list[str]:
    """A file stem per record, unique in the list: the image's stem, or its record name with / -> _ when
    two images share a stem (a number appended if that is still taken)."""
    stems = [Path(r.image_path).stem for r in records]
    counts = {stem: stems.count(stem) for stem in stems}
    taken: set[str] = set()
    unique = []
    for record, stem in zip(records, stems):
        if counts[stem] > 1:
            stem = str(Path(record.name).with_suffix("")).replace("/", "_").replace("\\", "_")
        candidate, k = stem, 1
        while candidate in taken:
            candidate, k = f"{stem}_{k}", k + 1
        taken.add(candidate)
        unique.append(candidate)
    return unique


def _place_image(source: str, destination: Path, link: bool) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, destination)
            return
        except OSError:  # another file system, or links not allowed: copy
            pass
    shutil.copyfile(source, destination)


def _voc_xml(file_name: str, record: ImageRecord, class_names: Sequence[str]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for box, label, difficult in zip(record.boxes_xyxy, record.labels, record.difficult):
        xmin, ymin = int(np.rint(box[0])) + 1, int(np.rint(box[1])) + 1
        xmax = min(max(int(np.rint(box[2])), xmin + 1), record.width)
        ymax = min(max(int(np.rint(box[3])), ymin + 1), record.height)
        xmin, ymin = min(xmin, xmax - 1), min(ymin, ymax - 1)  # a 1-px box at the border: 2 px inside it
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[int(label) - 1]
        ET.SubElement(obj, "difficult").text = "1" if difficult else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (xmin, ymin, xmax, ymax)):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def _yolo_lines(record: ImageRecord) -> str:
    lines = []
    for (x1, y1, x2, y2), label in zip(record.boxes_xyxy.astype(np.float64), record.labels):
        cx, cy = (x1 + x2) / 2 / record.width, (y1 + y2) / 2 / record.height
        w, h = (x2 - x1) / record.width, (y2 - y1) / record.height
        lines.append(f"{int(label) - 1} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


def _labelme_json(file_name: str, record: ImageRecord, class_names: Sequence[str]) -> str:
    shapes = [{"label": class_names[int(label) - 1],
               "points": [[round(float(x1), 2), round(float(y1), 2)], [round(float(x2), 2), round(float(y2), 2)]],
               "group_id": None, "description": "", "shape_type": "rectangle",
               "flags": {"difficult": True} if difficult else {}}
              for (x1, y1, x2, y2), label, difficult in zip(record.boxes_xyxy, record.labels, record.difficult)]
    return json.dumps({"version": LABELME_VERSION, "flags": {}, "shapes": shapes, "imagePath": file_name,
                       "imageData": None, "imageHeight": record.height, "imageWidth": record.width}, indent=2)


def write_labels(target: str, records: Sequence[ImageRecord], class_names: Sequence[str], out_dir: str | Path,
                 link: bool = False) -> dict:
    """Write ``records`` (labels 1..C of ``class_names``) as a ``target`` folder ``out_dir`` (module docstring)
    -> {images, boxes, difficult_as_ordinary (YOLO), annotation (the COCO JSON)}."""
    if target not in LABEL_FORMATS:
        raise ValueError(f"target format {target!r}; allowed: {list(LABEL_FORMATS)}")
    out = Path(out_dir)
    stems = unique_stems(records)
    coco = {"images": [], "annotations": [], "categories": [{"id": k, "name": name, "supercategory": "none"}
                                                           for k, name in enumerate(class_names, start=1)]}
    summary = {"images": len(records), "boxes": 0, "difficult_as_ordinary": 0}
    for image_id, (record, stem) in enumerate(zip(records, stems), start=1):
        file_name = stem + Path(record.image_path).suffix.lower()
        summary["boxes"] += len(record.labels)
        if target == "voc":
            _place_image(record.image_path, out / "JPEGImages" / file_name, link)
            (out / "Annotations").mkdir(parents=True, exist_ok=True)
            (out / "Annotations" / f"{stem}.xml").write_bytes(_voc_xml(file_name, record, class_names))
        elif target == "yolo":
            _place_image(record.image_path, out / "images" / file_name, link)
            (out / "labels").mkdir(parents=True, exist_ok=True)
            (out / "labels" / f"{stem}.txt").write_text(_yolo_lines(record))
            summary["difficult_as_ordinary"] += int(record.difficult.sum())
        elif target == "labelme":
            _place_image(record.image_path, out / file_name, link)
            (out / f"{stem}.json").write_text(_labelme_json(file_name, record, class_names))
        else:
            _place_image(record.image_path, out / "images" / file_name, link)
            coco["images"].append({"id": image_id, "file_name": file_name, "width": record.width,
                                   "height": record.height})
            for (x1, y1, x2, y2), label, difficult in zip(record.boxes_xyxy.astype(np.float64), record.labels,
                                                          record.difficult):
                bbox = [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                            "category_id": int(label), "bbox": bbox,
                                            "area": round(bbox[2] * bbox[3], 2), "iscrowd": int(bool(difficult))})
    out.mkdir(parents=True, exist_ok=True)
    if target == "yolo":
        names = "\n".join(f"  - {json.dumps(name)}" for name in class_names)
        (out / "data.yaml").write_text(f"# frcnn-convert-labels; no train: / val: here: frcnn splits the images "
                                       f"(data.val_fraction), or add them\nnc: {len(class_names)}\nnames:\n{names}\n")
    if target == "coco":
        summary["annotation"] = str(out / "annotations.json")
        (out / "annotations.json").write_text(json.dumps(coco))
    return summary
