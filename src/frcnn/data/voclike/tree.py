"""The VOC-like data written as a VOCdevkit tree, once, and found again by its parameters.

``ensure_voclike_tree(params)`` returns ``<cache>/voclike/<fingerprint>/`` holding
``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and ``ImageSets/Main/{trainval,test}.txt`` in VOC's
own conventions (1-based inclusive boxes, ``difficult`` / ``truncated`` flags), so the VOC reader, the
devkit's evaluation rules and every tool that reads a VOCdevkit read it unchanged. Picture ``i`` of a
split is drawn from ``numpy.random.default_rng([seed, split stream, i])``: the same parameters give
the same bytes. The tree is written beside its final name and renamed into place, with a
``voclike.json`` manifest last, so a killed or concurrent writer never leaves a partial tree behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from frcnn.data.voclike.scene import SceneObject, render_scene
from frcnn.data.voclike.voc2007 import CLASS_NAMES
from frcnn.utils.progress import start_progress

GENERATOR_VERSION = 1  # bump when a change to the generator changes its pictures or annotations
SPLIT_STREAMS = {"trainval": 0, "test": 1}
SPLIT_ID_OFFSET = {"trainval": 0, "test": 500_000}  # VOC-style six-digit ids, disjoint between splits
MANIFEST = "voclike.json"
JPEG_QUALITY = 95  # and no chroma subsampling: object edges keep their colours


@dataclass(frozen=True)
class VoclikeParams:
    """What a VOC-like tree is a function of (with GENERATOR_VERSION)."""

    seed: int = 0
    num_trainval: int = 1000
    num_test: int = 500
    longer_px: int = 320  # VOC's pictures are 500 px on the longer side

    def fingerprint(self) -> str:
        text = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return f"v{GENERATOR_VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def default_cache_dir() -> Path:
    """$FRCNN_DATA_DIR, else ~/.cache/frcnn."""
    return Path(os.environ.get("FRCNN_DATA_DIR") or Path.home() / ".cache" / "frcnn").expanduser()


def image_id(split: str, index: int) -> str:
    return f"{SPLIT_ID_OFFSET[split] + index:06d}"


def annotation_xml(file_name: str, height: int, width: int, objects: list[SceneObject]) -> ET.Element:
    """A VOC annotation: 1-based inclusive integer boxes (x1 + 1, y1 + 1, x2, y2 of the visible box)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = CLASS_NAMES[obj.label - 1]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "difficult").text = str(int(obj.difficult))
        box = ET.SubElement(node, "bndbox")
        x1, y1, x2, y2 = (int(v) for v in obj.box_xyxy)
        for key, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, key).text = str(value)
    return root


def render_item(params: VoclikeParams, split: str, index: int) -> tuple[np.ndarray, list[SceneObject]]:
    """Picture ``index`` of ``split`` -> (uint8 [H, W, 3], annotated objects)."""
    return render_scene(np.random.default_rng([params.seed, SPLIT_STREAMS[split], index]), params.longer_px)


def write_tree(params: VoclikeParams, root: Path) -> Path:
    """Write every picture and annotation of ``params`` under ``root`` (which must not exist yet)."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    counts = {}
    progress = start_progress(f"writing the VOC-like data to {root.parent}", params.num_trainval + params.num_test)
    for split, number in (("trainval", params.num_trainval), ("test", params.num_test)):
        ids = []
        for index in range(number):
            progress.update(sum(counts.values()) + index)
            image, objects = render_item(params, split, index)
            name = image_id(split, index)
            Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=JPEG_QUALITY, subsampling=0)
            xml = annotation_xml(f"{name}.jpg", image.shape[0], image.shape[1], objects)
            ET.ElementTree(xml).write(root / "Annotations" / f"{name}.xml")
            ids.append(name)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        counts[split] = number
    progress.update(sum(counts.values()))
    progress.close()
    manifest = {"generator_version": GENERATOR_VERSION, "params": asdict(params), "images": counts,
                "classes": list(CLASS_NAMES)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return root


def tree_is_complete(root: Path, params: VoclikeParams) -> bool:
    """The manifest (written last) is there and names these parameters."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("generator_version") == GENERATOR_VERSION and manifest.get("params") == asdict(params)


def ensure_voclike_tree(params: VoclikeParams, cache_dir: Path | None = None) -> Path:
    """The tree of ``params`` under ``cache_dir`` (default :func:`default_cache_dir`), written first if
    it is not there; -> its root (``data.root`` of a VOCdevkit year)."""
    root = (cache_dir or default_cache_dir()) / "voclike" / params.fingerprint()
    if tree_is_complete(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    write_tree(params, partial)
    if root.exists() and not tree_is_complete(root, params):
        shutil.rmtree(root, ignore_errors=True)  # an incomplete tree of an older layout
    try:
        os.rename(partial, root)
    except OSError:  # another process renamed its copy first
        shutil.rmtree(partial, ignore_errors=True)
        if not tree_is_complete(root, params):
            raise
    return root
