"""LabelMe annotations: one JSON per image (github.com/wkentaro/labelme), read into the records VOC and COCO give.

Layout: ``<root>/*.json``, each with ``imagePath`` (relative to the JSON's folder; Windows ``\\`` accepted;
when it is absent, an image with the JSON's name beside it), ``imageWidth`` / ``imageHeight`` (read from
the image's header when missing) and ``shapes``. An image stored turned (EXIF orientation) is refused:
labelme labels the picture as shown. ``data.train_split`` / ``val_split`` may name subfolders
(``<root>/<split>/*.json``) or ``.txt`` lists of JSON paths under ``root``; without them the folder's JSONs
are split automatically (:mod:`frcnn.data.split`).

Shape rule: points are 0-based continuous pixel coordinates (x, y), as COCO's. A ``rectangle`` is the box
of its corner points (either order), a ``polygon`` (3 or more points) and a ``circle`` (centre, a point on
the circle) become their bounding boxes; other shapes (point, line, linestrip, points, mask) are not boxes
and are left out, counted in ``ignored_shapes``. ``flags: {difficult: true}`` marks a difficult object
(left out of training targets, ignored by the VOC AP, as VOC's). A box is clipped to the image.

Class names: ``data.classes`` (labels 1..C in that order), else every label of the JSONs in use, sorted
(logged). Errors name the JSON and the shape index (``a.json: shapes[2] (label 'cat'): ...``) for a
malformed shape, a class not in ``data.classes``, a box without area inside the image; a missing image
names ``imagePath``. All follow ``on_bad_sample`` (:mod:`frcnn.data.records`).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from frcnn.data.checks import BadAnnotationError, BadImageError, DatasetLayoutError
from frcnn.data.records import FileDetectionDataset, ImageRecord, check_on_bad_sample, reject_sample
from frcnn.data.split import SplitSettings, automatic_split
from frcnn.data.yolo import IMAGE_SUFFIXES, image_size_wh, relative_name

__all__ = ["BOX_SHAPES", "LabelMeDataset", "labelme_class_names", "labelme_split_dataset", "list_json_files",
           "parse_labelme_json"]

log = logging.getLogger(__name__)

BOX_SHAPES = ("rectangle", "polygon", "circle")
NOT_BOXES = ("point", "line", "linestrip", "points", "mask")
LABELME_LAYOUT = ("expected LabelMe layout <root>/<name>.json (imagePath, imageWidth, imageHeight, shapes) beside "
                  "the images")


def list_json_files(folder: Path) -> list[Path]:
    """The JSON files of ``folder`` (not its subfolders), sorted; DatasetLayoutError if there is none."""
    if not folder.is_dir():
        raise DatasetLayoutError(folder, f"no such folder ({LABELME_LAYOUT})")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".json" and p.is_file())
    if not found:
        raise DatasetLayoutError(folder, f"no .json files ({LABELME_LAYOUT})")
    return found


def _load(json_path: Path) -> dict:
    try:
        content = json.loads(json_path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadAnnotationError(f"{json_path}: not a readable JSON file ({exc})") from None
    if not isinstance(content, dict) or not isinstance(content.get("shapes"), list):
        raise BadAnnotationError(f"{json_path}: not a LabelMe annotation (expected an object with a 'shapes' list)")
    return content


def _image_path(json_path: Path, content: Mapping) -> Path:
    """The image of an annotation: ``imagePath`` relative to the JSON, else ``<json stem>.<image suffix>``."""
    named = content.get("imagePath")
    if isinstance(named, str) and named.strip():
        path = json_path.parent / named.strip().replace("\\", "/")
        if path.is_file():
            return path
    for suffix in IMAGE_SUFFIXES:
        beside = json_path.with_suffix(suffix)
        if beside.is_file():
            return beside
    raise BadImageError(f"{json_path}: image file is missing (imagePath {named!r}, relative to the JSON's folder; "
                        f"nor is there a {json_path.stem}.<jpg|png|...> beside it)")


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _points(shape: Mapping, where: str) -> np.ndarray:
    points = shape.get("points")
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros((0, 0))
    if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0 or not np.isfinite(array).all():
        raise BadAnnotationError(f"{where}: points {points!r} are not a list of [x, y] pairs of finite numbers")
    return array  # [P, 2]


def shape_box(shape: Mapping, where: str) -> tuple[float, float, float, float] | None:
    """A shape's box (x1, y1, x2, y2) in pixels by the module's rule; None for a shape that is not a box."""
    kind = shape.get("shape_type") or "polygon"  # labelme before 3.0 wrote no shape_type: polygons
    if kind in NOT_BOXES:
        return None
    if kind not in BOX_SHAPES:
        raise BadAnnotationError(f"{where}: shape_type {kind!r} is not a LabelMe shape (boxes from "
                                 f"{', '.join(BOX_SHAPES)}; {', '.join(NOT_BOXES)} are left out)")
    points = _points(shape, where)
    needed = {"rectangle": 2, "polygon": 3, "circle": 2}[kind]
    if len(points) < needed:
        raise BadAnnotationError(f"{where}: a {kind} needs {needed} or more points, got {len(points)}")
    if kind == "circle":
        (cx, cy), edge = points[0], points[1]
        radius = math.hypot(edge[0] - cx, edge[1] - cy)
        return cx - radius, cy - radius, cx + radius, cy + radius
    (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


def parse_labelme_json(json_path: str | Path, class_index: Mapping[str, int]) -> dict:
    """One annotation -> {image_path, height, width, boxes_xyxy float32 [N, 4], labels int64 [N], difficult bool [N],
    ignored: Counter of left-out shape types}. BadAnnotationError / BadImageError naming the file (and
    ``shapes[k]``) by the module's rules."""
    json_path = Path(json_path)
    content = _load(json_path)
    image_path = _image_path(json_path, content)
    stored_wh = image_size_wh(image_path)  # header only; refuses a picture stored turned (labelme labels it upright)
    width, height = _positive_int(content.get("imageWidth")), _positive_int(content.get("imageHeight"))
    if width is None or height is None:
        width, height = stored_wh
    boxes, labels, difficult, ignored = [], [], [], Counter()
    for k, shape in enumerate(content["shapes"]):
        if not isinstance(shape, dict):
            raise BadAnnotationError(f"{json_path}: shapes[{k}] is {shape!r}, not an object with label and points")
        label = shape.get("label")
        where = f"{json_path}: shapes[{k}] (label {label!r})"
        box = shape_box(shape, where)
        if box is None:
            ignored[shape.get("shape_type")] += 1
            continue
        if not isinstance(label, str) or label not in class_index:
            raise BadAnnotationError(f"{where}: class {label!r} is not in data.classes {list(class_index)}")
        x1, y1, x2, y2 = box
        clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width),
                   min(max(y2, 0.0), height))
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            raise BadAnnotationError(f"{where}: box (x1, y1, x2, y2) = {[round(v, 3) for v in box]} has no area inside "
                                     f"the {width}x{height} image (width x height)")
        flags = shape.get("flags") if isinstance(shape.get("flags"), dict) else {}
        boxes.append(clipped)
        labels.append(class_index[label])
        difficult.append(bool(flags.get("difficult", False) or shape.get("difficult", False)))
    return {"image_path": image_path, "height": height, "width": width,
            "boxes_xyxy": np.asarray(boxes, dtype=np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64),
            "difficult": np.asarray(difficult, dtype=bool), "ignored": ignored}


def labelme_class_names(json_paths: Sequence[Path]) -> list[str]:
    """Every label of a box shape in ``json_paths``, sorted (files that do not read are left to the reader)."""
    found = set()
    for path in json_paths:
        try:
            shapes = _load(path)["shapes"]
        except BadAnnotationError:
            continue
        found.update(s["label"] for s in shapes if isinstance(s, dict) and isinstance(s.get("label"), str)
                     and (s.get("shape_type") or "polygon") in BOX_SHAPES)
    return sorted(found)


class LabelMeDataset(FileDetectionDataset):
    """The annotations ``json_paths`` of a LabelMe folder ``root``; items as :class:`FileDetectionDataset`.
    Record names are the JSON paths relative to ``root``. ``keep_difficult`` as VOC's (evaluation: True)."""

    def __init__(
        self,
        root: str | Path,
        json_paths: Sequence[str | Path],
        class_names: Sequence[str],
        keep_difficult: bool = False,
        transform: Callable | None = None,
        on_bad_sample: str = "error",
        verify_images: bool = False,
        description: str = "",
    ):
        check_on_bad_sample(on_bad_sample)
        self.root = Path(root)
        class_index = {name: label for label, name in enumerate(class_names, start=1)}
        records: list[ImageRecord] = []
        skipped: list[tuple[str, str]] = []
        self.ignored_shapes: Counter = Counter()  # shape type -> shapes left out (not boxes)
        for json_path in map(Path, json_paths):
            try:
                parsed = parse_labelme_json(json_path, class_index)
            except (BadAnnotationError, BadImageError) as exc:
                reject_sample(on_bad_sample, skipped, json_path, exc)
                continue
            self.ignored_shapes += parsed["ignored"]
            records.append(ImageRecord(
                image_path=str(parsed["image_path"]), height=parsed["height"], width=parsed["width"],
                boxes_xyxy=parsed["boxes_xyxy"], labels=parsed["labels"], difficult=parsed["difficult"],
                source=str(json_path), name=relative_name(json_path, self.root)))
        if self.ignored_shapes:
            log.info("LabelMe %s: left out %s shapes that are not boxes", self.root,
                     ", ".join(f"{n} {kind}" for kind, n in sorted(self.ignored_shapes.items(), key=str)))
        super().__init__(records, class_names, transform=transform, keep_difficult=keep_difficult,
                         on_bad_sample=on_bad_sample, verify_images=verify_images, skipped=skipped,
                         description=description or f"LabelMe {self.root}")


def resolve_labelme_split(root: Path, entry: str, key: str) -> list[Path]:
    """``data.<key>``: a subfolder of ``root`` (its JSONs) or a .txt list of JSON paths under ``root``."""
    path = root / entry
    if path.is_dir():
        return list_json_files(path)
    if path.is_file() and path.suffix == ".txt":
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        return [root / line for line in lines]
    raise DatasetLayoutError(root, f"data.{key}={entry!r}: no such subfolder or .txt list of JSON files under the "
                                   f"root ({LABELME_LAYOUT})")


def labelme_split_dataset(root: Path, split: str, *, classes: Sequence[str] | None, train_split: str | None,
                          val_split: str | None, keep_difficult: bool, settings: SplitSettings,
                          transform: Callable | None, on_bad_sample: str, verify_images: bool) -> LabelMeDataset:
    """The ``split`` ('train' / 'val') of a LabelMe folder: ``train_split`` and ``val_split`` (subfolders or
    .txt lists) when both are given, else the automatic split of ``<root>/*.json``. Without ``classes``, the
    classes are every label of the JSONs in use (both splits), sorted and logged."""
    if train_split and val_split:
        entries = [resolve_labelme_split(root, str(entry), key)
                   for entry, key in ((train_split, "train_split"), (val_split, "val_split"))]
        every = entries[0] + entries[1]
    else:
        entries, every = None, list_json_files(root)
    if classes is None:
        classes = labelme_class_names(every)
        if not classes:
            raise DatasetLayoutError(root, "no rectangle, polygon or circle shape with a label in its JSON files, so "
                                           "no classes: name them with data.classes=[a,b]")
        log.info("data=labelme: classes %s, every box label of %s's JSON files (data.classes=[...] fixes them)",
                 classes, root)

    def dataset_of(jsons: Sequence[str | Path]) -> LabelMeDataset:
        return LabelMeDataset(root, [root / p if isinstance(p, str) else p for p in jsons], classes,
                              keep_difficult=keep_difficult, transform=transform, on_bad_sample=on_bad_sample,
                              verify_images=verify_images, description=f"LabelMe {root} {split}")

    if entries is not None:
        return dataset_of(entries[0 if split == "train" else 1])
    return automatic_split("labelme", split, settings, [relative_name(p, root) for p in every], dataset_of, root)
