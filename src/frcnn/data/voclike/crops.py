"""Classification crops of the VOC-like classes: the VOC-like data's ImageNet analogue.

Faster R-CNN starts from a net pre-trained to classify ImageNet, which holds VOC's categories
(§3.1.3). For the VOC-like data the analogue is a classifier of its own 20 classes: a crop of
``size_px`` x ``size_px`` holds one object of a class drawn uniformly (ImageNet's classes are
near-balanced), filling 45-95 % of the crop with its class's aspect ratio, on the data's background
and stuff, sometimes cut by the crop's border or by a second object of another class in front, as a
detector's RoI sees it; or no object (label 0, stuff only). Crop ``i`` comes from
``numpy.random.default_rng([seed, CROP_STREAM, i])``: the detection splits use streams 0 and 1, so no
picture is shared.
"""

from __future__ import annotations

import numpy as np

from frcnn.data.synthetic import draw_background
from frcnn.data.voclike.figures import draw_object
from frcnn.data.voclike.scene import draw_stuff, lognormal_through
from frcnn.data.voclike.voc2007 import CLASS_NAMES, VOC2007_CLASSES

CROP_STREAM = 7
BACKGROUND_SHARE = 1 / 21  # crops with no object (label 0), as often as one class
FILL = (0.45, 0.95)  # the object's longer side / the crop side
OCCLUDER_SHARE = 0.25  # crops with a second, smaller object of another class in front


def _paste(canvas: np.ndarray, layer: np.ndarray, mask: np.ndarray, x0: int, y0: int) -> None:
    side = canvas.shape[0]
    h, w = mask.shape
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(side, x0 + w), min(side, y0 + h)
    if cx0 < cx1 and cy0 < cy1:
        part = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        canvas[cy0:cy1, cx0:cx1][part] = layer[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0][part]


def _object(rng: np.random.Generator, class_index: int, longer_px: float) -> tuple[np.ndarray, np.ndarray]:
    stats = VOC2007_CLASSES[class_index]
    aspect = float(np.clip(lognormal_through(rng, stats.aspect_p10, stats.aspect_p50, stats.aspect_p90), 0.25, 4.0))
    w, h = (longer_px, longer_px / aspect) if aspect >= 1 else (longer_px * aspect, longer_px)
    return draw_object(rng, CLASS_NAMES[class_index], max(4, int(round(w))), max(4, int(round(h))))


def render_voclike_crop(seed: int, index: int, size_px: int) -> tuple[np.ndarray, int]:
    """Crop ``index`` -> (uint8 [size_px, size_px, 3], label: 0 no object, 1..20 the class)."""
    rng = np.random.default_rng([seed, CROP_STREAM, index])
    canvas = np.asarray(draw_background(rng, (size_px, size_px)), dtype=np.float32).copy()
    draw_stuff(rng, canvas)
    if rng.uniform() < BACKGROUND_SHARE:
        return np.clip(canvas, 0, 255).astype(np.uint8), 0
    class_index = int(rng.integers(0, len(CLASS_NAMES)))
    layer, mask = _object(rng, class_index, size_px * rng.uniform(*FILL))
    h, w = mask.shape
    jitter = rng.uniform(-0.15, 0.15, size=2) * size_px
    _paste(canvas, layer, mask, int((size_px - w) / 2 + jitter[0]), int((size_px - h) / 2 + jitter[1]))
    if rng.uniform() < OCCLUDER_SHARE:
        other = (class_index + int(rng.integers(1, len(CLASS_NAMES)))) % len(CLASS_NAMES)
        layer, mask = _object(rng, other, size_px * rng.uniform(0.2, 0.4))
        corner = rng.integers(0, 2, size=2)  # in front, near a corner: it hides part of the main object
        _paste(canvas, layer, mask, int(corner[0] * (size_px - mask.shape[1] * 0.7) - mask.shape[1] * 0.3),
               int(corner[1] * (size_px - mask.shape[0] * 0.7) - mask.shape[0] * 0.3))
    return np.clip(canvas, 0, 255).astype(np.uint8), class_index + 1
