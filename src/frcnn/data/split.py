"""The automatic train / val split of a folder that has no split files, and the file that keeps it.

Rule (issue 35): a folder without split files is split once, seeded (``data.seed``), holding out
``data.val_fraction`` of its images (round half up, at least one image on each side):

* stratified by class where it can be: each image belongs to the stratum of its *rarest* class (the
  class found in the fewest images; no object: a stratum of its own), and every stratum gives
  ``val_fraction`` of its images to val, the remainders shared out by the largest-remainder rule, so
  val holds a rare class's images in proportion, not by luck of the draw;
* written as ``<data.split_dir>/data_split.json`` (``split_dir`` defaults to the run dir), read back by
  every later build from that folder: the run's other stages, a resumed run and ``scripts/eval.py`` (which
  finds the file beside the detector's run: ``<run dir>/final/model.pt``) see the same images even if the
  folder has changed since. Images listed later than the split are left out, and said so.

Names in the file are each format's image names relative to its folder (VOC ids, YOLO image paths,
LabelMe JSON paths), so a moved folder keeps its split.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frcnn.data.records import FileDetectionDataset
from frcnn.errors import ConfigError
from frcnn.utils.atomic_io import atomic_write_json

__all__ = ["SPLIT_FILE_NAME", "SplitSettings", "automatic_split", "split_dir_of_run", "split_settings",
           "stratified_split"]

log = logging.getLogger(__name__)

SPLIT_FILE_NAME = "data_split.json"
SPLIT_FORMAT = "frcnn data split 1"
DEFAULT_VAL_FRACTION = 0.2
NO_OBJECT = 0  # stratum of images without objects (labels are 1..C)


@dataclass(frozen=True)
class SplitSettings:
    """``data.val_fraction`` in (0, 1), ``data.seed`` and ``data.split_dir`` (None: the split is kept in memory)."""

    val_fraction: float
    seed: int
    split_dir: Path | None


def split_settings(data_cfg: Mapping[str, Any]) -> SplitSettings:
    """The automatic split's keys of a ``data`` node, checked (ConfigError naming the key)."""
    fraction = data_cfg.get("val_fraction", DEFAULT_VAL_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"data.val_fraction={fraction!r}: expected a number between 0 and 1 (exclusive), the "
                          "share of the images held out for validation, e.g. 0.2")
    seed = data_cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"data.seed={seed!r}: expected an integer >= 0")
    split_dir = data_cfg.get("split_dir")
    return SplitSettings(float(fraction), seed, Path(str(split_dir)) if split_dir else None)


def split_dir_of_run(checkpoint: str | Path) -> str | None:
    """The run dir of a detector file ``<run dir>/final/model.pt`` when it holds a split file, else None."""
    run_dir = Path(checkpoint).resolve().parent.parent
    return str(run_dir) if (run_dir / SPLIT_FILE_NAME).is_file() else None


def stratified_split(names: Sequence[str], classes_of: Sequence[Collection[int]], val_fraction: float,
                     seed: int) -> tuple[list[str], list[str]]:
    """Split ``names`` (image i has the labels ``classes_of[i]``) -> (train names, val names), each sorted.

    ``round(val_fraction * N)`` images (at least 1, at most N - 1) go to val; each image's stratum is its
    rarest class; stratum s of n_s images gives val ``n_val * n_s / N`` of its images (floors, then one
    more to the strata of the largest remainders, ties by stratum); which ones is a shuffle seeded by
    ``seed``. The result depends on the names and labels, not on their order."""
    if len(names) != len(classes_of):
        raise ValueError(f"{len(names)} names but {len(classes_of)} class sets")
    if len(set(names)) != len(names):
        raise ValueError("image names of a split must be distinct")
    total = len(names)
    if total < 2:
        raise ValueError(f"{total} image(s): a split needs at least 2 (one to train on, one to validate on)")
    num_val = min(max(math.floor(val_fraction * total + 0.5), 1), total - 1)
    images_with = Counter(label for labels in classes_of for label in set(labels))

    def stratum(labels: Collection[int]) -> int:
        return min(set(labels), key=lambda label: (images_with[label], label)) if len(labels) else NO_OBJECT

    strata: dict[int, list[str]] = defaultdict(list)
    for name, labels in sorted(zip(names, classes_of), key=lambda pair: pair[0]):
        strata[stratum(labels)].append(name)
    exact = {key: num_val * len(members) / total for key, members in strata.items()}
    quota = {key: math.floor(share) for key, share in exact.items()}
    by_remainder = sorted(strata, key=lambda key: (-(exact[key] - quota[key]), key))
    for key in by_remainder[: num_val - sum(quota.values())]:
        quota[key] += 1
    rng = random.Random(seed)
    val: list[str] = []
    for key in sorted(strata):
        members = list(strata[key])
        rng.shuffle(members)
        val.extend(members[: quota[key]])
    held_out = set(val)
    return sorted(n for n in names if n not in held_out), sorted(val)


def _read_split_file(path: Path, data_name: str, settings: SplitSettings) -> dict | None:
    """The split kept in ``path``; None if there is none. ConfigError if it was made with other settings."""
    if not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        valid = (kept.get("format") == SPLIT_FORMAT and isinstance(kept.get("train"), list)
                 and isinstance(kept.get("val"), list))
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"data.split_dir={path.parent}: {path.name} is unreadable ({exc}); delete it to split the "
                          "folder anew") from exc
    if not valid:
        raise ConfigError(f"data.split_dir={path.parent}: {path.name} is not an frcnn split file (format "
                          f"{SPLIT_FORMAT!r} with train and val lists); delete it to split the folder anew")
    made_with = {"data": kept.get("data"), "val_fraction": kept.get("val_fraction"), "seed": kept.get("seed")}
    wanted = {"data": data_name, "val_fraction": settings.val_fraction, "seed": settings.seed}
    if made_with != wanted:
        differ = ", ".join(f"data.{k if k != 'data' else 'name'}={made_with[k]!r} there, {wanted[k]!r} now"
                           for k in wanted if made_with[k] != wanted[k])
        raise ConfigError(f"data.split_dir={path.parent}: its {path.name} was made with other settings ({differ}); "
                          "use the same values, another data.split_dir (a new run dir), or delete the file to split "
                          "anew")
    return kept


def automatic_split(data_name: str, split: str, settings: SplitSettings, listed: Sequence[str],
                    dataset_of: Callable[[Sequence[str]], FileDetectionDataset], folder: str | Path
                    ) -> FileDetectionDataset:
    """The ``split`` ('train' or 'val') of a folder without split files, as a dataset of its images.

    ``listed``: every image name of the folder; ``dataset_of(names)``: the format's dataset of those
    images (its records' ``name`` are the names). The split comes from ``<split_dir>/data_split.json``
    when it exists, else it is made (:func:`stratified_split` over the images that read: the whole
    folder is parsed once) and written there. Logged: where the split comes from and its sizes."""
    path = settings.split_dir / SPLIT_FILE_NAME if settings.split_dir else None
    kept = _read_split_file(path, data_name, settings) if path else None
    how = f"data.val_fraction={settings.val_fraction:g}, data.seed={settings.seed}"
    if kept is None:
        everything = dataset_of(listed)
        names = [record.name for record in everything.records]
        try:
            train, val = stratified_split(names, [record.labels.tolist() for record in everything.records],
                                          settings.val_fraction, settings.seed)
        except ValueError as exc:
            raise ConfigError(f"data.root={folder}: no split files, and the automatic split cannot split it: {exc}; "
                              "add images or give split files") from None
        kept = {"format": SPLIT_FORMAT, "data": data_name, "root": str(folder), "val_fraction": settings.val_fraction,
                "seed": settings.seed, "stratified_by": "each image's rarest class", "train": train, "val": val}
        where = "kept in memory (data.split_dir=null)"
        if path is not None:
            atomic_write_json(kept, path)
            where = f"written to {path}"
        log.info("data=%s: no split files in %s: automatic split of its %d images, %d train / %d val, stratified by "
                 "class (%s), %s", data_name, folder, len(names), len(train), len(val), how, where)
    else:
        log.info("data=%s: the split of %s read from %s: %d train / %d val images (%s)", data_name, folder, path,
                 len(kept["train"]), len(kept["val"]), how)
    chosen = [str(name) for name in kept[split]]
    known = set(listed)
    unlisted = sorted(set(listed) - set(kept["train"]) - set(kept["val"]))
    if unlisted:
        log.warning("data=%s: %d image(s) of %s are in neither split of %s (unreadable when it was made, or added "
                    "since) and are left out, e.g. %s", data_name, len(unlisted), folder,
                    path or "the split", unlisted[0])
    missing = [name for name in chosen if name not in known]
    if missing:
        raise ConfigError(f"data.split_dir={settings.split_dir}: {len(missing)} {split} image(s) of its "
                          f"{SPLIT_FILE_NAME} are not in {folder} (first: {missing[0]!r}); restore them, or delete "
                          "the file to split the folder anew")
    return dataset_of(chosen)
