"""Detection data sets backed by files: per-image records parsed once, images read with PIL, and the
bad-sample policy that VOC (``voc.py``) and COCO (``coco.py``) share.

A record holds everything known from the annotation file alone (image path, its size, boxes, labels,
difficult flags), so annotation problems surface at construction, before any training, and image sizes
(for aspect-ratio grouping) are known without decoding an image.

Bad-sample policy ``on_bad_sample``:

* ``"error"`` (default): the first bad annotation (found while parsing, at construction) or bad image
  (found when it is read) raises :class:`BadAnnotationError` / :class:`BadImageError`, whose message
  names the file and the problem.
* ``"skip"``: a bad annotation drops its image at construction; the drop is counted in ``skipped``
  as ``(file, reason)`` and one summary line is logged. An image that cannot be decoded is found when
  it is read (``raw`` / ``__getitem__``): it is logged, appended to ``skipped``, and the *next index
  whose image reads* (cyclically) is returned instead. The replacement is deterministic, so ``raw(i)``
  and ``__getitem__(i)`` agree and a batch never holds garbage. Skips found inside DataLoader workers are
  counted in those worker processes (each logs its own warning); ``verify_images=True`` decodes every
  image at construction, in the main process, so that every bad image is known before training.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from frcnn.data.checks import BadImageError, NoUsableImagesError
from frcnn.data.transforms import to_float_chw_tensor

__all__ = [
    "ON_BAD_SAMPLE",
    "ConcatDetectionDataset",
    "FileDetectionDataset",
    "ImageRecord",
    "check_on_bad_sample",
    "list_dir_names",
    "read_rgb_image",
    "reject_sample",
    "verify_image",
]

log = logging.getLogger(__name__)

ON_BAD_SAMPLE = ("error", "skip")
MIN_IMAGE_SIDE_PX = 16  # one cell of the stride-16 feature map; smaller images are broken files, not photos
SUMMARY_EXAMPLES = 3  # bad files quoted in the one-line summary


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One annotated image, as its annotation file describes it.

    ``boxes_xyxy`` float32 [N, 4]: 0-based continuous pixels (x1, y1, x2, y2) of the stored image,
    already clipped to it; ``labels`` int64 [N] in 1..C; ``difficult`` bool [N] (VOC ``difficult`` or
    COCO ``iscrowd``: ignored by the VOC AP); ``height`` / ``width`` from the annotation; ``source``:
    the annotation file (and entry) the record came from; ``name``: the image id in that file.
    """

    image_path: str
    height: int
    width: int
    boxes_xyxy: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    source: str
    name: str


def check_on_bad_sample(policy: str) -> str:
    if policy not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample={policy!r}; allowed: {list(ON_BAD_SAMPLE)}")
    return policy


def reject_sample(policy: str, skipped: list[tuple[str, str]], file: str | Path, error: Exception) -> None:
    """Apply the bad-sample policy to one problem: raise ``error`` ("error") or count it ("skip")."""
    if policy == "error":
        raise error
    skipped.append((str(file), str(error)))


def list_dir_names(directory: Path) -> set[str]:
    """File names in ``directory`` (one listing instead of a stat per image)."""
    with os.scandir(directory) as entries:
        return {entry.name for entry in entries}


def _check_size(path: str | Path, size_wh: tuple[int, int], expected_hw: tuple[int, int] | None,
                annotation: str | None = None) -> None:
    if expected_hw is not None and (size_wh[1], size_wh[0]) != tuple(expected_hw):
        where = f" in {annotation}" if annotation else ""
        raise BadImageError(
            f"{path}: image is {size_wh[0]}x{size_wh[1]} (WxH) but its annotation says "
            f"{expected_hw[1]}x{expected_hw[0]} (width x height{where}); boxes would not match the pixels"
        )


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def read_rgb_image(path: str | Path, expected_hw: tuple[int, int] | None = None,
                   annotation: str | None = None) -> np.ndarray:
    """Decode an image file with PIL -> uint8 [H, W, 3] RGB (grey, palette, CMYK are converted).

    Raises BadImageError naming ``path`` when the file is missing, cannot be decoded (not an image,
    truncated), or its size differs from ``expected_hw`` (the (H, W) of ``annotation``, named too).
    """
    try:
        with Image.open(path) as image:
            _check_size(path, image.size, expected_hw, annotation)
            rgb = image.convert("RGB")  # decodes the whole file: truncation surfaces here
    except BadImageError:
        raise
    except FileNotFoundError as exc:
        raise BadImageError(f"{path}: image file is missing") from exc
    except _DECODE_ERRORS as exc:
        raise BadImageError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from exc
    return np.array(rgb, dtype=np.uint8)  # [H, W, 3], writable


def verify_image(path: str | Path, expected_hw: tuple[int, int] | None = None,
                 annotation: str | None = None) -> str | None:
    """Decode ``path`` cheaply to find broken files -> None if fine, else the problem (names the file).

    JPEGs are decoded at 1/8 scale (PIL ``draft``): the whole entropy-coded stream is still read, so
    truncation is found, at a fraction of the full decode's cost.
    """
    try:
        with Image.open(path) as image:
            _check_size(path, image.size, expected_hw, annotation)
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except FileNotFoundError:
        return f"{path}: image file is missing"
    except BadImageError as exc:
        return str(exc)
    except _DECODE_ERRORS as exc:
        return f"{path}: unreadable image ({type(exc).__name__}: {exc})"
    return None


class FileDetectionDataset(Dataset):
    """Detection items from :class:`ImageRecord` s (see the module docstring for the bad-sample policy).

    ``__getitem__(i)`` -> ``(image float32 [3, H, W] in [0, 1], target)``; target keys ``boxes`` float32
    [N, 4] (x1, y1, x2, y2, continuous px of the transformed image), ``labels`` int64 [N] in 1..C,
    ``image_id`` int (the index read: ``i`` unless image ``i`` was skipped), ``difficult`` bool [N],
    ``orig_size`` (H, W) of the stored image. ``keep_difficult=False`` removes difficult / crowd objects
    from the targets (training); ``True`` keeps them flagged (evaluation: the devkit AP ignores them).
    ``transform`` is called as ``transform(image_uint8_hwc, boxes_xyxy, labels, source=<image path>)``.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        class_names: Sequence[str],
        transform: Callable | None = None,
        keep_difficult: bool = False,
        on_bad_sample: str = "error",
        verify_images: bool = False,
        skipped: Sequence[tuple[str, str]] = (),
        description: str = "",
    ):
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        self.class_names = tuple(class_names)
        self.transform = transform
        self.keep_difficult = bool(keep_difficult)
        self.description = description or type(self).__name__
        self.skipped: list[tuple[str, str]] = list(skipped)  # (file, reason) of every dropped sample
        self.records = [r for r in records if self._big_enough(r)]
        self._bad_indices: set[int] = set()  # images found unreadable in __getitem__ (policy skip)
        if verify_images:
            self._verify_all_images()
        total = len(self.records) + len(self.skipped)
        if self.skipped:
            examples = "; ".join(reason for _, reason in self.skipped[:SUMMARY_EXAMPLES])
            log.warning("%s: skipped %d of %d images (on_bad_sample=skip), listed in dataset.skipped; first: %s",
                        self.description, len(self.skipped), total, examples)
        if not self.records:
            raise NoUsableImagesError(f"{self.description}: no usable images ({len(self.skipped)} skipped)")

    # ------------------------------------------------------------------ construction
    def _big_enough(self, record: ImageRecord) -> bool:
        """Images under MIN_IMAGE_SIDE_PX on a side (a 1x1 tracking pixel, a thumbnail) are bad samples."""
        if min(record.height, record.width) >= MIN_IMAGE_SIDE_PX:
            return True
        reject_sample(self.on_bad_sample, self.skipped, record.image_path, BadImageError(
            f"{record.image_path}: image is {record.width}x{record.height} pixels (width x height per "
            f"{record.source}); images need at least {MIN_IMAGE_SIDE_PX} px on each side (one cell of the stride-16 "
            "feature map)"))
        return False

    def _verify_all_images(self) -> None:
        """Decode every image now (threads: PIL releases the GIL while decoding)."""
        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            problems = list(pool.map(lambda r: verify_image(r.image_path, (r.height, r.width), r.source),
                                     self.records))
        kept = []
        for record, problem in zip(self.records, problems):
            if problem is None:
                kept.append(record)
            else:
                reject_sample(self.on_bad_sample, self.skipped, record.image_path, BadImageError(problem))
        self.records = kept

    # ------------------------------------------------------------------ access
    @property
    def num_classes(self) -> int:
        """Number of foreground classes C (labels are 1..C)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images of {self.description}")
        return int(index) % len(self)

    def image_size_hw(self, index: int) -> tuple[int, int]:
        """(H, W) of image ``index`` from its annotation (no decoding)."""
        record = self.records[self._check_index(index)]
        return record.height, record.width

    def _objects(self, record: ImageRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Target objects of a record -> boxes [N, 4], labels [N], difficult [N] (difficult dropped unless kept)."""
        keep = slice(None) if self.keep_difficult else ~record.difficult
        return record.boxes_xyxy[keep], record.labels[keep], record.difficult[keep]

    def _read(self, index: int) -> tuple[int, np.ndarray]:
        """Image of ``index`` -> (index read, uint8 [H, W, 3]); with policy skip, the next readable one."""
        index = self._check_index(index)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if candidate in self._bad_indices:
                continue
            record = self.records[candidate]
            try:
                return candidate, read_rgb_image(record.image_path, (record.height, record.width), record.source)
            except BadImageError as exc:
                if self.on_bad_sample == "error":
                    raise
                self._bad_indices.add(candidate)
                self.skipped.append((record.image_path, str(exc)))
                log.warning("%s: skipping a bad image (on_bad_sample=skip), %d skipped so far: %s",
                            self.description, len(self.skipped), exc)
        raise BadImageError(f"{self.description}: none of its {len(self)} images could be read")

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Untransformed item -> (image uint8 [H, W, 3], boxes_xyxy float32 [N, 4], labels int64 [N])."""
        used, image = self._read(index)
        boxes, labels, _ = self._objects(self.records[used])
        return image, boxes.copy(), labels.copy()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        used, image_u8 = self._read(index)
        record = self.records[used]
        boxes, labels, difficult = self._objects(record)
        if self.transform is not None:
            # The transform carries 1-based object indices as labels, so the class and the
            # difficult flag of every box it returns are looked up, whatever it keeps or reorders.
            object_ids = np.arange(1, len(labels) + 1, dtype=np.int64)  # [N]
            image, boxes_t, ids_out = self.transform(image_u8, boxes, object_ids, source=record.image_path)
            ids_out = torch.as_tensor(ids_out, dtype=torch.int64).reshape(-1) - 1  # [N']
            labels_t = torch.from_numpy(labels)[ids_out]
            difficult_t = torch.from_numpy(difficult)[ids_out]
        else:
            image = to_float_chw_tensor(image_u8)  # [3, H, W]
            boxes_t, labels_t, difficult_t = map(torch.from_numpy, (boxes.copy(), labels.copy(), difficult.copy()))
        target = {
            "boxes": torch.as_tensor(boxes_t, dtype=torch.float32).reshape(-1, 4),  # [N, 4]
            "labels": labels_t.to(torch.int64).reshape(-1),  # [N]
            "image_id": used,
            "difficult": difficult_t.to(torch.bool).reshape(-1),  # [N]
            "orig_size": (record.height, record.width),
        }
        return image, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.description}: {len(self)} images, {self.num_classes} classes, "
                f"keep_difficult={self.keep_difficult}, on_bad_sample={self.on_bad_sample!r}, "
                f"skipped={len(self.skipped)})")


class ConcatDetectionDataset(ConcatDataset):
    """Several detection data sets with the same classes as one (e.g. VOC 2007 + 2012 trainval).

    Keeps the interface of its parts: ``class_names``, ``num_classes``, ``image_size_hw(i)``, ``raw(i)``,
    ``skipped`` (all parts'), ``transform`` / ``eval_transform`` (set on every part); ``image_id`` in
    targets is the index in the concatenation.
    """

    def __init__(self, datasets: Sequence[Dataset], description: str = ""):
        super().__init__(datasets)
        self.description = description or "concatenation"
        first = tuple(datasets[0].class_names)
        for k, part in enumerate(datasets[1:], start=1):
            if tuple(part.class_names) != first:
                raise ValueError(f"{self.description}: part {k} ({getattr(part, 'description', part)}) has classes "
                                 f"{list(part.class_names)}, part 0 has {list(first)}; they must be the same")
        self.class_names = first

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [entry for part in self.datasets for entry in part.skipped]

    def _locate(self, index: int) -> tuple[int, int]:
        """Global index -> (part, index in part)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images of {self.description}")
        index = int(index) % len(self)
        part = bisect.bisect_right(self.cumulative_sizes, index)
        return part, index - (self.cumulative_sizes[part - 1] if part else 0)

    def image_size_hw(self, index: int) -> tuple[int, int]:
        part, local = self._locate(index)
        return self.datasets[part].image_size_hw(local)

    def raw(self, index: int):
        part, local = self._locate(index)
        return self.datasets[part].raw(local)

    def __getitem__(self, index: int):
        part, local = self._locate(index)
        image, target = self.datasets[part][local]
        offset = self.cumulative_sizes[part - 1] if part else 0
        return image, {**target, "image_id": offset + target["image_id"]}

    @property
    def transform(self):
        return self.datasets[0].transform

    @transform.setter
    def transform(self, value) -> None:
        for part in self.datasets:
            part.transform = value

    @property
    def eval_transform(self):
        return getattr(self.datasets[0], "eval_transform", None)

    @eval_transform.setter
    def eval_transform(self, value) -> None:
        for part in self.datasets:
            part.eval_transform = value


def training_annotations(dataset) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(height, width, boxes_xyxy [N, 4] in original-image px, labels [N]) of every image of ``dataset``
    in index order, as training sees them. Files (VOC, COCO: ``records``, also inside a concatenation)
    are read from their annotations without decoding an image, difficult / crowd boxes left out unless
    the data set keeps them; a generated data set is drawn item by item (``raw``)."""
    for part in getattr(dataset, "datasets", None) or [dataset]:
        records = getattr(part, "records", None)
        if records is not None:
            keep_difficult = bool(getattr(part, "keep_difficult", False))
            for record in records:
                keep = slice(None) if keep_difficult else ~record.difficult
                yield record.height, record.width, record.boxes_xyxy[keep], record.labels[keep]
        else:
            for index in range(len(part)):
                image, boxes, labels = part.raw(index)
                yield image.shape[0], image.shape[1], boxes, labels
