"""COCO detection data (instances JSON + image folder), parsed once at construction (orjson, else ``json``)
and indexed with arrays when every annotation follows the rules below (train2017's 118k images in seconds),
else annotation by annotation, each problem named.

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

import gc
import json
import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

try:
    import orjson
except ImportError:  # optional: the standard library parses the same files, ~2x slower
    orjson = None

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
    data = _parse_json(ann_file)
    if not isinstance(data, dict):
        raise BadAnnotationError(f"{ann_file}: expected a JSON object with images / annotations / categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise BadAnnotationError(f"{ann_file}: no {key!r} list (a COCO instances file has images, "
                                     "annotations and categories)")
    return data


def _parse_json(ann_file: Path) -> object:
    """The file's JSON value: orjson where installed (~2x faster on a 200 MB train2017 file), else (and
    for anything orjson refuses, e.g. NaN literals) the standard library, whose error is reported."""
    raw = ann_file.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark is harmless
        raw = raw[3:]
    if orjson is not None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadAnnotationError(f"{ann_file}: not valid JSON ({exc})") from exc


@contextmanager
def cyclic_gc_paused():
    """Python's cyclic garbage collector off while a large file becomes objects: each of the millions of
    new dicts and lists (train2017's JSON) counts towards the next collection, and each collection walks
    all of them again (~60 % of the parse time). Reference counting still frees everything; the previous
    setting comes back on exit."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
        with cyclic_gc_paused():  # millions of new objects: see cyclic_gc_paused
            records, class_names_found, skipped = self._load_annotations(class_names, on_bad_sample)
        super().__init__(records, class_names_found, transform=transform,
                         keep_difficult=keep_crowd, on_bad_sample=on_bad_sample, verify_images=verify_images,
                         skipped=skipped, description=f"COCO {self.ann_file}")

    def _load_annotations(self, class_names: Sequence[str] | None, on_bad_sample: str
                          ) -> tuple[list[ImageRecord], list[str], list[tuple[str, str]]]:
        """-> (records of the usable images, class names of labels 1..C, skipped (file, reason))."""
        data = load_coco_json(self.ann_file)
        category_names, labels_by_category = select_categories(data["categories"], class_names, self.ann_file)
        self.category_ids = tuple(labels_by_category)  # category id of label k is category_ids[k - 1]
        self.ignored_annotations = 0  # annotations of categories not selected
        skipped: list[tuple[str, str]] = []
        images = self._index_images(data["images"], on_bad_sample, skipped)
        # all annotations checked and indexed at once; one by one (each problem named) if any needs it
        ordered_ids = sorted(images, key=id_order)
        arrays = self._objects_at_once(data["annotations"], images, ordered_ids, category_names, labels_by_category)
        objects, bad_images = {}, {}
        if arrays is None:
            objects, bad_images = self._objects_one_by_one(data["annotations"], images, category_names,
                                                           labels_by_category, on_bad_sample, skipped)
        image_names = list_dir_names(self.images_dir)
        records: list[ImageRecord] = []
        folder = str(self.images_dir)
        for image_id in ordered_ids:
            info = images[image_id]
            name = info["file_name"]  # a plain name is joined as a string: pathlib would take ~3 s for train2017
            path = f"{folder}/{name}" if "/" not in name and name != "." else str(self.images_dir / name)
            if image_id in bad_images:
                reject_sample(on_bad_sample, skipped, path, bad_images[image_id])
                continue
            if not (name in image_names or ("/" in name and Path(path).is_file())):
                reject_sample(on_bad_sample, skipped, path, BadImageError(
                    f"{path}: image file is missing (image id {image_id} of {self.ann_file})"))
                continue
            if arrays is not None:
                records.append(self._record_from_arrays(image_id, info, path, *arrays[image_id]))
                continue
            try:
                records.append(self._record(image_id, info, path, objects[image_id]))
            except BadAnnotationError as exc:
                reject_sample(on_bad_sample, skipped, path, exc)
        return records, [category_names[c] for c in labels_by_category], skipped

    def _objects_at_once(self, annotations: list, images: dict, ordered_ids: list, category_names: dict,
                         labels_by_category: dict) -> dict[int | str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
        """{image id: (boxes float32 [N, 4] clipped, labels int64 [N], crowd bool [N])} for every image, the
        records :meth:`_objects_one_by_one` and :meth:`_record` give, computed as arrays (a 118k-image file in
        seconds); None when any annotation breaks a rule (then those methods name it)."""
        try:
            image_ids = [ann["image_id"] for ann in annotations]
            category_ids = [ann["category_id"] for ann in annotations]
            crowd_values = {ann.get("iscrowd", 0) for ann in annotations}
            bboxes = np.array([ann["bbox"] for ann in annotations] or np.zeros((0, 4)))  # [M, 4]; ragged: ValueError
        except (KeyError, TypeError, AttributeError, ValueError):
            return None  # not an object, a field missing, an unhashable iscrowd, ragged bboxes
        if not (crowd_values <= {0, 1} and bboxes.shape == (len(annotations), 4) and bboxes.dtype.kind in "iuf"
                and all(type(i) is int or type(i) is str for i in image_ids) and images.keys() >= set(image_ids)
                and all(type(c) is int or type(c) is str for c in category_ids)
                and category_names.keys() >= set(category_ids)):
            return None
        selected = np.fromiter((c in labels_by_category for c in category_ids), bool, len(category_ids))
        bboxes = bboxes[selected].astype(np.float64)
        with np.errstate(over="ignore"):  # an overflow to inf is found just below
            boxes = np.concatenate([bboxes[:, :2], bboxes[:, :2] + bboxes[:, 2:]], axis=1)  # (x, y, x + w, y + h)
        if not (np.isfinite(bboxes).all() and (bboxes[:, 2:] > 0).all() and np.isfinite(boxes).all()):
            return None
        position = {image_id: k for k, image_id in enumerate(ordered_ids)}
        image_of = np.fromiter((position[i] for i, keep in zip(image_ids, selected) if keep), np.int64,
                               int(selected.sum()))  # [M'] image position of each selected annotation
        heights = np.array([images[i]["height"] for i in ordered_ids], dtype=np.float64)[image_of]
        widths = np.array([images[i]["width"] for i in ordered_ids], dtype=np.float64)[image_of]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, widths[:, None])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, heights[:, None])
        if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
            return None  # an object with no area inside its image: _record names it
        labels = np.fromiter((labels_by_category[c] for c in category_ids if c in labels_by_category), np.int64,
                             len(boxes))
        crowd = np.fromiter((bool(ann.get("iscrowd", 0)) for ann in annotations), bool, len(annotations))[selected]
        order = np.argsort(image_of, kind="stable")  # each image's objects in file order
        boxes, labels, crowd = boxes[order].astype(np.float32), labels[order], crowd[order]
        ends = np.cumsum(np.bincount(image_of, minlength=len(ordered_ids))).tolist()
        starts = [0, *ends[:-1]]
        self.ignored_annotations = int((~selected).sum())
        return {image_id: (boxes[a:b], labels[a:b], crowd[a:b]) for image_id, a, b in zip(ordered_ids, starts, ends)}

    def _record_from_arrays(self, image_id: int | str, info: dict, path: str, boxes: np.ndarray, labels: np.ndarray,
                            crowd: np.ndarray) -> ImageRecord:
        return ImageRecord(image_path=path, height=info["height"], width=info["width"], boxes_xyxy=boxes,
                           labels=labels, difficult=crowd,
                           source=f"{self.ann_file} (image {info['file_name']}, id {image_id})", name=str(image_id))

    def _objects_one_by_one(self, annotations: list, images: dict, category_names: dict, labels_by_category: dict,
                            on_bad_sample: str, skipped: list) -> tuple[dict[int, list], dict[int, Exception]]:
        """-> ({image id: [(box xyxy, label, crowd)]}, {image id: its first problem}): every annotation checked
        on its own, each problem named (the module docstring's rules)."""
        objects: dict[int, list] = {image_id: [] for image_id in images}
        bad_images: dict[int, Exception] = {}
        for k, ann in enumerate(annotations):
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
        return objects, bad_images

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

    def _record(self, image_id: int, info: dict, path: str, objects: list) -> ImageRecord:
        """One image's record; boxes clipped to the image (an object outside it is an error)."""
        height, width = info["height"], info["width"]
        boxes = np.asarray([box for box, _, _ in objects], dtype=np.float64).reshape(-1, 4)  # [N, 4]; float32 clipped
        labels = np.asarray([label for _, label, _ in objects], dtype=np.int64)  # [N]
        crowd = np.asarray([is_crowd for _, _, is_crowd in objects], dtype=bool)  # [N]
        source = f"{self.ann_file} (image {info['file_name']}, id {image_id})"
        boxes, _ = clip_and_check_boxes(boxes, labels, (height, width), source=source)
        return ImageRecord(image_path=path, height=height, width=width, boxes_xyxy=boxes, labels=labels,
                           difficult=crowd, source=source, name=str(image_id))
