"""PASCAL VOC detection data (VOCdevkit layout), parsed once at construction.

Layout of one year's ``root`` (e.g. ``VOCdevkit/VOC2007``)::

    <root>/Annotations/<id>.xml          one XML per image (xml.etree.ElementTree)
    <root>/JPEGImages/<id>.jpg           the image
    <root>/ImageSets/Main/<split>.txt    image ids of the split, one per line

Box rule (VOC devkit): pixel coordinates are 1-based and *inclusive* (the box ``xmin..xmax`` covers
``xmax - xmin + 1`` pixels). They are converted once, here, to the project's 0-based continuous
coordinates: ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (a box covering pixels 1..10 becomes
[0, 10): width 10). ``xmax <= xmin`` or ``ymax <= ymin`` in the XML is a bad annotation.

``difficult`` objects (devkit: excluded from the AP) are left out of training targets unless
``keep_difficult`` (``data.use_difficult``) and kept with ``difficult=True`` in evaluation targets.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from frcnn.data.checks import BadAnnotationError, BadImageError, DatasetLayoutError, clip_and_check_boxes
from frcnn.data.records import FileDetectionDataset, ImageRecord, check_on_bad_sample, list_dir_names, reject_sample

__all__ = ["VOC_CLASSES", "VOCDataset", "parse_voc_xml", "voc_box_to_xyxy"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_LAYOUT = ("expected VOCdevkit layout <root>/Annotations/<id>.xml, <root>/JPEGImages/<id>.jpg, "
              "<root>/ImageSets/Main/<split>.txt")
BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")
INTEGER_TEXT = re.compile(r"[0-9]+(\.0*)?", re.ASCII)  # <width> / <height>: "500" or "500.0"


def voc_box_to_xyxy(xmin: float, ymin: float, xmax: float, ymax: float) -> tuple[float, float, float, float]:
    """VOC 1-based inclusive pixel box -> 0-based continuous (x1, y1, x2, y2) = (xmin-1, ymin-1, xmax, ymax)."""
    return xmin - 1.0, ymin - 1.0, xmax, ymax


def _positive_int(element: ET.Element | None, tag: str) -> int | None:
    """<tag> of ``element`` as a positive integer ("500" or "500.0", ASCII digits), else None."""
    text = None if element is None else element.findtext(tag)
    if text is None or not INTEGER_TEXT.fullmatch(text.strip()):
        return None
    value = int(float(text))
    return value if value > 0 else None


def _coordinate(text: str | None, tag: str, where: str) -> float:
    """<xmin> ... <ymax> text -> a finite float; BadAnnotationError naming the tag and the text."""
    if text is None or not text.strip():
        raise BadAnnotationError(f"{where}: <bndbox> has no <{tag}>")
    try:
        value = float(text)
    except ValueError:
        raise BadAnnotationError(f"{where}: <{tag}> is {text.strip()!r}, not a number") from None
    if not math.isfinite(value):
        raise BadAnnotationError(f"{where}: <{tag}> is {text.strip()!r}, not a finite number")
    return value


def parse_voc_xml(xml_path: str | Path, class_index: Mapping[str, int]) -> dict:
    """Parse one VOC annotation -> {height, width, filename, boxes_xyxy [N, 4], labels [N], difficult [N]}.

    ``class_index`` maps a class name to its label 1..C. Boxes are converted by :func:`voc_box_to_xyxy`
    and clipped to the <size> of the image. Raises BadAnnotationError naming the file for: invalid XML,
    no <size> with positive integer width / height, an object without <name> / <bndbox> / a coordinate,
    a coordinate that is not a finite number,
    xmax <= xmin or ymax <= ymin, a box outside the image, a class not in ``class_index``.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise BadAnnotationError(f"{xml_path}: not a readable XML annotation ({exc})") from exc
    size = root.find("size")
    height, width = _positive_int(size, "height"), _positive_int(size, "width")
    if height is None or width is None:
        found = "" if size is None else f"; found width {size.findtext('width')!r}, height {size.findtext('height')!r}"
        raise BadAnnotationError(f"{xml_path}: no <size> with positive integer <width> and <height>{found} (the "
                                 "image size is taken from the annotation, without decoding the image)")
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        where = f"{xml_path}: object {k} ({name or 'no <name>'})"
        if name not in class_index:
            raise BadAnnotationError(f"{where}: class {name!r} is not in data.classes {list(class_index)}")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise BadAnnotationError(f"{where} has no <bndbox>")
        coords = [_coordinate(bndbox.findtext(tag), tag, where) for tag in BOX_TAGS]
        xmin, ymin, xmax, ymax = coords
        if xmax <= xmin or ymax <= ymin:
            raise BadAnnotationError(f"{where}: box (xmin, ymin, xmax, ymax) = {tuple(coords)} has xmax <= xmin "
                                     "or ymax <= ymin")
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise BadAnnotationError(f"{where}: <difficult> is {flag!r}, expected 0 or 1")
        boxes.append(voc_box_to_xyxy(xmin, ymin, xmax, ymax))
        labels.append(class_index[name])
        difficult.append(flag == "1")
    boxes_xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # [N, 4], float32 once clipped
    labels_np = np.asarray(labels, dtype=np.int64)  # [N]
    # the box rule of the data boundary: clip to the image, an object outside it is an error
    clipped, _ = clip_and_check_boxes(boxes_xyxy, labels_np, (height, width), source=str(xml_path))
    return {
        "height": height, "width": width, "filename": (root.findtext("filename") or "").strip() or None,
        "boxes_xyxy": clipped, "labels": labels_np, "difficult": np.asarray(difficult, dtype=bool),
    }


def read_split_ids(split_file: Path) -> list[str]:
    """Image ids of an ImageSets file: first token of every non-empty line.

    Blank lines, spaces / tabs around an id, a second column (the devkit's per-class files:
    ``000005 -1``), CRLF line ends and a UTF-8 byte-order mark are all accepted; a file that is not
    UTF-8 text is a BadAnnotationError naming it.
    """
    try:
        with open(split_file, encoding="utf-8-sig") as f:
            return [line.split()[0] for line in f if line.strip()]
    except UnicodeDecodeError as exc:
        raise BadAnnotationError(f"{split_file}: not a UTF-8 text file of image ids, one per line ({exc})") from None


def _id_problem(image_id: str) -> str | None:
    """Why an ImageSets id cannot name files under Annotations/ and JPEGImages/, or None."""
    if any(sep in image_id for sep in ("/", "\\")) or image_id in (".", ".."):
        return "is a path, not a file name"
    if any(not ch.isprintable() for ch in image_id):
        return "holds a control character"
    return None


class VOCDataset(FileDetectionDataset):
    """One VOCdevkit year and split (e.g. ``VOC2007``, ``trainval``); items as :class:`FileDetectionDataset`.

    Every XML of the split is parsed at construction (image sizes come from <size>). An id listed in
    ImageSets without an XML, a missing image file and every problem of :func:`parse_voc_xml` follow
    ``on_bad_sample`` ("error" raises naming the file, "skip" drops and counts the image in ``skipped``).
    The image is ``JPEGImages/<id>.jpg``, or ``JPEGImages/<filename>`` from the XML if that is absent.
    ``image_ids``: the ids to read instead of the split file's (a folder without ImageSets: frcnn.data.split).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str] = VOC_CLASSES,
        keep_difficult: bool = False,
        transform: Callable | None = None,
        on_bad_sample: str = "error",
        verify_images: bool = False,
        image_ids: Sequence[str] | None = None,
    ):
        check_on_bad_sample(on_bad_sample)
        self.root, self.split = Path(root), split
        annotations, images = self.root / "Annotations", self.root / "JPEGImages"
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not self.root.is_dir():
            raise DatasetLayoutError(root, f"no such folder ({VOC_LAYOUT})")
        for folder in (annotations, images):
            if not folder.is_dir():
                raise DatasetLayoutError(root, f"no {folder.name}/ folder ({VOC_LAYOUT})")
        if image_ids is None and not split_file.is_file():
            raise DatasetLayoutError(root, f"no split file ImageSets/Main/{split}.txt ({VOC_LAYOUT})")
        class_index = {name: label for label, name in enumerate(class_names, start=1)}
        xml_names, image_names = list_dir_names(annotations), list_dir_names(images)
        records: list[ImageRecord] = []
        skipped: list[tuple[str, str]] = []
        if image_ids is None:
            image_ids = read_split_ids(split_file)
        else:  # the automatic split's ids (frcnn.data.split): errors name the split
            split_file = Path(f"{split} (the automatic split of {self.root})")
        if not image_ids:
            raise DatasetLayoutError(root, f"split file {split_file} lists no image ids (split {split!r} is empty)")
        for position, image_id in enumerate(image_ids, start=1):
            problem = _id_problem(image_id)
            if problem:
                reject_sample(on_bad_sample, skipped, split_file, BadAnnotationError(
                    f"{split_file}: image id {image_id!r} (id {position} of the file) {problem}"))
                continue
            xml_path = annotations / f"{image_id}.xml"
            if xml_path.name not in xml_names:
                reject_sample(on_bad_sample, skipped, split_file, BadAnnotationError(
                    f"{split_file}: image id {image_id!r} has no annotation file {xml_path}"))
                continue
            try:
                parsed = parse_voc_xml(xml_path, class_index)
            except BadAnnotationError as exc:
                reject_sample(on_bad_sample, skipped, xml_path, exc)
                continue
            image_name = f"{image_id}.jpg"
            if image_name not in image_names and parsed["filename"] in image_names:
                image_name = parsed["filename"]
            if image_name not in image_names:
                named = f"; nor is <filename> {parsed['filename'] or ''!r} of {xml_path}"
                reject_sample(on_bad_sample, skipped, images / image_name, BadImageError(
                    f"{images / image_name}: image file is missing (image id {image_id!r} of {split_file}{named})"))
                continue
            records.append(ImageRecord(
                image_path=str(images / image_name), height=parsed["height"], width=parsed["width"],
                boxes_xyxy=parsed["boxes_xyxy"], labels=parsed["labels"], difficult=parsed["difficult"],
                source=str(xml_path), name=image_id,
            ))
        super().__init__(records, class_names, transform=transform, keep_difficult=keep_difficult,
                         on_bad_sample=on_bad_sample, verify_images=verify_images, skipped=skipped,
                         description=f"VOC {self.root} {split}")
