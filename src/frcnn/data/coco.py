"""COCO detection data (instances JSON + image folder), parsed once at construction with plain ``json``.

Rules:

* Labels: the selected categories (all, or those named in ``class_names``) sorted by ascending
  category id get the contiguous labels 1..C; class names come from the JSON. Annotations of
  categories that exist but are not selected are not targets (counted in ``ignored_annotations``).
* Boxes: COCO ``bbox`` is [x, y, w, h] in continuous 0-based pixels -> (x, y, x + w, y + h); clipped
  to the image (``width`` / ``height`` of the JSON). ``w <= 0`` or ``h <= 0`` is a bad annotation.
* ``iscrowd=1`` boxes are never training targets; evaluation targets keep them with
  ``difficult=True`` so the VOC AP ignores them (COCO's own evaluation ignores crowd regions too).
* Images without annotations are kept: all-negative training images, and evaluated.
* Problems follow ``on_bad_sample`` (see :mod:`frcnn.data.records`): an annotation pointing at an
  unknown image is dropped (``skip``) or raised (``error``); an unknown category, a malformed or
  degenerate box, or a missing image file drops / raises for its image. Messages name the JSON file,
  the annotation / image id and the image file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from frcnn.data.checks import BadAnnotationError, BadImageError, DatasetLayoutError, clip_and_check_boxes
from frcnn.data.records import FileDetectionDataset, ImageRecord, check_on_bad_sample, list_dir_names, reject_sample

__all__ = ["COCODataset", "coco_box_to_xyxy", "load_coco_json", "select_categories"]


def coco_box_to_xyxy(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """COCO [x, y, w, h] (0-based continuous px) -> (x1, y1, x2, y2) = (x, y, x + w, y + h)."""
    x, y, w, h = (float(v) for v in bbox)
    return x, y, x + w, y + h


def load_coco_json(ann_file: str | Path) -> dict:
    """Read an instances JSON; DatasetLayoutError if absent, BadAnnotationError if not COCO-shaped."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DatasetLayoutError(ann_file, "no such annotation file (expected a COCO instances JSON, e.g. "
                                           "<root>/annotations/instances_train2017.json)")
    try:
        with open(ann_file, encoding="utf-8-sig") as f:  # a byte-order mark is harmless
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadAnnotationError(f"{ann_file}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BadAnnotationError(f"{ann_file}: expected a JSON object with images / annotations / categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise BadAnnotationError(f"{ann_file}: no {key!r} list (a COCO instances file has images, "
                                     "annotations and categories)")
    return data


def is_coco_id(value: object) -> bool:
    """COCO ids (image, category) are integers (COCO itself) or strings (some COCO-style sets); a
    bool, a float, a list or a mapping is not one."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def id_order(value: int | str) -> tuple[bool, int | str]:
    """Sort key of ids: integers ascending, then strings (a file may mix both)."""
    return isinstance(value, str), value


def select_categories(categories: list[dict], class_names: Sequence[str] | None, ann_file: str | Path
                      ) -> tuple[dict[int, str], dict[int, int]]:
    """-> ({category id: name} of all categories, {selected category id: label 1..C} in ascending id order)."""
    names: dict[int, str] = {}
    for k, category in enumerate(categories):
        if not (isinstance(category, dict) and is_coco_id(category.get("id"))
                and isinstance(category.get("name"), str) and category["name"].strip()):
            raise BadAnnotationError(f"{ann_file}: categories[{k}] needs an integer (or string) 'id' and a non-empty "
                                     f"string 'name', got {category!r}")
        if category["id"] in names:
            raise BadAnnotationError(f"{ann_file}: categories[{k}]: category id {category['id']} appears twice")
        names[category["id"]] = category["name"]
    if class_names is None:
        selected = sorted(names, key=id_order)
    else:
        by_name = {name: cat_id for cat_id, name in names.items()}
        unknown = [name for name in class_names if name not in by_name]
        if unknown:
            raise BadAnnotationError(f"data.classes names {unknown}, which are not categories of {ann_file} "
                                     f"(its categories: {sorted(by_name)})")
        selected = sorted((by_name[name] for name in class_names), key=id_order)
    if not selected:
        raise BadAnnotationError(f"{ann_file}: no categories")
    return names, {cat_id: label for label, cat_id in enumerate(selected, start=1)}


class COCODataset(FileDetectionDataset):
    """COCO ``ann_file`` over ``images_dir``; items as :class:`FileDetectionDataset` (module docstring
    has the rules). ``keep_crowd`` keeps crowd boxes flagged difficult (evaluation); ``image_id`` in
    targets is the dataset index and ``records[i].name`` the COCO image id. Images are ordered by id.
    """

    def __init__(
        self,
        ann_file: str | Path,
        images_dir: str | Path,
        class_names: Sequence[str] | None = None,
        keep_crowd: bool = False,
        transform: Callable | None = None,
        on_bad_sample: str = "error",
        verify_images: bool = False,
    ):
        check_on_bad_sample(on_bad_sample)
        self.ann_file, self.images_dir = Path(ann_file), Path(images_dir)
        if not self.images_dir.is_dir():
            raise DatasetLayoutError(images_dir, "no such image folder (expected the COCO images, e.g. "
                                                 "<root>/train2017/*.jpg)")
        data = load_coco_json(self.ann_file)
        category_names, labels_by_category = select_categories(data["categories"], class_names, self.ann_file)
        self.category_ids = tuple(labels_by_category)  # category id of label k is category_ids[k - 1]
        self.ignored_annotations = 0  # annotations of categories not selected
        skipped: list[tuple[str, str]] = []
        images = self._index_images(data["images"], on_bad_sample, skipped)
        objects: dict[int, list] = {image_id: [] for image_id in images}  # image id -> [(box, label, crowd)]
        bad_images: dict[int, Exception] = {}
        for k, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict):
                reject_sample(on_bad_sample, skipped, self.ann_file, BadAnnotationError(
                    f"{self.ann_file}: annotations[{k}] is {ann!r}, not an object with image_id, category_id, bbox"))
                continue
            ann_id, image_id = ann.get("id", f"#{k}"), ann.get("image_id")
            if not is_coco_id(image_id) or image_id not in images:
                reject_sample(on_bad_sample, skipped, self.ann_file, BadAnnotationError(
                    f"{self.ann_file}: annotation id {ann_id} points at unknown image id {image_id!r}"))
                continue
            where = f"{self.ann_file}: annotation id {ann_id} of image {images[image_id]['file_name']} (id {image_id})"
            category_id = ann.get("category_id")
            if not is_coco_id(category_id) or category_id not in category_names:
                known = sorted(category_names, key=id_order)
                bad_images.setdefault(image_id, BadAnnotationError(
                    f"{where} has unknown category id {category_id!r} (categories: {known})"))
                continue
            if category_id not in labels_by_category:
                self.ignored_annotations += 1
                continue
            bbox = ann.get("bbox")
            if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
                bad_images.setdefault(image_id, BadAnnotationError(f"{where}: bbox {bbox!r} is not 4 finite numbers"))
                continue
            if bbox[2] <= 0 or bbox[3] <= 0:
                bad_images.setdefault(image_id, BadAnnotationError(
                    f"{where}: bbox [x, y, w, h] = {list(bbox)} has w <= 0 or h <= 0 (xmax <= xmin or ymax <= ymin)"))
                continue
            box_xyxy = coco_box_to_xyxy(bbox)
            if not all(math.isfinite(v) for v in box_xyxy):
                bad_images.setdefault(image_id, BadAnnotationError(
                    f"{where}: bbox [x, y, w, h] = {list(bbox)} overflows (x + w or y + h is not finite)"))
                continue
            crowd = ann.get("iscrowd", 0)
            if crowd not in (0, 1):
                bad_images.setdefault(image_id, BadAnnotationError(f"{where}: iscrowd is {crowd!r}, expected 0 or 1"))
                continue
            objects[image_id].append((box_xyxy, labels_by_category[category_id], bool(crowd)))
        image_names = list_dir_names(self.images_dir)
        records: list[ImageRecord] = []
        for image_id in sorted(images, key=id_order):
            info = images[image_id]
            path = self.images_dir / info["file_name"]
            if image_id in bad_images:
                reject_sample(on_bad_sample, skipped, path, bad_images[image_id])
                continue
            if not (info["file_name"] in image_names or ("/" in info["file_name"] and path.is_file())):
                reject_sample(on_bad_sample, skipped, path, BadImageError(
                    f"{path}: image file is missing (image id {image_id} of {self.ann_file})"))
                continue
            try:
                records.append(self._record(image_id, info, path, objects[image_id]))
            except BadAnnotationError as exc:
                reject_sample(on_bad_sample, skipped, path, exc)
        super().__init__(records, [category_names[c] for c in labels_by_category], transform=transform,
                         keep_difficult=keep_crowd, on_bad_sample=on_bad_sample, verify_images=verify_images,
                         skipped=skipped, description=f"COCO {self.ann_file}")

    def _index_images(self, entries: list, on_bad_sample: str, skipped: list) -> dict[int, dict]:
        """{image id: image entry}; every entry needs an integer (or string) id, a file_name and positive integer
        width / height (an entry without them follows ``on_bad_sample``; an id given twice is an error)."""
        images: dict[int, dict] = {}
        for k, info in enumerate(entries):
            ok = isinstance(info, dict) and is_coco_id(info.get("id")) and isinstance(info.get("file_name"), str) \
                and info["file_name"].strip() != "" and _is_positive_int(info.get("width")) \
                and _is_positive_int(info.get("height"))
            if not ok:
                reject_sample(on_bad_sample, skipped, self.ann_file, BadAnnotationError(
                    f"{self.ann_file}: images[{k}] needs an integer (or string) 'id', a 'file_name' and positive "
                    f"integer 'width' / 'height', got {info!r}"))
                continue
            if info["id"] in images:
                raise BadAnnotationError(f"{self.ann_file}: images[{k}]: image id {info['id']} appears twice")
            images[info["id"]] = info
        return images

    def _record(self, image_id: int, info: dict, path: Path, objects: list) -> ImageRecord:
        """One image's record; boxes clipped to the image (an object outside it is an error)."""
        height, width = info["height"], info["width"]
        boxes = np.asarray([box for box, _, _ in objects], dtype=np.float64).reshape(-1, 4)  # [N, 4]; float32 clipped
        labels = np.asarray([label for _, label, _ in objects], dtype=np.int64)  # [N]
        crowd = np.asarray([is_crowd for _, _, is_crowd in objects], dtype=bool)  # [N]
        source = f"{self.ann_file} (image {info['file_name']}, id {image_id})"
        boxes, _ = clip_and_check_boxes(boxes, labels, (height, width), source=source)
        return ImageRecord(image_path=str(path), height=height, width=width, boxes_xyxy=boxes, labels=labels,
                           difficult=crowd, source=source, name=str(image_id))
