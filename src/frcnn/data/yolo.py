"""YOLO labels (Ultralytics' layout): one text file per image, read into the records VOC and COCO give.

Layout of ``root`` (docs.ultralytics.com/datasets/detect)::

    <root>/images/**/<name>.jpg       the images (bmp, jpeg, jpg, png, tif, tiff, webp)
    <root>/labels/**/<name>.txt       their labels: the image's path with its last images/ -> labels/, .txt
    <root>/data.yaml                  names: [a, b, ...] (or {0: a, 1: b}); train: / val: (optional)

Label rule: one object per line, ``class cx cy w h``: ``class`` the 0-based index into ``names``
(label ``class + 1`` here), the box centre and size as fractions of the image's width and height
(Ultralytics refuses values outside [0, 1], and so does this reader). A line of a class and three or more
``x y`` pairs is a polygon (Ultralytics' segment labels) and becomes its bounding box. The box in
pixels is (x1, y1, x2, y2) = ((cx - w/2) W, (cy - h/2) H, (cx + w/2) W, (cy + h/2) H), clipped to the
image. An image without a label file, or with an empty one, has no objects (YOLO's background images).

Splits: ``data.yaml``'s ``train:`` and ``val:`` (or ``data.train_split`` / ``val_split``) each name a
folder of images or a ``.txt`` list of image paths, relative to ``root`` (a leading ``../``, as Roboflow
writes it, is tried without it too, as Ultralytics does); the yaml's ``path:`` is not read, ``data.root`` is
the folder. Without both, the images of the one given, or every image under ``images/``, are split
automatically (:mod:`frcnn.data.split`). An image stored turned (EXIF orientation) is refused: its labels
describe the picture as shown.

Errors name the file and line (``labels/a.txt:3: ...``) for a line that is not numbers, a class outside
``names``, a value outside [0, 1], a box without area; a label file without its image, or a listed image
that does not exist, is a missing image. All follow ``on_bad_sample`` (:mod:`frcnn.data.records`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from frcnn.data.checks import BadAnnotationError, BadImageError, DatasetLayoutError, clip_and_check_boxes
from frcnn.data.records import FileDetectionDataset, ImageRecord, check_on_bad_sample, reject_sample
from frcnn.data.split import SplitSettings, automatic_split
from frcnn.errors import ConfigError

__all__ = ["IMAGE_SUFFIXES", "YOLODataset", "label_path_of", "list_images", "parse_yolo_labels", "read_dataset_yaml",
           "resolve_split_entry", "yolo_split_dataset"]

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SUFFIX_CHOICE = "{" + ",".join(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES) + "}"
YOLO_LAYOUT = ("expected YOLO layout <root>/images/**/<name>.jpg with <root>/labels/**/<name>.txt, and class names "
               "in <root>/data.yaml (names:) or data.classes")
BOX_FIELDS = 5  # class cx cy w h


def label_path_of(image_path: Path) -> Path:
    """Ultralytics' rule: the image's path with its last ``images`` folder replaced by ``labels``, suffix .txt."""
    parts = list(image_path.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (any depth), sorted."""
    found = []
    for directory, _, files in os.walk(folder):
        found.extend(Path(directory) / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found)


def read_dataset_yaml(path: str | Path) -> dict:
    """Ultralytics' data.yaml -> {names: [class names in index order], train: entry | None, val: entry | None}.

    ``names`` is a list, or a mapping of 0..C-1 to names; ``nc``, if given, must be their number.
    BadAnnotationError naming the file and the key otherwise."""
    import yaml

    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BadAnnotationError(f"{path}: not a readable YAML file ({exc})") from None
    if not isinstance(content, dict):
        raise BadAnnotationError(f"{path}: expected a mapping with names: (and train: / val:), got {content!r}")
    names = content.get("names")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise BadAnnotationError(f"{path}: names: maps {sorted(names, key=str)}; expected the class indices "
                                     f"0..{len(names) - 1}, each once")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) and str(n) for n in names):
        raise BadAnnotationError(f"{path}: names: is {names!r}; expected a list of class names (index 0 first) or "
                                 "a mapping 0: name, 1: name, ...")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise BadAnnotationError(f"{path}: names: lists a class twice: {names}")
    if "nc" in content and content["nc"] != len(names):
        raise BadAnnotationError(f"{path}: nc: {content['nc']!r} but names: lists {len(names)} classes")
    return {"names": names, "train": content.get("train"), "val": content.get("val")}


def _under_root(root: Path, relative: str) -> Path:
    path = root / relative
    if not path.exists() and relative.startswith("../"):  # Roboflow's train: ../train/images
        path = root / relative[3:]
    return path


def resolve_split_entry(root: Path, entry: str | Sequence[str], where: str, on_bad_sample: str,
                        skipped: list[tuple[str, str]]) -> list[Path]:
    """The images of a split entry: a folder (its images), a .txt list (one image path a line, relative to
    ``root``; ``./x`` relative to the list's folder), or a list of those. ``where`` names the entry for errors
    (``data.yaml train:``). A listed image that does not exist follows ``on_bad_sample``, naming list:line."""
    if isinstance(entry, (list, tuple)):
        return [p for part in entry for p in resolve_split_entry(root, part, where, on_bad_sample, skipped)]
    if not isinstance(entry, str) or not entry.strip():
        raise DatasetLayoutError(root, f"{where} is {entry!r}; expected a folder of images or a .txt list of them "
                                       f"under the root ({YOLO_LAYOUT})")
    path = _under_root(root, entry.strip())
    if path.is_dir():
        return list_images(path)
    if not path.is_file():
        raise DatasetLayoutError(root, f"{where} {entry!r}: no such folder or .txt list under the root ({YOLO_LAYOUT})")
    images = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise BadAnnotationError(f"{path}: not a UTF-8 list of image paths, one a line ({exc})") from None
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        image = (path.parent / text) if text.startswith("./") else _under_root(root, text)
        if not image.is_file():
            reject_sample(on_bad_sample, skipped, image, BadImageError(
                f"{path}:{number}: image file {text!r} is missing (looked for {image})"))
            continue
        images.append(image)
    return images


def _number(token: str, where: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise BadAnnotationError(f"{where}: {token!r} is not a number") from None
    if not math.isfinite(value):
        raise BadAnnotationError(f"{where}: {token!r} is not a finite number")
    return value


def _class_index(token: str, where: str) -> int:
    """A class field: 0, 1, ... (``2.0`` too, as Ultralytics reads its labels as floats)."""
    try:
        value = float(token)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0 and value.is_integer()):
        raise BadAnnotationError(f"{where}: class {token!r} is not a class index (0, 1, ...)")
    return int(value)


def parse_yolo_labels(label_path: str | Path, width: int, height: int, class_names: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One label file of a ``width`` x ``height`` image -> (boxes_xyxy float32 [N, 4] px, labels int64 [N] in 1..C).

    The module docstring has the rule; BadAnnotationError names ``file:line`` and the value for every problem."""
    try:
        text = Path(label_path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadAnnotationError(f"{label_path}: not a UTF-8 text file of 'class cx cy w h' lines ({exc})") from None
    boxes, labels = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_path}:{number}"
        if len(fields) != BOX_FIELDS and (len(fields) < 7 or len(fields) % 2 == 0):
            raise BadAnnotationError(f"{where}: {len(fields)} values {line.strip()!r}; expected 5 (class cx cy w h, "
                                     "fractions of the image) or a class and 3 or more x y pairs (a polygon)")
        index = _class_index(fields[0], where)
        if index >= len(class_names):
            raise BadAnnotationError(f"{where}: class {index} is not one of the {len(class_names)} classes "
                                     f"(0..{len(class_names) - 1}: {list(class_names)})")
        values = [_number(token, where) for token in fields[1:]]
        outside = [v for v in values if not 0.0 <= v <= 1.0]
        if outside:
            raise BadAnnotationError(f"{where}: value {outside[0]:g} is outside [0, 1]: YOLO coordinates are fractions "
                                     f"of the image's width and height (pixels divided by {width} / {height})")
        if len(fields) == BOX_FIELDS:
            cx, cy, w, h = values
            if w <= 0 or h <= 0:
                raise BadAnnotationError(f"{where}: box (cx cy w h) = {' '.join(fields[1:])} has no area (w or h is 0)")
            box = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        else:
            xs, ys = values[0::2], values[1::2]
            box = (min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise BadAnnotationError(f"{where}: polygon of {len(xs)} points has no area (its x or y values are "
                                         "all equal)")
        boxes.append(box)
        labels.append(index + 1)
    boxes_xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # [N, 4]
    labels_np = np.asarray(labels, dtype=np.int64)  # [N]
    clipped, _ = clip_and_check_boxes(boxes_xyxy, labels_np, (height, width), source=str(label_path))
    return clipped, labels_np


EXIF_ORIENTATION = 0x0112  # 1: stored upright; 2-8: flipped and / or rotated for display


def image_size_wh(path: Path) -> tuple[int, int]:
    """(width, height) from the image's header (no decoding); BadImageError naming the file, also for an image
    stored turned (EXIF orientation other than 1): labelling tools (Ultralytics, labelme) label the picture as
    shown, turned upright, while frcnn reads the stored pixels, so the boxes would miss their objects."""
    try:
        with Image.open(path) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            if orientation not in (0, 1):
                raise BadImageError(f"{path}: stored turned (EXIF orientation {orientation}); labels refer to the "
                                    "picture as shown, frcnn reads the stored pixels: save it upright first (e.g. "
                                    "PIL.ImageOps.exif_transpose)")
            return image.size
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(f"{path}: image file is missing") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImageError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def image_stem_of(label: Path) -> Path:
    """The image path, without its suffix, a label file belongs to (the last labels/ -> images/)."""
    parts = list(label.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "labels":
            parts[k] = "images"
            break
    return Path(*parts).with_suffix("")


def labels_without_images(images_dir: Path, images: Sequence[Path], on_bad_sample: str
                          ) -> list[tuple[str, str]]:
    """Label files under the labels/ folder of ``images_dir`` that none of ``images`` (all the folder's images)
    has: each a missing image (``on_bad_sample``: raised, or returned as skipped (file, reason))."""
    labels_dir = label_path_of(images_dir / "image.jpg").parent
    if labels_dir == images_dir or not labels_dir.is_dir():
        return []
    wanted = {label_path_of(image) for image in images}
    skipped: list[tuple[str, str]] = []
    for directory, _, files in os.walk(labels_dir):
        for name in sorted(files):
            label = Path(directory) / name
            if label.suffix == ".txt" and label not in wanted:
                reject_sample(on_bad_sample, skipped, label, BadImageError(
                    f"{label}: label file without its image (no {image_stem_of(label)}.{SUFFIX_CHOICE})"))
    return skipped


class YOLODataset(FileDetectionDataset):
    """The images ``images`` (paths) of a YOLO folder ``root`` and their label files; items as
    :class:`FileDetectionDataset`. Record names are the image paths relative to ``root``. Image sizes come
    from the image headers (the labels are fractions of them); ``skipped``: problems found before (label files
    without an image: :func:`labels_without_images`)."""

    def __init__(
        self,
        root: str | Path,
        images: Sequence[str | Path],
        class_names: Sequence[str],
        transform: Callable | None = None,
        on_bad_sample: str = "error",
        verify_images: bool = False,
        skipped: Sequence[tuple[str, str]] = (),
        description: str = "",
    ):
        check_on_bad_sample(on_bad_sample)
        self.root = Path(root)
        skipped = list(skipped)
        image_paths = [Path(p) for p in images]
        records: list[ImageRecord] = []
        self.background_images = 0  # images without a label file
        for image in image_paths:
            label = label_path_of(image)
            try:
                width, height = image_size_wh(image)
                if label.is_file():
                    boxes, labels = parse_yolo_labels(label, width, height, class_names)
                else:
                    boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
                    self.background_images += 1
            except (BadAnnotationError, BadImageError) as exc:
                reject_sample(on_bad_sample, skipped, label if isinstance(exc, BadAnnotationError) else image, exc)
                continue
            records.append(ImageRecord(image_path=str(image), height=height, width=width, boxes_xyxy=boxes,
                                       labels=labels, difficult=np.zeros(len(labels), bool), source=str(label),
                                       name=relative_name(image, self.root)))
        super().__init__(records, class_names, transform=transform, keep_difficult=False, on_bad_sample=on_bad_sample,
                         verify_images=verify_images, skipped=skipped, description=description or f"YOLO {self.root}")


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with / separators (the path itself when outside ``root``)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def yolo_class_names(root: Path, dataset_yaml: str | Path | None, classes: Sequence[str] | None
                     ) -> tuple[list[str], dict]:
    """-> (class names, the yaml's content or {}). ``data.classes`` when no yaml; with both they must agree."""
    yaml_path = Path(dataset_yaml) if dataset_yaml else root / "data.yaml"
    if dataset_yaml and not yaml_path.is_file():
        raise ConfigError(f"data.dataset_yaml={dataset_yaml}: no such file (Ultralytics' data.yaml with names:)")
    content = read_dataset_yaml(yaml_path) if yaml_path.is_file() else {}
    if content and classes is not None and list(classes) != content["names"]:
        raise ConfigError(f"data.classes={list(classes)} but {yaml_path} names {content['names']}: YOLO's class "
                          "indices follow the yaml's names; leave data.classes=null or give the same list")
    if not content and classes is None:
        raise DatasetLayoutError(root, f"no data.yaml with names: and no data.classes: name the classes of indices "
                                       f"0, 1, ... with data.classes=[a,b] ({YOLO_LAYOUT})")
    return (list(classes) if classes is not None else content["names"]), content


def images_folder(root: Path) -> Path:
    """``<root>/images``, the folder the automatic split lists; DatasetLayoutError naming the layout."""
    if not root.is_dir():
        raise DatasetLayoutError(root, f"no such folder ({YOLO_LAYOUT})")
    folder = root / "images"
    if not folder.is_dir():
        raise DatasetLayoutError(root, f"no images/ folder, and no train: / val: in data.yaml ({YOLO_LAYOUT})")
    return folder


def yolo_split_dataset(root: Path, split: str, *, dataset_yaml: str | None, classes: Sequence[str] | None,
                       train_split: str | None, val_split: str | None, settings: SplitSettings,
                       transform: Callable | None, on_bad_sample: str, verify_images: bool) -> YOLODataset:
    """The ``split`` ('train' / 'val') of a YOLO folder by the module's rules: the split entries in force are
    ``train_split`` / ``val_split`` (data.*), else the yaml's ``train:`` / ``val:``; with both, each its own
    images; with one, its images split automatically; with none, every image under ``images/``."""
    if not root.is_dir():
        raise DatasetLayoutError(root, f"no such folder ({YOLO_LAYOUT})")
    class_names, content = yolo_class_names(root, dataset_yaml, classes)
    entries = [(f"data.{key}_split", given) if given else (f"data.yaml {key}:", content.get(key))
               for key, given in (("train", train_split), ("val", val_split))]
    entries = [(where, entry) for where, entry in entries if entry]
    skipped: list[tuple[str, str]] = []

    def dataset_of(images: Sequence[str | Path]) -> YOLODataset:
        return YOLODataset(root, [root / p if isinstance(p, str) else p for p in images], class_names,
                           transform=transform, on_bad_sample=on_bad_sample, verify_images=verify_images,
                           skipped=skipped, description=f"YOLO {root} {split}")

    def images_of(where: str, entry: object) -> tuple[list[Path], Path | None]:
        """(images, the folder whose labels/ must all have an image: entries that are folders)."""
        images = resolve_split_entry(root, entry, where, on_bad_sample, skipped)
        folder = _under_root(root, entry.strip()) if isinstance(entry, str) else None
        return images, folder if folder is not None and folder.is_dir() else None

    if len(entries) == 2:
        images, folder = images_of(*entries[0 if split == "train" else 1])
    elif entries:
        images, folder = images_of(*entries[0])
    else:
        folder = images_folder(root)
        images = list_images(folder)
    if folder is not None:
        skipped.extend(labels_without_images(folder, images, on_bad_sample))
    if len(entries) == 2:
        return dataset_of(images)
    return automatic_split("yolo", split, settings, [relative_name(p, root) for p in images], dataset_of, root)
