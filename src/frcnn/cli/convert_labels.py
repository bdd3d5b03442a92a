"""`frcnn-convert-labels --from voc --to yolo SRC DST`: convert box labels between VOC, COCO, YOLO and LabelMe.

Every annotated image of SRC is read with frcnn's own reader of its format (the checks and errors of
training: a bad file stops the conversion naming it, or is left out with --skip-bad) and written to the
new folder DST by frcnn.data.label_writers (each format's box rule there). SRC is:

* voc: a VOCdevkit year folder (every Annotations/*.xml, or those of --split NAME);
* coco: an instances JSON (images in --images DIR, default the JSON's folder's images/);
* yolo: a folder with images/ and labels/ (every image under images/), names from its data.yaml or --classes;
* labelme: a folder of LabelMe JSON files.

Classes: --classes a,b (labels in that order), else the source's (VOC: every <name> of its XMLs, sorted;
COCO: its categories; YOLO: data.yaml's names; LabelMe: every box label, sorted). DST has no split
files: ``python train.py data=<format> data.root=DST`` splits it (data.val_fraction) unless you add them.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from frcnn.data.checks import DataError
from frcnn.data.coco import COCODataset
from frcnn.data.label_writers import LABEL_FORMATS, write_labels
from frcnn.data.labelme import LabelMeDataset, labelme_class_names, list_json_files
from frcnn.data.records import FileDetectionDataset
from frcnn.data.voc import VOCDataset, read_split_ids
from frcnn.data.yolo import YOLODataset, images_folder, list_images, yolo_class_names
from frcnn.errors import ConfigError

TRAIN_COMMAND = {"voc": "data=voc data.root={dst} 'data.classes=[{classes}]'",
                 "coco": "data=coco data.train_ann={dst}/annotations.json data.train_images={dst}/images "
                         "(and a val_ann / val_images of your own)",
                 "yolo": "data=yolo data.root={dst}", "labelme": "data=labelme data.root={dst}"}


def voc_class_names(annotations: Path) -> list[str]:
    """Every object <name> of the XMLs in ``annotations``, sorted (files that do not parse are left to the reader)."""
    names = set()
    for xml in sorted(annotations.glob("*.xml")):
        try:
            names.update((obj.findtext("name") or "").strip() for obj in ET.parse(xml).getroot().iter("object"))
        except (ET.ParseError, OSError):
            continue
    return sorted(n for n in names if n)


def read_source(source_format: str, source: Path, classes: Sequence[str] | None, split: str | None,
                images: Path | None, on_bad_sample: str) -> FileDetectionDataset:
    """The source's images and boxes as a dataset (difficult / crowd objects kept, flagged)."""
    options = {"on_bad_sample": on_bad_sample}
    if split is not None and source_format != "voc":
        raise ConfigError(f"--split names an ImageSets/Main file of a VOC source, not of a {source_format} source")
    if source_format == "voc":
        annotations = source / "Annotations"
        if not annotations.is_dir():
            raise ConfigError(f"{source}: no Annotations/ folder (expected a VOCdevkit year: Annotations/, "
                              "JPEGImages/)")
        ids = read_split_ids(source / "ImageSets" / "Main" / f"{split}.txt") if split else \
            sorted(p.stem for p in annotations.glob("*.xml"))
        return VOCDataset(source, split or "all", classes or voc_class_names(annotations), keep_difficult=True,
                          image_ids=ids, **options)
    if source_format == "coco":
        images = images or source.parent / "images"
        return COCODataset(source, images, classes, keep_crowd=True, **options)
    if source_format == "yolo":
        names, _ = yolo_class_names(source, None, classes)
        return YOLODataset(source, list_images(images_folder(source)), names, **options)
    jsons = list_json_files(source)
    return LabelMeDataset(source, jsons, classes or labelme_class_names(jsons), keep_difficult=True, **options)


def convert_labels(source_format: str, source: str | Path, target_format: str, target: str | Path,
                   classes: Sequence[str] | None = None, split: str | None = None, images: str | Path | None = None,
                   skip_bad: bool = False, link: bool = False) -> dict:
    """Read ``source`` (``source_format``) and write it as ``target_format`` into the new folder ``target``
    -> the writer's summary plus ``classes`` and ``skipped`` (files left out with ``skip_bad``)."""
    for given in (source_format, target_format):
        if given not in LABEL_FORMATS:
            raise ConfigError(f"format {given!r}; allowed: {', '.join(LABEL_FORMATS)}")
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target}: exists and is not an empty folder; write the converted labels to a new folder")
    dataset = read_source(source_format, Path(source), classes, split, Path(images) if images else None,
                          "skip" if skip_bad else "error")
    summary = write_labels(target_format, dataset.records, dataset.class_names, target, link=link)
    return {**summary, "classes": list(dataset.class_names), "skipped": list(dataset.skipped)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="frcnn-convert-labels",
                                     description="Convert box labels between VOC, COCO, YOLO and LabelMe.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--from", dest="source_format", required=True, choices=LABEL_FORMATS, help="format of SRC")
    parser.add_argument("--to", dest="target_format", required=True, choices=LABEL_FORMATS, help="format of DST")
    parser.add_argument("source", metavar="SRC", help="the labels to convert (a folder; COCO: the JSON file)")
    parser.add_argument("target", metavar="DST", help="a new (or empty) folder to write")
    parser.add_argument("--classes", help="comma-separated class names, labels 1..C in this order")
    parser.add_argument("--split", help="VOC source: convert the ids of ImageSets/Main/SPLIT.txt only")
    parser.add_argument("--images", help="COCO source: the image folder (default: images/ beside the JSON)")
    parser.add_argument("--skip-bad", action="store_true", help="leave out bad files (listed) instead of stopping")
    parser.add_argument("--link", action="store_true", help="hard-link the images instead of copying them")
    args = parser.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    try:
        done = convert_labels(args.source_format, args.source, args.target_format, args.target, classes, args.split,
                              args.images, args.skip_bad, args.link)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    for file, reason in done["skipped"]:
        print(f"left out {file}: {reason}", file=sys.stderr)
    print(f"wrote {done['images']} images, {done['boxes']} boxes of {len(done['classes'])} classes "
          f"({', '.join(done['classes'])}) as {args.target_format} to {args.target}")
    if done["difficult_as_ordinary"]:
        print(f"note: {done['difficult_as_ordinary']} difficult objects are ordinary boxes there (YOLO has no "
              "difficult flag)")
    command = TRAIN_COMMAND[args.target_format].format(dst=args.target, classes=",".join(done["classes"]))
    print(f"train on it: python train.py {command}")
    return 0
