"""Cut large annotated images (aerial photos, scans, ...) into tiles, written as a VOCdevkit year.

    python scripts/tile_voc.py --out data/trees --split train --tile 400 big_1.xml big_2.xml
    python train.py experiment=cpu_own_data data.root=data/trees data.train_split=train ...

Each input is a VOC XML annotation (<size>, <object> with <name> / <bndbox>, 1-based inclusive
pixels); its image is <filename> beside the XML, or in ``--images``. Every image becomes
ceil(W / tile) x ceil(H / tile) tiles of ``tile`` x ``tile`` px; the last column / row is shifted back
to end at the image's edge (those tiles overlap their neighbours), and an image smaller than the tile
is one tile of its own size. In each tile a box keeps its clipped part; a box with less than
``--min-visible`` of its area inside is marked difficult there (as VOC marks hard objects: out of
the training targets, ignored by the AP); one with less than 2 px inside on a side is left out.
Writes ``<out>/JPEGImages/<stem>_r<row>_c<col>.jpg``, ``Annotations/<same>.xml`` and
``ImageSets/Main/<split>.txt`` (this command's tiles; other splits' files are kept).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image

from frcnn.data.voc import parse_voc_xml

MIN_SIDE_INSIDE_PX = 2.0  # a box with less of itself inside a tile, on either side, is left out of that tile


def tile_origins(size_px: int, tile_px: int) -> list[int]:
    """Left (or top) edges of the tiles along one side: 0, tile, 2 tile, ... with the last one at
    ``size - tile`` (so every tile lies inside the image); [0] when the side is not longer than a tile."""
    if size_px <= tile_px:
        return [0]
    count = math.ceil(size_px / tile_px)
    return [min(k * tile_px, size_px - tile_px) for k in range(count)]


def objects_in_tile(boxes_xyxy: np.ndarray, difficult: np.ndarray, tile_xyxy: Sequence[int],
                    min_visible: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The objects of one tile -> (indices into ``boxes_xyxy`` [M], boxes in tile px [M, 4], difficult [M]).

    ``boxes_xyxy`` [N, 4]: 0-based continuous px of the whole image; a box is clipped to ``tile_xyxy``
    (x1, y1, x2, y2), kept when at least MIN_SIDE_INSIDE_PX of it is inside on both sides, and marked
    difficult when it already was or when less than ``min_visible`` of its area is inside.
    """
    x1, y1, x2, y2 = (float(v) for v in tile_xyxy)
    clipped = boxes_xyxy.astype(np.float64).copy().reshape(-1, 4)
    clipped[:, 0::2] = clipped[:, 0::2].clip(x1, x2)
    clipped[:, 1::2] = clipped[:, 1::2].clip(y1, y2)
    inside_w, inside_h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = np.flatnonzero((inside_w >= MIN_SIDE_INSIDE_PX) & (inside_h >= MIN_SIDE_INSIDE_PX))
    full_area = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
    visible = (inside_w * inside_h)[keep] / full_area[keep]
    hard = difficult[keep] | (visible < min_visible)
    return keep, clipped[keep] - np.array([x1, y1, x1, y1]), hard


def _annotation(file_name: str, width: int, height: int, boxes_xyxy: np.ndarray, names: Sequence[str],
                difficult: np.ndarray) -> ET.Element:
    """A VOC annotation; boxes go from 0-based continuous px to VOC's 1-based inclusive integers."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for (x1, y1, x2, y2), name, hard in zip(boxes_xyxy.tolist(), names, difficult.tolist()):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "1" if hard else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        xmin, ymin = min(round(x1) + 1, width), min(round(y1) + 1, height)
        xmax, ymax = max(round(x2), xmin + 1), max(round(y2), ymin + 1)  # xmax > xmin, as the reader requires
        for key, value in (("xmin", xmin), ("ymin", ymin), ("xmax", min(xmax, width)), ("ymax", min(ymax, height))):
            ET.SubElement(bndbox, key).text = str(value)
    return root


def class_names_in(xml_paths: Sequence[Path]) -> list[str]:
    """Every <object><name> of the annotations, in order of first appearance."""
    names: dict[str, None] = {}
    for path in xml_paths:
        for obj in ET.parse(path).getroot().findall("object"):
            names.setdefault((obj.findtext("name") or "").strip(), None)
    return list(names)


def tile_voc(xml_paths: Sequence[str | Path], out_root: str | Path, split: str, tile_px: int = 400,
             images_dir: str | Path | None = None, min_visible: float = 0.5) -> list[str]:
    """Write the tiles of every annotated image into the VOCdevkit year ``out_root``; returns the tile ids."""
    xml_paths = [Path(p) for p in xml_paths]
    out_root = Path(out_root)
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out_root / folder).mkdir(parents=True, exist_ok=True)
    names = class_names_in(xml_paths)
    ids: list[str] = []
    for xml_path in xml_paths:
        parsed = parse_voc_xml(xml_path, {name: label for label, name in enumerate(names, start=1)})
        image_path = Path(images_dir or xml_path.parent) / (parsed["filename"] or f"{xml_path.stem}.jpg")
        with Image.open(image_path) as opened:
            image = opened.convert("RGB")
        if image.size != (parsed["width"], parsed["height"]):
            raise ValueError(f"{image_path}: image is {image.size[0]}x{image.size[1]} but {xml_path} says "
                             f"{parsed['width']}x{parsed['height']} (width x height)")
        tile_w, tile_h = min(tile_px, parsed["width"]), min(tile_px, parsed["height"])
        for row, top in enumerate(tile_origins(parsed["height"], tile_px)):
            for col, left in enumerate(tile_origins(parsed["width"], tile_px)):
                tile_id = f"{xml_path.stem}_r{row}_c{col}".replace(" ", "_")
                keep, boxes, hard = objects_in_tile(parsed["boxes_xyxy"], parsed["difficult"],
                                                    (left, top, left + tile_w, top + tile_h), min_visible)
                image.crop((left, top, left + tile_w, top + tile_h)).save(
                    out_root / "JPEGImages" / f"{tile_id}.jpg", quality=95)
                tile_names = [names[label - 1] for label in parsed["labels"][keep].tolist()]
                xml = _annotation(f"{tile_id}.jpg", tile_w, tile_h, boxes, tile_names, hard)
                ET.ElementTree(xml).write(out_root / "Annotations" / f"{tile_id}.xml")
                ids.append(tile_id)
    (out_root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("annotations", nargs="+", help="VOC XML annotation files of the large images")
    parser.add_argument("--out", required=True, help="VOCdevkit year to write (data.root)")
    parser.add_argument("--split", required=True, help="split name: ImageSets/Main/<split>.txt")
    parser.add_argument("--tile", type=int, default=400, help="tile side, px (default 400)")
    parser.add_argument("--images", default=None, help="folder of the images (default: beside each XML)")
    parser.add_argument("--min-visible", type=float, default=0.5,
                        help="a box with less of its area inside a tile is difficult there (default 0.5)")
    args = parser.parse_args(argv)
    if args.tile < 16:
        parser.error("--tile must be at least 16 px (one cell of the stride-16 feature map)")
    ids = tile_voc(args.annotations, args.out, args.split, args.tile, args.images, args.min_visible)
    print(f"wrote {len(ids)} tiles to {args.out} (split {args.split}: ImageSets/Main/{args.split}.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
