"""Write the built-in shapes data as a VOCdevkit tree or a COCO JSON + image folder.

A way to try ``data=voc`` / ``data=coco`` (and eval / detect scripts) end to end without
downloading anything, and a template of the two layouts for custom data. Boxes are written
in each format's own convention, the inverse of what the loaders read:

* VOC: 1-based inclusive pixels, (xmin, ymin, xmax, ymax) = (x1 + 1, y1 + 1, x2, y2) of our
  0-based continuous (x1, y1, x2, y2) — see :mod:`frcnn.data.voc`.
* COCO: [x, y, w, h] = [x1, y1, x2 - x1, y2 - y1], categories 1..C in class order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image

from frcnn.data.synthetic import ShapesDataset

__all__ = ["export_shapes_coco", "export_shapes_voc"]


def _integer_boxes(boxes_xyxy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Round to whole pixels inside the image, keeping at least one pixel per side. [N, 4] int."""
    boxes = np.rint(boxes_xyxy).astype(np.int64).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0] + 1)
    boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1] + 1)
    return boxes


def _voc_annotation(file_name: str, height: int, width: int, boxes: np.ndarray, names: Sequence[str]) -> ET.Element:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for (x1, y1, x2, y2), name in zip(boxes.tolist(), names):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):  # 1-based inclusive
            ET.SubElement(bndbox, key).text = str(value)
    return root


def export_shapes_voc(root: str | Path, splits: dict[str, ShapesDataset]) -> Path:
    """Write ``splits`` ({VOC split name: dataset}) as ``root/{Annotations,JPEGImages,ImageSets/Main}``."""
    root = Path(root)
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split_name, dataset in splits.items():
        ids = []
        for index in range(len(dataset)):
            image, boxes_xyxy, labels = dataset.raw(index)  # uint8 [H, W, 3], [N, 4], [N]
            height, width = image.shape[:2]
            image_id = f"{dataset.split}_{index:06d}"
            Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            names = [dataset.class_names[label - 1] for label in labels.tolist()]
            xml = _voc_annotation(f"{image_id}.jpg", height, width, _integer_boxes(boxes_xyxy, height, width), names)
            ET.ElementTree(xml).write(root / "Annotations" / f"{image_id}.xml")
            ids.append(image_id)
        (root / "ImageSets" / "Main" / f"{split_name}.txt").write_text("\n".join(ids) + "\n")
    return root


def export_shapes_coco(ann_file: str | Path, images_dir: str | Path, dataset: ShapesDataset) -> Path:
    """Write ``dataset`` as a COCO instances JSON ``ann_file`` and JPEGs in ``images_dir``."""
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(len(dataset)):
        image, boxes_xyxy, labels = dataset.raw(index)
        height, width = image.shape[:2]
        file_name = f"{dataset.split}_{index:06d}.jpg"
        Image.fromarray(image).save(images_dir / file_name, quality=95)
        images.append({"id": index + 1, "file_name": file_name, "width": width, "height": height})
        for (x1, y1, x2, y2), label in zip(_integer_boxes(boxes_xyxy, height, width).tolist(), labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": int(label),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": k, "name": name} for k, name in enumerate(dataset.class_names, start=1)]
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file
