"""Tiled inference: a large image cut into overlapping square tiles, each detected at the scale the detector
was trained at, the boxes mapped back to the image and merged across tiles by class-wise NMS.

Why: a detector trained on tiles of a large photo (``scripts/tile_voc.py``) saw its objects at the size a
tile rescaled by the paper's rule gives them (a 400-px tile at scale 600: 1.5x). Run on the whole photo,
the same rule shrinks it to shorter side 600, so the objects come out several times smaller than in
training, and the model's cap of detections per image (``roi_head.detections_per_image``, 100) keeps
fewer than a crowded photo holds. Tiles of the training size keep the training magnification.

The rules, in order:

* tiles of ``tile_px`` x ``tile_px`` original pixels, neighbours overlapping by ``round(overlap x
  tile_px)``, the last column / row shifted back to end at the image's edge (as ``scripts/tile_voc.py``
  cuts training tiles); a side shorter than a tile is one tile of that side;
* every tile resized by the factor a full tile gets from the paper's rule (§3.3:
  ``scale / tile_px``, unless the longer side exceeds ``max_size``), so objects have one magnification
  whatever tile they fall in;
* no cap per tile (the model's ``detections_per_image`` is lifted while tiles run), boxes clipped to
  their tile and shifted to image pixels;
* merge: class-wise NMS at the model's own test threshold (``roi_head.nms_thresh``) over all tiles'
  detections (``torchvision.ops.batched_nms``): an object seen by two overlapping tiles is kept once,
  at its higher score. Every object no wider (taller) than the overlap lies wholly inside some tile, so
  its box from that tile is the complete one;
* a cap per image that scales with its area: ``detections_per_image x max(1, H x W / tile_px²)``.
"""

from __future__ import annotations

import contextlib
import math
import sys

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from frcnn.data.transforms import paper_scale_factor

DEFAULT_OVERLAP = 0.2


def check_tiling(tile_px: int | None, overlap: float) -> None:
    """``tile_px`` None (no tiles) or >= 32; ``overlap`` in [0, 1) leaving a step of >= 1 px."""
    if tile_px is None:
        return
    if int(tile_px) != tile_px or int(tile_px) < 32:
        raise ValueError(f"tile must be a whole number of pixels >= 32 (or None: no tiles), got {tile_px!r}")
    if not 0.0 <= float(overlap) < 1.0 or int(tile_px) - round(float(overlap) * int(tile_px)) < 1:
        raise ValueError(f"overlap must be a fraction of the tile in [0, 1), e.g. 0.2, got {overlap!r}")


def tile_origins(size_px: int, tile_px: int, overlap: float) -> list[int]:
    """Left (top) edges of the tiles along a side of ``size_px``: 0, step, 2 step, ... with step = tile -
    round(overlap x tile), the last at ``size_px - tile_px`` (every tile inside the image); [0] for a side
    not longer than a tile."""
    if size_px <= tile_px:
        return [0]
    step = tile_px - round(overlap * tile_px)
    count = math.ceil((size_px - tile_px) / step) + 1
    return [min(k * step, size_px - tile_px) for k in range(count)]


def tile_windows(height: int, width: int, tile_px: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """The tiles of an image -> [(x1, y1, x2, y2)] in its pixels, row by row."""
    return [(x, y, min(x + tile_px, width), min(y + tile_px, height))
            for y in tile_origins(height, tile_px, overlap) for x in tile_origins(width, tile_px, overlap)]


def tile_resize_factor(tile_px: int, scale: int, max_size: int) -> float:
    """Network px per original px for every tile: what the paper's rule gives a full tile."""
    return paper_scale_factor(tile_px, tile_px, scale, max_size)


def image_detection_cap(height: int, width: int, tile_px: int, per_tile_area: int) -> int:
    """The most detections an image keeps: ``per_tile_area`` for each tile's area it holds, at least
    ``per_tile_area``."""
    return max(int(per_tile_area), math.ceil(per_tile_area * height * width / tile_px ** 2))


def roi_heads(model: nn.Module) -> list[nn.Module]:
    """The detection heads of a model (one for FasterRCNN, the det net's for the unshared pair)."""
    return [module for module in model.modules() if hasattr(module, "detections_per_image")]


@contextlib.contextmanager
def no_cap_per_image(model: nn.Module):
    """While inside: the model keeps every detection above its score threshold (no ``detections_per_image``)."""
    heads = roi_heads(model)
    caps = [head.detections_per_image for head in heads]
    try:
        for head in heads:
            head.detections_per_image = sys.maxsize
        yield
    finally:
        for head, cap in zip(heads, caps):
            head.detections_per_image = cap


def merge_tiles(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float, max_detections: int) -> Tensor:
    """Class-wise NMS over every tile's detections (image pixels) -> kept indices [K], decreasing score,
    K <= max_detections. boxes [N, 4], scores [N], labels [N]."""
    keep = batched_nms(boxes, scores, labels, iou_thresh)  # sorted by decreasing score
    return keep[:max_detections]


def shift_boxes(boxes: Tensor, window: tuple[int, int, int, int]) -> Tensor:
    """[D, 4] boxes in a tile's pixels -> the image's pixels."""
    x1, y1 = window[0], window[1]
    return boxes + boxes.new_tensor([x1, y1, x1, y1])
