"""Values a preset leaves to the training set (``auto``, schedules in epochs), derived once at start-up.

The paper's anchors (128, 256, 512 px, §3.1.1), its 16 px minimum proposal size and its stage lengths
(80k mini-batches, §3.3) were chosen for PASCAL VOC at a 600-px input scale. For data of unknown scale
and size (``experiment=cpu_own_data``) the preset says ``auto`` / ``epochs`` and
:func:`fit_config_to_data` turns them into numbers from the training set before any model is built:

* ``rpn.anchor_scales: auto`` -> :func:`anchor_scales_for_box_sides` of the training boxes at the input scale;
* ``rpn.min_size: auto`` -> :func:`min_proposal_size_for` of the same boxes' shorter sides in original-image px
  (``rpn.min_size`` is in original-image px: the proposal layer multiplies it by each image's resize factor);
* ``schedule.<recipe>[.<stage>]: {epochs, lr_epochs}`` -> ``max_steps`` / ``lr_steps`` (:func:`steps_for_epochs`).

Each derived value is logged in one line with what it came from; the saved detector holds the numbers.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from frcnn.data.records import training_annotations
from frcnn.data.transforms import paper_scale_factor
from frcnn.errors import ConfigError

log = logging.getLogger(__name__)

AUTO = "auto"
PAPER_MIN_PROPOSAL_SIZE_PX = 16.0  # §3.3 / the authors' code: proposals under 16 px (600-px input scale) are dropped
MIN_ANCHOR_SCALES, MAX_ANCHOR_SCALES = 3, 5  # the paper's 3 scales at least (k = 9 with 3 ratios)


def anchor_scales_for_box_sides(box_sides_px: Sequence[float] | np.ndarray, low_percentile: float = 5.0,
                                high_percentile: float = 95.0) -> list[int]:
    """Anchor sides (px at the network input) for objects whose box sides sqrt(w h) are ``box_sides_px``.

    The paper's anchors are an octave ladder, each scale twice the one before (128, 256, 512 px,
    §3.1.1) spanning VOC's object sizes at its 600-px input. Here the ladder is centred on the geometric
    mean of the p5 and p95 box sides and holds n = round(log2(p95 / p5)) + 1 scales (at least 3, at most
    5), so its ends lie within a quarter octave of p5 and p95 whenever 3 <= n <= 5. Rounded to whole px.
    """
    sides = np.asarray(box_sides_px, dtype=np.float64).reshape(-1)
    sides = sides[np.isfinite(sides) & (sides > 0)]
    if sides.size == 0:
        raise ValueError("no boxes to fit anchor scales to")
    low, high = np.percentile(sides, [low_percentile, high_percentile])
    octaves = math.log2(high / low)
    count = int(min(max(math.floor(octaves + 0.5) + 1, MIN_ANCHOR_SCALES), MAX_ANCHOR_SCALES))
    centre = math.sqrt(low * high)
    return [max(1, round(centre * 2.0 ** (k - (count - 1) / 2))) for k in range(count)]


def min_proposal_size_for(shorter_sides_px: Sequence[float] | np.ndarray, percentile: float = 1.0) -> float:
    """The minimum proposal side in original-image px (``rpn.min_size``'s unit: the proposal layer drops boxes
    under it x the image's resize factor, as the authors' ``min_size * im_scale``) from the boxes' shorter sides
    in original-image px: the paper's 16 px, or half the shorter box side of the ``percentile``-th smallest
    object when that is less, so that the proposals of the smallest objects of the data survive the cut
    (rounded down to 0.5 px, at least 1 px)."""
    sides = np.asarray(shorter_sides_px, dtype=np.float64).reshape(-1)
    sides = sides[np.isfinite(sides) & (sides > 0)]
    if sides.size == 0:
        raise ValueError("no boxes to fit the minimum proposal size to")
    half_small = 0.5 * float(np.percentile(sides, percentile))
    return max(1.0, min(PAPER_MIN_PROPOSAL_SIZE_PX, math.floor(half_small * 2.0) / 2.0))


def steps_for_epochs(epochs: float, lr_epochs: Sequence[float], num_images: int, images_per_batch: int,
                     processes: int = 1) -> tuple[int, list[int]]:
    """(max_steps, lr_steps) of a stage given in epochs: an epoch is ceil(images / (images_per_batch x
    processes)) mini-batches (the last one may be short), an lr step at e epochs is round(e x that)."""
    if num_images < 1:
        raise ValueError(f"the training set is empty ({num_images} images)")
    steps_per_epoch = math.ceil(num_images / (int(images_per_batch) * max(1, int(processes))))
    max_steps = max(1, round(float(epochs) * steps_per_epoch))
    return max_steps, [max(1, round(float(e) * steps_per_epoch)) for e in lr_epochs]


def training_boxes_wh(dataset, scales: Sequence[int], max_size: int) -> np.ndarray:
    """Widths and heights [M, 2] (px at the network input) of the training targets of ``dataset``, each
    image rescaled by the paper's rule (§3.3) to every training scale in ``scales``.

    Files (VOC, COCO: ``records``, also inside a concatenation) are read from their annotations, without
    decoding an image, leaving out what training leaves out (difficult / crowd boxes); a generated data
    set is drawn item by item (``raw``).
    """
    return training_boxes_wh_and_factors(dataset, scales, max_size)[0]


def training_boxes_wh_and_factors(dataset, scales: Sequence[int], max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`training_boxes_wh` and, per row, the resize factor that took it to the network input
    (network px per original px) -> (wh [M, 2], factors [M])."""
    sizes, factors = [], []
    for height, width, boxes, _ in training_annotations(dataset):
        wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1).astype(np.float64)  # [N, 2]
        for scale in scales:
            factor = paper_scale_factor(height, width, int(scale), int(max_size))
            sizes.append(wh * factor)
            factors.append(np.full(len(wh), factor, dtype=np.float64))
    if not sizes:
        return np.zeros((0, 2)), np.zeros(0)
    return np.concatenate(sizes), np.concatenate(factors)


def _processes(trainer_cfg: Mapping[str, Any]) -> int:
    devices = trainer_cfg.get("devices", 1)
    count = len(devices) if isinstance(devices, (list, tuple)) else (int(devices) if isinstance(devices, int)
                                                                       and devices > 0 else 1)
    return count * int(trainer_cfg.get("num_nodes", 1))


def _fit_stage_lengths(stage: dict, key: str, num_images: int, processes: int) -> str | None:
    """Replace a stage's {epochs, lr_epochs} by {max_steps, lr_steps} in place; the log line, or None."""
    if stage.get("epochs") is None:
        return None
    per_update = stage["images_per_batch"] * int(stage.get("batches_per_update", 1))  # joint: Caffe's iter_size
    stage["max_steps"], stage["lr_steps"] = steps_for_epochs(
        stage["epochs"], stage.get("lr_epochs") or [], num_images, per_update, processes)
    per_batch = per_update * processes
    return (f"{key}: {stage['epochs']:g} epochs of {num_images} images, {per_batch} per mini-batch -> "
            f"max_steps={stage['max_steps']}, lr_steps={stage['lr_steps']} (lr_epochs {list(stage.get('lr_epochs') or [])})")


def fit_config_to_data(cfg: Mapping[str, Any], train_dataset) -> dict:
    """A copy of the resolved config with every ``auto`` value and epoch schedule of the chosen recipe
    replaced by numbers from ``train_dataset`` (each logged); ``cfg`` itself when there is none."""
    rpn = cfg["rpn"]
    recipe = cfg["recipe"]["name"]
    schedule = cfg["schedule"][recipe]
    stages = {f"schedule.{recipe}": schedule} if "images_per_batch" in schedule else {
        f"schedule.{recipe}.{name}": stage for name, stage in schedule.items()}
    needs_boxes = AUTO in (rpn["anchor_scales"], rpn["min_size"])
    if not needs_boxes and all(stage.get("epochs") is None for stage in stages.values()):
        return dict(cfg)
    fitted = copy.deepcopy(dict(cfg))
    lines = []
    if needs_boxes:
        data = cfg["data"]
        wh, factors = training_boxes_wh_and_factors(train_dataset, data["scales"], data["max_size"])  # [M, 2], [M]
        if len(wh) == 0:
            raise ConfigError("rpn.anchor_scales / rpn.min_size = auto: the training set has no boxes to fit them "
                              "to; give numbers (e.g. rpn.anchor_scales=[128,256,512] rpn.min_size=16)")
        at = f"{len(wh)} training boxes at data.scales={list(data['scales'])}"
        if rpn["anchor_scales"] == AUTO:
            sides = np.sqrt(wh[:, 0] * wh[:, 1])
            scales = anchor_scales_for_box_sides(sides)
            fitted["rpn"]["anchor_scales"] = scales
            low, high = np.percentile(sides, [5, 95])
            lines.append(f"rpn.anchor_scales=auto -> {scales} px: an octave ladder over the box sides sqrt(w h) "
                         f"p5 {low:.1f} px .. p95 {high:.1f} px ({at})")
        if rpn["min_size"] == AUTO:
            shorter = wh.min(axis=1) / factors  # original-image px, rpn.min_size's unit (x each image's factor)
            fitted["rpn"]["min_size"] = min_proposal_size_for(shorter)
            lines.append(f"rpn.min_size=auto -> {fitted['rpn']['min_size']:g} px of the original images: the paper's "
                         f"16 px or half the 1st-percentile shorter box side ({np.percentile(shorter, 1):.1f} original "
                         f"px), the smaller ({at})")
    fitted_schedule = fitted["schedule"][recipe]
    for key, stage in stages.items():
        target = fitted_schedule if key == f"schedule.{recipe}" else fitted_schedule[key.rsplit(".", 1)[1]]
        line = _fit_stage_lengths(target, key, len(train_dataset), _processes(cfg["trainer"]))
        if line:
            lines.append(line)
    for line in lines:
        log.info("%s", line)
    return fitted
