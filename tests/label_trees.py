"""Small YOLO and LabelMe folders with known boxes, for tests (the same pictures as tests/data_trees.py draws).

``write_yolo_tree(root, images)``: ``images/<name>.jpg``, ``labels/<name>.txt`` and a ``data.yaml``;
``write_labelme_tree(root, images)``: ``<name>.jpg`` + ``<name>.json``. ``images`` maps a name to
(width, height, [(class, (x1, y1, x2, y2) 0-based continuous px)]); classes are TREE_CLASSES.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.data_trees import TREE_CLASSES, draw_image

# name -> (width, height, [(class, (x1, y1, x2, y2))]): 0-based continuous pixels
LABELLED_IMAGES: dict[str, tuple[int, int, list]] = {
    "a": (160, 120, [("box", (10, 20, 60, 80)), ("disc", (80, 10, 140, 70))]),
    "b": (120, 160, [("disc", (20, 30, 100, 110))]),
    "c": (160, 120, [("box", (0, 0, 50, 40))]),
    "d": (160, 120, []),
    "e": (120, 160, [("box", (30, 40, 90, 150))]),
}


def many_images(count: int, rare_every: int = 5) -> dict:
    """``count`` pictures of 128x96 px with one box each; every ``rare_every``-th one a disc, the rest boxes."""
    images = {}
    for k in range(count):
        name = "disc" if k % rare_every == 0 else "box"
        x = 8 + (k * 13) % 60
        images[f"img{k:03d}"] = (128, 96, [(name, (x, 16, x + 40, 72))])
    return images


def _pixels(objects: list) -> list:
    return [(name, (int(x1), int(y1), max(int(x1), round(x2) - 1), max(int(y1), round(y2) - 1)))
            for name, (x1, y1, x2, y2) in objects]


def yolo_line(name: str, box: tuple, width: int, height: int) -> str:
    x1, y1, x2, y2 = box
    return (f"{TREE_CLASSES.index(name)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
            f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}\n")


def write_yolo_tree(root: str | Path, images: dict | None = None, yaml_text: str | None = None) -> Path:
    """A YOLO folder at ``root`` (no train: / val: in its data.yaml unless ``yaml_text`` says) -> root."""
    root = Path(root)
    images = LABELLED_IMAGES if images is None else images
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for name, (width, height, objects) in images.items():
        draw_image(width, height, _pixels(objects), root / "images" / f"{name}.jpg")
        (root / "labels" / f"{name}.txt").write_text("".join(yolo_line(c, b, width, height) for c, b in objects))
    (root / "data.yaml").write_text(yaml_text if yaml_text is not None else f"names: {list(TREE_CLASSES)}\n")
    return root


def labelme_shape(name: str, box: tuple, shape_type: str = "rectangle", **extra) -> dict:
    x1, y1, x2, y2 = box
    return {"label": name, "points": [[x1, y1], [x2, y2]], "group_id": None, "shape_type": shape_type,
            "flags": {}, **extra}


def write_labelme_tree(root: str | Path, images: dict | None = None) -> Path:
    """A LabelMe folder at ``root``: one JSON of rectangles per picture -> root."""
    root = Path(root)
    images = LABELLED_IMAGES if images is None else images
    for name, (width, height, objects) in images.items():
        draw_image(width, height, _pixels(objects), root / f"{name}.jpg")
        write_labelme_json(root / f"{name}.json", f"{name}.jpg", width, height,
                           [labelme_shape(c, b) for c, b in objects])
    return root


def write_labelme_json(path: Path, image_path: str, width: int | None, height: int | None, shapes: list) -> None:
    content = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path, "imageData": None}
    if width is not None:
        content.update(imageWidth=width, imageHeight=height)
    path.write_text(json.dumps(content))
