"""Small on-disk VOCdevkit and COCO trees with known boxes, for tests (importable by any test).

``write_voc_tree(root)`` writes 6 images (landscape and portrait, one with a difficult object, one
with no object) with ImageSets trainval / test; ``write_coco_tree(root)`` writes 5 images with
non-contiguous category ids, one crowd box and one image without annotations. The expected values
live in VOC_IMAGES / COCO_IMAGES, so tests compare exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import escape

from PIL import Image, ImageDraw

TREE_CLASSES = ("box", "disc")  # foreground classes of both trees (data.classes=[box,disc])
COLOURS = {"box": (220, 40, 40), "disc": (40, 60, 220), "star": (40, 200, 60)}

# id -> (width, height, [(class, (xmin, ymin, xmax, ymax) VOC 1-based inclusive, difficult)])
VOC_IMAGES: dict[str, tuple[int, int, list]] = {
    "000001": (160, 120, [("box", (11, 21, 60, 80), 0), ("disc", (81, 11, 140, 70), 0)]),
    "000002": (120, 160, [("disc", (21, 31, 100, 110), 0)]),
    "000003": (160, 120, [("box", (1, 1, 50, 40), 0), ("disc", (101, 51, 150, 110), 1)]),  # one difficult
    "000004": (160, 120, []),  # no object
    "000005": (120, 160, [("box", (31, 41, 90, 150), 0)]),
    "000006": (160, 120, [("disc", (41, 21, 120, 100), 0)]),
}
VOC_SPLITS = {"trainval": ["000001", "000002", "000003", "000004"], "test": ["000005", "000006", "000003"]}


def draw_image(width: int, height: int, objects: list, path: Path) -> None:
    """Grey background with each object painted over its pixels (0-based inclusive x0..x1, y0..y1)."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for name, (x0, y0, x1, y1) in objects:
        shape = draw.rectangle if name == "box" else draw.ellipse
        shape([x0, y0, x1, y1], fill=COLOURS.get(name, (0, 0, 0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90)


def voc_xml(filename: str, width: int | None, height: int | None, objects: list[dict]) -> str:
    """VOC annotation text. Object dicts: name, box (xmin, ymin, xmax, ymax) or None for no <bndbox>,
    difficult (0/1), omit (coordinate tags to leave out)."""
    size = "" if width is None else f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    parts = [f"<annotation><folder>VOC</folder><filename>{escape(filename)}</filename>{size}"]
    for obj in objects:
        box = ""
        if obj.get("box") is not None:
            tags = ("xmin", "ymin", "xmax", "ymax")
            coords = "".join(f"<{tag}>{value}</{tag}>" for tag, value in zip(tags, obj["box"])
                             if tag not in obj.get("omit", ()))
            box = f"<bndbox>{coords}</bndbox>"
        parts.append(f"<object><name>{escape(obj['name'])}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{obj.get('difficult', 0)}</difficult>{box}</object>")
    parts.append("</annotation>")
    return "".join(parts)


def write_voc_tree(root: str | Path, images: dict | None = None, splits: dict | None = None) -> Path:
    """A VOCdevkit year at ``root`` (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt) -> root."""
    root = Path(root)
    images = VOC_IMAGES if images is None else images
    splits = VOC_SPLITS if splits is None else splits
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for image_id, (width, height, objects) in images.items():
        pixels = [(name, (x0 - 1, y0 - 1, x1 - 1, y1 - 1)) for name, (x0, y0, x1, y1), _ in objects]
        draw_image(width, height, pixels, root / "JPEGImages" / f"{image_id}.jpg")
        xml_objects = [{"name": name, "box": box, "difficult": diff} for name, box, diff in objects]
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", width, height, xml_objects))
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


# COCO: categories deliberately out of id order; labels follow ascending id: 2 box -> 1, 5 disc -> 2, 9 star -> 3
COCO_CATEGORIES = [{"id": 5, "name": "disc"}, {"id": 2, "name": "box"}, {"id": 9, "name": "star"}]
# image id -> (file, width, height, [(category id, [x, y, w, h], iscrowd)])
COCO_IMAGES: dict[int, tuple[str, int, int, list]] = {
    10: ("a.jpg", 160, 120, [(2, [10.0, 20.0, 50.0, 60.0], 0), (5, [80.0, 10.0, 60.0, 60.0], 0)]),
    11: ("b.jpg", 120, 160, [(9, [20.0, 30.0, 40.0, 50.0], 0)]),
    12: ("c.jpg", 160, 120, [(2, [5.5, 5.5, 40.0, 30.0], 0), (5, [90.0, 40.0, 60.0, 70.0], 1)]),  # one crowd
    13: ("d.jpg", 160, 120, []),  # no annotation
    3: ("e.jpg", 120, 160, [(5, [30.0, 40.0, 60.0, 100.0], 0)]),
}


def coco_json(images: dict | None = None, categories: list | None = None) -> dict:
    """COCO instances dict for ``images`` (annotation ids 1, 2, ... in order)."""
    images = COCO_IMAGES if images is None else images
    out = {"images": [], "annotations": [], "categories": COCO_CATEGORIES if categories is None else categories}
    for image_id, (file_name, width, height, anns) in images.items():
        out["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for category_id, bbox, crowd in anns:
            out["annotations"].append({"id": len(out["annotations"]) + 1, "image_id": image_id,
                                       "category_id": category_id, "bbox": bbox, "iscrowd": crowd,
                                       "area": bbox[2] * bbox[3]})
    return out


def write_coco_tree(root: str | Path, images: dict | None = None, data: dict | None = None) -> tuple[Path, Path]:
    """``root/annotations/instances.json`` + ``root/images/*.jpg`` -> (annotation file, image folder)."""
    root = Path(root)
    images = COCO_IMAGES if images is None else images
    data = coco_json(images) if data is None else data
    names = {c["id"]: c["name"] for c in COCO_CATEGORIES}
    for file_name, width, height, anns in images.values():
        pixels = [(names.get(c, "box"), (x, y, x + w - 1, y + h - 1)) for c, (x, y, w, h), _ in anns]
        draw_image(width, height, pixels, root / "images" / file_name)
    ann_file = root / "annotations" / "instances.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(data))
    return ann_file, root / "images"


def truncate_file(path: str | Path, keep_fraction: float = 0.4) -> None:
    """Cut a file to its first ``keep_fraction`` of bytes (a truncated download)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep_fraction))])
