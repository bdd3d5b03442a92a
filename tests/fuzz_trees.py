"""A seeded fuzzer of the data readers: one mutation of a valid VOCdevkit or COCO tree per case.

The trees come from tests/data_trees.py (one VOC image and one COCO image stored as PNG, so both
decoders are fuzzed). A case is a mutation kind (tests/fuzz_mutations.py) and a seed; the mutation
damages one file of the tree; :func:`run_case` builds the data set under ``on_bad_sample="error"``,
reads every item through the training transform and classifies what happened; the file is
restored afterwards, so one tree serves every case.

The contract each case is held to (:func:`_classify`), one result per case:

* ``ok``: the data set loads and every item is finite: image float32 [3, H, W] in [0, 1], boxes
  float32 [N, 4] with x1 < x2, y1 < y2 inside the image, labels in 1..C. Mutations marked
  ``harmless`` (CRLF, BOM, blank lines, spaces around ids) must end here.
* ``skipped``: a :class:`frcnn.data.checks.DataError` whose message names the damaged file
  and, for a field mutation, the field; the same case under ``on_bad_sample="skip"`` then loads,
  reads every item and counts at least one skip.
* ``file_error``: such a DataError about a whole JSON or ImageSets file (not COCO-shaped, not
  UTF-8), which no policy can skip; an image or XML problem may not end here.
* ``crash``: anything else -- another exception type, a message without the file or the field, a
  non-finite tensor, a case slower than CASE_TIME_LIMIT_S. It fails the test.

A case is a *no-op* when its mutation changes nothing the loaded split reads: a file outside it (the
VOC images and annotations of the test split), an element or field the file does not have (the object
fields of an image without objects), bytes left as they were. No-op cases still run (damage outside the
split must not matter: they must load ``ok``) but do not count as fuzzing: :func:`run_cases` draws cases
until each kind has its number of *effective* ones, and the table gives the no-ops in a column apart.
"""

from __future__ import annotations

import json
import random
import re
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from frcnn.data.checks import DataError
from frcnn.data.coco import COCODataset
from frcnn.data.transforms import DetectionTransform
from frcnn.data.voc import VOCDataset
from tests.data_trees import TREE_CLASSES, write_coco_tree, write_voc_tree
from tests.fuzz_mutations import MUTATIONS, VOC_PNG_ID, Mutation

CASE_TIME_LIMIT_S = 10.0  # a case is a few small files: anything slower is a hang
TRANSFORM = DetectionTransform(scales=(48,), max_size=96, hflip_prob=0.5, train=True, seed=0)
COCO_PNG_ID = 3  # e.jpg -> e.png


# ------------------------------------------------------------------------------------------------
# The trees
# ------------------------------------------------------------------------------------------------
@dataclass
class Trees:
    """Both trees, written once, with every file's bytes to restore after a case."""

    voc_root: Path
    coco_ann: Path
    coco_images: Path
    original: dict[Path, bytes] = field(default_factory=dict)
    read_by_split: dict[str, set[Path]] = field(default_factory=dict)  # tree -> files its loaded split reads

    def restore(self, path: Path) -> None:
        path.write_bytes(self.original[path])


def write_trees(root: Path) -> Trees:
    voc_root = write_voc_tree(root / "VOC2007")
    jpg = voc_root / "JPEGImages" / f"{VOC_PNG_ID}.jpg"
    Image.open(jpg).save(jpg.with_suffix(".png"))
    jpg.unlink()
    xml = voc_root / "Annotations" / f"{VOC_PNG_ID}.xml"
    xml.write_text(xml.read_text().replace(f"{VOC_PNG_ID}.jpg", f"{VOC_PNG_ID}.png"))
    coco_ann, coco_images = write_coco_tree(root / "coco")
    data = json.loads(coco_ann.read_text())
    entry = next(e for e in data["images"] if e["id"] == COCO_PNG_ID)
    Image.open(coco_images / entry["file_name"]).save(coco_images / "e.png")
    (coco_images / entry["file_name"]).unlink()
    entry["file_name"] = "e.png"
    coco_ann.write_text(json.dumps(data))
    trees = Trees(voc_root, coco_ann, coco_images)
    for path in [*root.rglob("*")]:
        if path.is_file():
            trees.original[path] = path.read_bytes()
    split = voc_root / "ImageSets" / "Main" / "trainval.txt"
    ids = split.read_text().split()
    trees.read_by_split["voc"] = {split, *(voc_root / "Annotations" / f"{i}.xml" for i in ids),
                                  *(voc_root / "JPEGImages" / ET.fromstring((voc_root / "Annotations" / f"{i}.xml")
                                                                            .read_bytes()).findtext("filename")
                                    for i in ids)}
    trees.read_by_split["coco"] = {coco_ann, *(coco_images / entry["file_name"] for entry in data["images"])}
    return trees


# ------------------------------------------------------------------------------------------------
# Running a case
# ------------------------------------------------------------------------------------------------
PER_IMAGE_FILES = (".jpg", ".png", ".xml")  # a problem in one of these concerns one image: "skip" drops it


@dataclass
class Outcome:
    kind: str
    seed: int
    tree: str
    result: str  # ok | skipped (error under "error", counted skip under "skip") | file_error | crash
    detail: str
    message: str = ""
    seconds: float = 0.0
    noop: str | None = None  # why the mutation changed nothing the split reads; None: an effective case


def build_dataset(trees: Trees, tree: str, policy: str):
    if tree == "voc":
        return VOCDataset(trees.voc_root, "trainval", TREE_CLASSES, transform=TRANSFORM, on_bad_sample=policy)
    return COCODataset(trees.coco_ann, trees.coco_images, class_names=TREE_CLASSES, transform=TRANSFORM,
                       on_bad_sample=policy)


def check_items(dataset) -> None:
    """Read every item; AssertionError on anything non-finite or outside the image."""
    for i in range(len(dataset)):
        image, target = dataset[i]
        assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3, image.shape
        assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
        boxes, labels = target["boxes"], target["labels"]  # [N, 4], [N]
        assert boxes.dtype == torch.float32 and torch.isfinite(boxes).all(), boxes
        height, width = image.shape[1:]
        if len(boxes):
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all(), boxes
            assert boxes.min() >= 0 and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all(), boxes
        assert ((labels >= 1) & (labels <= dataset.num_classes)).all(), labels


def message_problem(message: str, mutation: Mutation) -> str | None:
    """None when a DataError's message names the damaged file (and the field), else what is missing."""
    if mutation.file.name not in message:
        return f"the message does not name the damaged file {mutation.file.name}"
    if mutation.field and not re.search(mutation.field, message, re.IGNORECASE):
        return f"the message does not name the field ({mutation.field})"
    return None


@contextmanager
def mutated(trees: Trees, kind: str, seed: int) -> Iterator[tuple[str, Mutation]]:
    """The tree ("voc" / "coco") with case (kind, seed) applied, restored on exit."""
    tree, mutate = MUTATIONS[kind]
    rng = random.Random(f"{kind}:{seed}")
    if tree == "both":
        tree = rng.choice(("voc", "coco"))
        mutation = mutate(rng, trees, tree)
    else:
        mutation = mutate(rng, trees)
    if mutation.noop is None and mutation.file not in trees.read_by_split[tree]:
        mutation.noop = f"{mutation.file.name} is outside the loaded split"
    elif mutation.noop is None and mutation.file.read_bytes() == trees.original[mutation.file]:
        mutation.noop = "the file's bytes are unchanged"
    try:
        yield tree, mutation
    finally:
        trees.restore(mutation.file)


def run_case(trees: Trees, kind: str, seed: int) -> Outcome:
    """Mutate one file, load under "error" (and under "skip" when that raised), classify, restore."""
    start = time.perf_counter()
    with mutated(trees, kind, seed) as (tree, mutation):
        outcome = Outcome(kind, seed, tree, "ok", mutation.detail, noop=mutation.noop)
        outcome.result, outcome.message = _classify(trees, tree, mutation)
        if mutation.noop and outcome.result != "ok":  # nothing the split reads changed: it must load
            outcome.result, outcome.message = "crash", f"a no-op ({mutation.noop}) did not load: {outcome.message}"
    outcome.seconds = time.perf_counter() - start
    if outcome.seconds > CASE_TIME_LIMIT_S:
        outcome.result, outcome.message = "crash", f"took {outcome.seconds:.1f} s (a hang?) {outcome.message}"
    return outcome


def _classify(trees: Trees, tree: str, mutation: Mutation) -> tuple[str, str]:
    try:
        check_items(build_dataset(trees, tree, "error"))
    except DataError as exc:
        message = str(exc)
    except Exception as exc:  # noqa: BLE001 - finding these is the fuzzer's job
        return "crash", f"{type(exc).__name__}: {exc}"
    else:
        return "ok", ""
    if mutation.harmless:
        return "crash", f"a harmless mutation did not load: {message}"
    problem = message_problem(message, mutation)
    if problem:
        return "crash", f"{problem}: {message}"
    try:
        dataset = build_dataset(trees, tree, "skip")
        check_items(dataset)
    except DataError as exc:
        if mutation.file.suffix in PER_IMAGE_FILES:
            return "crash", f"on_bad_sample=skip did not drop the image: {exc} (under error: {message})"
        return "file_error", message  # the whole file is unusable: no policy can skip it
    except Exception as exc:  # noqa: BLE001
        return "crash", f"under on_bad_sample=skip: {type(exc).__name__}: {exc}"
    if not dataset.skipped:
        return "crash", f"on_bad_sample=skip loaded without counting a skip, but error raised: {message}"
    return "skipped", message


MAX_DRAWS_PER_EFFECTIVE_CASE = 4  # a kind whose draws are mostly no-ops stops here (the table shows it)


def run_cases(trees: Trees, effective_per_kind: int, seed: int = 0) -> list[Outcome]:
    """Seeded cases of every mutation kind, drawn until the kind has ``effective_per_kind`` effective
    (not no-op) ones, or ``MAX_DRAWS_PER_EFFECTIVE_CASE`` times that many draws."""
    outcomes = []
    for kind in MUTATIONS:
        effective = 0
        for k in range(effective_per_kind * MAX_DRAWS_PER_EFFECTIVE_CASE):
            if effective == effective_per_kind:
                break
            outcomes.append(run_case(trees, kind, seed * 100_000 + k))
            effective += outcomes[-1].noop is None
    return outcomes


def effective(outcomes: list[Outcome]) -> list[Outcome]:
    """The cases whose mutation changed something the loaded split reads."""
    return [o for o in outcomes if o.noop is None]


RESULTS = ("ok", "skipped", "file_error", "crash")
RESULT_LEGEND = ("effective: cases whose mutation changed something the loaded split reads; ok / skipped / "
                 "file_error / crash count them | ok: loads, every item finite | skipped: DataError naming the file "
                 "and field under on_bad_sample=error, a counted skip under skip | file_error: DataError about the "
                 "whole file (no policy can skip it) | crash: anything else (fails the test; a no-op that does not "
                 "load counts here) | no-op: a file outside the split, a field the file lacks or unchanged bytes, "
                 "loaded ok (not counted as fuzzing)")


def outcome_table(outcomes: list[Outcome]) -> str:
    """Counts per mutation kind: effective cases by result, and the no-ops apart, as a Markdown table."""
    counts = Counter((o.kind, "crash" if o.result == "crash" else "no-op" if o.noop else o.result) for o in outcomes)
    kinds = list(dict.fromkeys(o.kind for o in outcomes))
    columns = (*RESULTS, "no-op")
    lines = ["| mutation | effective | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for kind in kinds:
        row = [counts[kind, c] for c in columns]
        lines.append(f"| {kind} | {sum(row[:-1])} | " + " | ".join(map(str, row)) + " |")
    totals = [sum(counts[k, c] for k in kinds) for c in columns]
    lines.append(f"| **all** | {sum(totals[:-1])} | " + " | ".join(map(str, totals)) + " |")
    return "\n".join(lines + ["", RESULT_LEGEND])
