"""The VOC-like data's statistics beside PASCAL VOC 2007's (the table of docs/VOCLIKE.md), and a
picture of examples with their boxes.

    python scripts/voclike_stats.py                      # 2000 trainval pictures of data.seed 0
    python scripts/voclike_stats.py --pictures docs/voclike_examples.jpg

The statistics are measured on the annotations as the VOC reader loads them back from the written
VOCdevkit tree (the same code path as training), from a tree written to a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from frcnn.data.voc import VOCDataset
from frcnn.data.voclike.stats import ImageAnnotation, measure, statistics_table
from frcnn.data.voclike.tree import GENERATOR_VERSION, VoclikeParams, render_item, write_tree
from frcnn.data.voclike.voc2007 import CLASS_NAMES


def annotations_from_tree(root: Path, split: str) -> list[ImageAnnotation]:
    """Every picture of ``split`` as the VOC reader reads it (difficult objects kept, flagged)."""
    dataset = VOCDataset(root, split, CLASS_NAMES, keep_difficult=True)
    truncated = {}
    for record in dataset.records:
        tree = ET.parse(Path(record.source))
        truncated[record.name] = np.array([obj.findtext("truncated") == "1" for obj in tree.iter("object")])
    return [ImageAnnotation((r.height, r.width), r.boxes_xyxy.astype(np.float64), r.labels, r.difficult,
                            truncated[r.name]) for r in dataset.records]


def example_grid(params: VoclikeParams, out: Path, count: int = 12, columns: int = 4) -> None:
    """The first ``count`` trainval pictures with their boxes (green; difficult: red) and classes."""
    tiles = []
    for index in range(count):
        image, objects = render_item(params, "trainval", index)
        picture = Image.fromarray(image)
        draw = ImageDraw.Draw(picture)
        for obj in objects:
            colour = (255, 60, 60) if obj.difficult else (60, 255, 60)
            draw.rectangle(obj.box_xyxy, outline=colour, width=2)
            draw.text((obj.box_xyxy[0] + 3, obj.box_xyxy[1] + 2), CLASS_NAMES[obj.label - 1], fill=colour)
        tiles.append(picture)
    side = params.longer_px + 4
    grid = Image.new("RGB", (columns * side, -(-count // columns) * side), (255, 255, 255))
    for k, tile in enumerate(tiles):
        grid.paste(tile, ((k % columns) * side, (k // columns) * side))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, quality=85) if out.suffix.lower() in (".jpg", ".jpeg") else grid.save(out, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=2000, help="trainval pictures to measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pictures", type=Path, default=None, help="also write a PNG of 12 examples here")
    args = parser.parse_args(argv)
    params = VoclikeParams(seed=args.seed, num_trainval=args.num, num_test=1)
    with tempfile.TemporaryDirectory() as folder:
        rows = measure(annotations_from_tree(write_tree(params, Path(folder) / "tree"), "trainval"))
    print(f"VOC-like generator v{GENERATOR_VERSION}, data.seed={args.seed}, {args.num} trainval pictures "
          f"({params.longer_px} px), read back through the VOC reader:\n")
    print(statistics_table(rows))
    outside = [row.name for row in rows if not row.within]
    print(f"{len(rows) - len(outside)} of {len(rows)} statistics within their tolerance"
          + (f"; outside: {', '.join(outside)}" if outside else ""))
    if args.pictures:
        example_grid(params, args.pictures)
        print(f"wrote {args.pictures}")
    return 1 if outside else 0


if __name__ == "__main__":
    raise SystemExit(main())
