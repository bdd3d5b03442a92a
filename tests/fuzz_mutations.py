"""The mutations of the data-reader fuzzer (tests/fuzz_trees.py): each damages one file of a
tree -- an image, a VOC XML, the COCO JSON or an ImageSets file -- from a seeded RNG and says what
it did (:class:`Mutation`), which field a message about it must name, and whether the readers must
take it as harmless. ``MUTATIONS`` maps each kind (the rows of the outcome table) to its tree and
function.
"""

from __future__ import annotations

import copy
import json
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.fuzz_trees import Trees

VOC_PNG_ID = "000004"  # the VOC image stored as PNG, found through <filename>

@dataclass
class Mutation:
    file: Path  # the damaged file (restored after the case)
    detail: str  # what was done, for the report of a failing case
    field: str | None = None  # the field a message must name (a regex), None for byte-level damage
    harmless: bool = False  # the readers must load it as if nothing happened
    noop: str | None = None  # why the case changes nothing the loaded split reads (tests/fuzz_trees.py sets the rest)


VALUE_KINDS = ("missing", "duplicated", "empty", "nan", "inf", "huge", "negative", "non_ascii", "wrong_type")
XML_VALUES = {  # text put into an XML element, per value kind (missing / duplicated act on the element)
    "empty": ["", "   "],
    "nan": ["nan", "NaN"],
    "inf": ["inf", "-inf", "1e400"],
    "huge": ["1e308", "99999999999999999999", "4294967296"],
    "negative": ["-1", "-50", "-1e9"],
    "non_ascii": ["ø", "١٢", "12\u00a0", "\u200b5", "箱"],
    "wrong_type": ["[1, 2]", "true", "0x10", "12px", "{}"],
}
JSON_VALUES: dict[str, list] = {
    "empty": ["", [], {}],
    "nan": [float("nan")],
    "inf": [float("inf"), float("-inf")],
    "huge": [1e308, 10**30, 2**63],
    "negative": [-1, -50.5, -(10**12)],
    "non_ascii": ["ø", "١٢", "箱子", "\u200b"],
    "wrong_type": ["10", [1, 2], {"a": 1}, True, None, 3.5],
}
XML_FIELDS = ("size/width", "size/height", "filename", "object/name", "object/difficult", "object/bndbox",
              "object/bndbox/xmin", "object/bndbox/ymin", "object/bndbox/xmax", "object/bndbox/ymax", "object")
XML_FIELD_NAMES = {  # what a message about the field says: the tag, or the thing it describes (a box, a class)
    "size/width": r"width|size", "size/height": r"height|size", "filename": r"filename", "object": r"object",
    "object/name": r"name|class", "object/difficult": r"difficult", "object/bndbox": r"bndbox|box",
    "object/bndbox/xmin": r"xmin|box", "object/bndbox/ymin": r"ymin|box", "object/bndbox/xmax": r"xmax|box",
    "object/bndbox/ymax": r"ymax|box",
}
DUPLICATE_MARK = "\u2063duplicate\u2063"  # stands for a value while the JSON text gets a key twice
JSON_FIELDS = ("images.id", "images.file_name", "images.width", "images.height", "annotations.id",
               "annotations.image_id", "annotations.category_id", "annotations.bbox", "annotations.bbox[]",
               "annotations.iscrowd", "categories.id", "categories.name", "images[]", "annotations[]",
               "categories[]", "images", "annotations", "categories")


def _voc_xmls(trees: Trees) -> list[Path]:
    return sorted((trees.voc_root / "Annotations").glob("*.xml"))


def _image_files(trees: Trees, tree: str) -> list[Path]:
    folder = trees.voc_root / "JPEGImages" if tree == "voc" else trees.coco_images
    return sorted(folder.iterdir())


def image_byte_flips(rng: random.Random, trees: Trees, tree: str) -> Mutation:
    path = rng.choice(_image_files(trees, tree))
    data = bytearray(trees.original[path])
    positions = [rng.randrange(len(data)) for _ in range(rng.choice((1, 2, 4, 16, 64)))]
    for pos in positions:
        data[pos] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    return Mutation(path, f"{len(positions)} bytes flipped at {sorted(positions)[:6]}...")


def image_truncation(rng: random.Random, trees: Trees, tree: str) -> Mutation:
    path = rng.choice(_image_files(trees, tree))
    data = trees.original[path]
    keep = rng.choice((0, 1, 2, 8, 64, rng.randrange(len(data)), len(data) - 1, len(data) - 2))
    path.write_bytes(data[:keep])
    return Mutation(path, f"cut to {keep} of {len(data)} bytes")


def _mutate_element(rng: random.Random, root: ET.Element, field_path: str, kind: str) -> str:
    """Apply one value kind to an element of the XML tree -> what was done."""
    parent_path, _, tag = field_path.rpartition("/")
    parents = root.findall(parent_path) if parent_path else [root]
    parents = [p for p in parents if p.find(tag) is not None]
    if not parents:
        return f"no <{field_path}> to mutate"
    parent = rng.choice(parents)
    element = parent.find(tag)
    if kind == "missing":
        parent.remove(element)
        return f"removed <{field_path}>"
    if kind == "duplicated":
        twin = copy.deepcopy(element)
        if twin.text and twin.text.strip() and not len(twin) and rng.random() < 0.5:
            twin.text = str(rng.choice(XML_VALUES["huge"] + XML_VALUES["negative"]))  # a twin that disagrees
        parent.insert(list(parent).index(element) + 1, twin)
        return f"duplicated <{field_path}> as {twin.text!r}"
    value = rng.choice(XML_VALUES[kind])
    for child in list(element):
        element.remove(child)
    element.text = value
    return f"<{field_path}> = {value!r}"


def xml_field(kind: str) -> Callable[[random.Random, Trees], Mutation]:
    def mutate(rng: random.Random, trees: Trees) -> Mutation:
        path = rng.choice(_voc_xmls(trees))
        root = ET.fromstring(trees.original[path])
        field_path = rng.choice(XML_FIELDS)
        detail = _mutate_element(rng, root, field_path, kind)
        path.write_bytes(ET.tostring(root, encoding="utf-8"))
        noop = "no such element in this file (an image without objects)" if detail.startswith("no <") else None
        return Mutation(path, detail, field=XML_FIELD_NAMES[field_path], noop=noop)
    return mutate


def _damage_bytes(rng: random.Random, trees: Trees, path: Path) -> Mutation:
    """Half the cases overwrite 1, 3 or 10 random bytes of ``path``, the others cut it short."""
    data = bytearray(trees.original[path])
    if rng.random() < 0.5:
        for _ in range(rng.choice((1, 3, 10))):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        return Mutation(path, "bytes overwritten")
    keep = rng.randrange(len(data))
    path.write_bytes(bytes(data[:keep]))
    return Mutation(path, f"cut to {keep} bytes")


def xml_bytes(rng: random.Random, trees: Trees) -> Mutation:
    return _damage_bytes(rng, trees, rng.choice(_voc_xmls(trees)))


def _json_targets(data: dict, field_path: str) -> list[tuple[object, object]]:
    """(container, key) pairs a JSON field path names: 'images.width' -> every images[k]['width']."""
    if field_path in ("images", "annotations", "categories"):
        return [(data, field_path)]
    if field_path.endswith("[]"):
        name = field_path[:-2]
        if name == "annotations.bbox":
            return [(ann["bbox"], j) for ann in data["annotations"] for j in range(4)]
        return [(data[name], k) for k in range(len(data[name]))]
    section, key = field_path.split(".")
    return [(entry, key) for entry in data[section] if key in entry]


def json_field(kind: str) -> Callable[[random.Random, Trees], Mutation]:
    def mutate(rng: random.Random, trees: Trees) -> Mutation:
        path = trees.coco_ann
        data = json.loads(trees.original[path])
        field_path = rng.choice(JSON_FIELDS)
        targets = _json_targets(data, field_path)
        if not targets:
            return Mutation(path, f"no {field_path} to mutate", harmless=True, noop="no such field in the file")
        container, key = rng.choice(targets)
        if kind == "missing":
            del container[key]
            detail = f"removed {field_path}"
        elif kind == "duplicated":
            if isinstance(container, list):
                container.insert(key, copy.deepcopy(container[key]))
                detail = f"duplicated an entry of {field_path}"
            else:  # a key twice in one object: the JSON text holds both, the parser keeps the last
                twin = rng.choice([container[key], *JSON_VALUES["negative"], *JSON_VALUES["huge"]])
                original, container[key] = container[key], DUPLICATE_MARK
                pair = f"{json.dumps(key)}: "
                text = json.dumps(data).replace(f"{pair}{json.dumps(DUPLICATE_MARK)}",
                                                f"{pair}{json.dumps(twin)}, {pair}{json.dumps(original)}")
                path.write_text(text)
                return Mutation(path, f"{field_path} given twice (first {twin!r})", field=_json_field_regex(field_path))
        else:
            value = rng.choice(JSON_VALUES[kind])
            container[key] = value
            detail = f"{field_path} = {value!r}"
        path.write_text(json.dumps(data))
        return Mutation(path, detail, field=_json_field_regex(field_path))
    return mutate


def _json_field_regex(field_path: str) -> str:
    section, _, key = field_path.rstrip("[]").partition(".")
    names = {"file_name": r"file_name|image", "image_id": r"image id|image_id", "category_id": r"category",
             "id": r"id", "bbox": r"bbox|box", "width": r"width", "height": r"height", "name": r"name|categor",
             "iscrowd": r"iscrowd"}
    return names.get(key, re.escape(section).rstrip("s") + r"|" + re.escape(section))


def json_bytes(rng: random.Random, trees: Trees) -> Mutation:
    return _damage_bytes(rng, trees, trees.coco_ann)


def _split_file(trees: Trees) -> Path:
    return trees.voc_root / "ImageSets" / "Main" / "trainval.txt"


def _rewrite_split(trees: Trees, rewrite: Callable[[list[str]], str], encoding: str = "utf-8") -> Path:
    path = _split_file(trees)
    ids = trees.original[path].decode().split()
    path.write_bytes(rewrite(ids).encode(encoding))
    return path


def split_blank_lines(rng: random.Random, trees: Trees) -> Mutation:
    def rewrite(ids):
        lines = []
        for image_id in ids:
            lines += [""] * rng.randrange(3) + [image_id]
        return "\n".join(lines + [""] * rng.randrange(3)) + rng.choice(("", "\n"))
    return Mutation(_rewrite_split(trees, rewrite), "blank lines between ids", harmless=True)


def split_spaces(rng: random.Random, trees: Trees) -> Mutation:
    def rewrite(ids):
        return "".join(f"{rng.choice(('', ' ', '  ', chr(9)))}{i}{rng.choice(('', ' ', chr(9), '  1', ' -1'))}\n"
                       for i in ids)
    return Mutation(_rewrite_split(trees, rewrite), "spaces / tabs / a class flag around ids", harmless=True)


def split_crlf(rng: random.Random, trees: Trees) -> Mutation:
    return Mutation(_rewrite_split(trees, lambda ids: "".join(f"{i}\r\n" for i in ids)), "CRLF line ends",
                    harmless=True)


def split_bom(rng: random.Random, trees: Trees) -> Mutation:
    end = rng.choice(("\n", "\r\n"))
    return Mutation(_rewrite_split(trees, lambda ids: "\ufeff" + "".join(f"{i}{end}" for i in ids)),
                    "UTF-8 byte-order mark", harmless=True)


def split_odd_ids(rng: random.Random, trees: Trees) -> Mutation:
    odd = rng.choice(("999999", "ø", "../000001", "000001.jpg", "\x00", "000001\x0b"))

    def rewrite(ids):
        ids = list(ids)
        ids.insert(rng.randrange(len(ids) + 1), odd)
        return "".join(f"{i}\n" for i in ids)
    return Mutation(_rewrite_split(trees, rewrite), f"an id {odd!r} that is no image", field=r"id|annotation")


def split_bytes(rng: random.Random, trees: Trees) -> Mutation:
    path = _split_file(trees)
    data = bytearray(trees.original[path])
    for _ in range(rng.choice((1, 2, 5))):
        data[rng.randrange(len(data))] = rng.randrange(256)
    path.write_bytes(bytes(data))
    return Mutation(path, "bytes overwritten")


def json_bom(rng: random.Random, trees: Trees) -> Mutation:
    path = trees.coco_ann
    text = trees.original[path].decode()
    if rng.random() < 0.5:
        text = json.dumps(json.loads(text), indent=1).replace("\n", "\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    return Mutation(path, "UTF-8 byte-order mark (and CRLF)", harmless=True)


def xml_crlf_bom(rng: random.Random, trees: Trees) -> Mutation:
    path = rng.choice(_voc_xmls(trees))
    text = trees.original[path].decode().replace("><", ">\r\n<")
    path.write_bytes((b"\xef\xbb\xbf" if rng.random() < 0.5 else b"") + text.encode())
    return Mutation(path, "CRLF between elements (and a BOM)", harmless=True)


# kind -> (tree, mutation); the kinds the report counts
MUTATIONS: dict[str, tuple[str, Callable[[random.Random, Trees], Mutation]]] = {
    "image.byte_flips": ("both", image_byte_flips),
    "image.truncation": ("both", image_truncation),
    **{f"xml.{kind}": ("voc", xml_field(kind)) for kind in VALUE_KINDS},
    "xml.bytes": ("voc", xml_bytes),
    "xml.crlf_bom": ("voc", xml_crlf_bom),
    **{f"json.{kind}": ("coco", json_field(kind)) for kind in VALUE_KINDS},
    "json.bytes": ("coco", json_bytes),
    "json.bom": ("coco", json_bom),
    "imagesets.blank_lines": ("voc", split_blank_lines),
    "imagesets.spaces": ("voc", split_spaces),
    "imagesets.crlf": ("voc", split_crlf),
    "imagesets.bom": ("voc", split_bom),
    "imagesets.odd_ids": ("voc", split_odd_ids),
    "imagesets.bytes": ("voc", split_bytes),
}
