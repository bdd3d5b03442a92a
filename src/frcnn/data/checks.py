"""The documented rule for ground-truth boxes at the dataset boundary.

Rule: boxes are (x1, y1, x2, y2) pixels. A box reaching outside the image is clipped to it
(annotation tools often write the border as W or W + 1). A box that has no area after
clipping (x2 <= x1 or y2 <= y1: zero-area, reversed, or wholly outside the image) is an
error naming the image and the box: training on it would teach garbage. Proposal boxes
(label 0) are only clipped; degenerate ones are dropped.
"""

from __future__ import annotations

import numpy as np


class DataError(Exception):
    """Base of every problem the data readers find in files from outside (the readers' contract:
    nothing else escapes them). The message names the file, the field and the value."""


class BadAnnotationError(DataError, ValueError):
    """An annotation that cannot be trained on; the message names the source and the box."""


def clip_and_check_boxes(boxes_xyxy: np.ndarray, labels: np.ndarray, image_hw: tuple[int, int],
                         source: str = "<image>") -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes [N, 4] to the image; raise on a degenerate ground-truth box (label > 0).
    -> (float32 boxes [M, 4], labels [M]); clipping happens in float64, so a huge finite coordinate
    (1e308) is clipped to the border instead of overflowing float32 to inf."""
    height, width = float(image_hw[0]), float(image_hw[1])
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4).copy()  # float64: 1e308 clips, not overflows
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not np.isfinite(boxes).all():
        bad = int(np.nonzero(~np.isfinite(boxes).all(axis=1))[0][0])
        raise BadAnnotationError(f"{source}: box {bad} has a non-finite coordinate {boxes[bad].tolist()}")
    original = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    gt_degenerate = degenerate & (labels > 0)
    if gt_degenerate.any():
        bad = int(np.nonzero(gt_degenerate)[0][0])
        raise BadAnnotationError(
            f"{source}: box {bad} {original[bad].tolist()} (label {int(labels[bad])}) has no area inside the "
            f"{width:g}x{height:g} image (width x height); boxes need x1 < x2 and y1 < y2 and must "
            "overlap the image"
        )
    keep = ~degenerate
    return boxes[keep].astype(np.float32), labels[keep]


class BadImageError(DataError, ValueError):
    """An image file that cannot be trained on (missing, unreadable, truncated, or not the size
    its annotation says); the message names the file and the problem."""


class NoUsableImagesError(DataError, ValueError):
    """A data set left without one usable image (all skipped, or none listed)."""


class DatasetLayoutError(DataError, FileNotFoundError):
    """A dataset folder or file that is not where the layout expects it.

    ``path`` is the configured path, ``problem`` says what is missing and what layout was expected;
    ``frcnn.data.build`` prefixes the config key (``data.root=<path>: <problem>``).
    """

    def __init__(self, path: object, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem

    def __reduce__(self):  # picklable across DataLoader workers
        return type(self), (self.path, self.problem)
