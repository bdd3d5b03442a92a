"""One picture of the VOC-like data: its shape, its objects and how they hide each other.

Each rule draws on PASCAL VOC 2007's statistics (:mod:`frcnn.data.voclike.voc2007`):

* image shape: longer side ``longer_px`` (VOC: 500 px), landscape 81 % / portrait 18 % / square,
  shorter side 3:4 or 2:3 of the longer as VOC's 500 x 375 and 500 x 333;
* number of objects, difficult ones included: VOC's P(1..4) and a geometric tail above 4 that meets
  its P(>= 5), P(>= 10) and P(>= 20) (max 42);
* classes: a main class, and each further object of the main class with a probability that grows
  with the class's objects per picture in VOC (sheep herds, crowds), else of any class by VOC's
  object counts; main classes are drawn so that each class's share of all objects is VOC's
  (person 37 %);
* size r = sqrt(box area / image area): log-normal per class through VOC's p10 / p50 / p90, smaller
  in crowded pictures; aspect w / h: log-normal per class through its p10 / p50 / p90;
* position: anywhere, up to ``MAX_OUTSIDE`` of the object beyond the border (truncation);
* drawing order: larger objects behind smaller ones, so crowds occlude each other.

Annotation, as VOC's guidelines: the box covers the visible pixels; an object less than
``MIN_VISIBLE`` visible is not annotated; "truncated" when more than ``TRUNCATED_BELOW`` of it is
hidden (border or occluder); "difficult" when its visible box is small or it is mostly hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from frcnn.data.synthetic import draw_background
from frcnn.data.voclike.figures import draw_object, hsv_to_rgb, pattern_field
from frcnn.data.voclike.voc2007 import (
    CLASS_NAMES,
    LANDSCAPE_FRACTION,
    OBJECTS_PER_IMAGE_ALL,
    PORTRAIT_FRACTION,
    VOC2007_CLASSES,
)

Z90 = 1.2816  # standard normal quantile of 0.9: p10 / p90 are median x exp(-+ Z90 sigma)
TAIL_RATIO = 0.79  # P(n >= k + 1 | n >= k) above 4 objects; VOC: (0.049 / 0.202) ** (1 / 5) = 0.75, set higher
# as some objects of a crowd end up hidden (not annotated)
MAX_OBJECTS = 42
CROWD_EXPONENT = 0.25  # r shrinks as n ** -0.25 in a picture of n objects (crowds are small)
SIZE_SCALE = 1.6  # global factor on the class medians (all objects are drawn; the small ones become
# difficult, and visible boxes are cut by the border and occluders): non-difficult p50 = VOC's
SIZE_WIDEN = 1.4  # class size spreads x this: the visible boxes' p10 / p90 as VOC's
ASPECT_SCALE = 0.92  # truncation cuts tall objects (people) at the bottom: drawn a little taller
MAX_OUTSIDE = 0.55  # at most this share of an object's width / height lies beyond the image border
MIN_VISIBLE = 0.15  # less visible than this: not annotated (VOC guidelines: 10-20 %)
TRUNCATED_BELOW = 0.8  # visible share under this: truncated (guidelines: more than 15-20 % hidden)
DIFFICULT_R = (0.03, 0.12)  # visible box r under a threshold drawn from this range: difficult
DIFFICULT_VISIBLE = 0.3  # visible share under this: difficult
DIFFICULT_HIDDEN_SMALL = (0.6, 0.2)  # visible share under the first and r under the second: difficult
MIN_BOX_PX = 3  # a visible box narrower than this is not annotated
STUFF_RANGE = (3, 9)  # background stuff per picture: buildings, trees, poles, blobs (never annotated)


@dataclass(frozen=True)
class SceneObject:
    """An annotated object: visible box (x1, y1, x2, y2) in continuous px, label 1..20, flags."""

    box_xyxy: tuple[float, float, float, float]
    label: int
    difficult: bool
    truncated: bool


def image_shape_hw(rng: np.random.Generator, longer_px: int) -> tuple[int, int]:
    """(H, W): VOC's orientations and its 3:4 / 2:3 shorter sides."""
    orientation = rng.uniform()
    ratio = float(rng.choice([0.75, 2 / 3, rng.uniform(0.6, 0.8)], p=[0.55, 0.25, 0.20]))
    shorter = int(round(longer_px * ratio))
    if orientation < PORTRAIT_FRACTION:
        return longer_px, shorter
    if orientation < 1.0 - LANDSCAPE_FRACTION + PORTRAIT_FRACTION:
        return longer_px, longer_px
    return shorter, longer_px


def number_of_objects(rng: np.random.Generator) -> int:
    """Objects in a picture, difficult ones included: VOC 2007 trainval's P(1..4) and its tail."""
    stats = OBJECTS_PER_IMAGE_ALL
    u = rng.uniform()
    for n, key in enumerate(("p1", "p2", "p3", "p4"), start=1):
        if u < stats[key]:
            return n
        u -= stats[key]
    return min(MAX_OBJECTS, 5 + int(rng.geometric(1.0 - TAIL_RATIO)) - 1)


OBJECT_SHARES = np.array([c.objects for c in VOC2007_CLASSES], dtype=np.float64)
OBJECT_SHARES /= OBJECT_SHARES.sum()


def same_class_probability(class_index: int) -> float:
    """Chance that a further object of a picture is of its main class: from the class's objects per
    picture in VOC (sheep 2.7, person 2.3 ... sofa 1.1)."""
    stats = VOC2007_CLASSES[class_index]
    per_image = stats.objects / stats.images
    return float(np.clip(0.3 + 0.3 * (per_image - 1.0), 0.25, 0.85))


def _main_class_shares() -> np.ndarray:
    """P(main class = c) such that a class's share of all objects is VOC's: a main class c brings
    1 + (E[n] - 1) p_same(c) objects of c on average, the other draws follow the object shares."""
    mean_objects = OBJECTS_PER_IMAGE_ALL["mean"]
    brought = np.array([1.0 + (mean_objects - 1.0) * same_class_probability(c) for c in range(len(CLASS_NAMES))])
    shares = OBJECT_SHARES / brought
    return shares / shares.sum()


MAIN_CLASS_SHARES = _main_class_shares()


def object_classes(rng: np.random.Generator, count: int) -> list[int]:
    """Class indices (0..19) of a picture's objects, the main class first."""
    main = int(rng.choice(len(CLASS_NAMES), p=MAIN_CLASS_SHARES))
    stay = same_class_probability(main)
    return [main] + [main if rng.uniform() < stay else int(rng.choice(len(CLASS_NAMES), p=OBJECT_SHARES))
                     for _ in range(count - 1)]


def lognormal_through(rng: np.random.Generator, p10: float, p50: float, p90: float, widen: float = 1.0) -> float:
    """A log-normal draw with median p50 and the spread of p10 / p90 (their mean log distance) x ``widen``."""
    sigma = widen * (np.log(p90) - np.log(p10)) / (2 * Z90)
    return float(p50 * np.exp(sigma * rng.standard_normal()))


def object_extent_wh(rng: np.random.Generator, class_index: int, count: int, hw: tuple[int, int]) -> tuple[int, int]:
    """Full (unclipped) width and height in px of one object of a picture of ``count`` objects."""
    stats = VOC2007_CLASSES[class_index]
    r = lognormal_through(rng, stats.r_p10, stats.r_p50, stats.r_p90, SIZE_WIDEN) * SIZE_SCALE * count ** -CROWD_EXPONENT
    r = float(np.clip(r, 0.02, 1.3))
    aspect = ASPECT_SCALE * lognormal_through(rng, stats.aspect_p10, stats.aspect_p50, stats.aspect_p90)
    aspect = float(np.clip(aspect, 0.2, 5.0))
    area = r * r * hw[0] * hw[1]
    return max(4, int(round(np.sqrt(area * aspect)))), max(4, int(round(np.sqrt(area / aspect))))


def _offset(rng: np.random.Generator, extent: int, side: int) -> int:
    """Top-left coordinate so that at most MAX_OUTSIDE of ``extent`` lies outside [0, side)."""
    low = -int(MAX_OUTSIDE * extent)
    high = side - extent + int(MAX_OUTSIDE * extent)
    return int(rng.integers(min(low, high), max(low, high) + 1))


def _paste(canvas: np.ndarray, layer: np.ndarray, mask: np.ndarray, x0: int, y0: int) -> tuple:
    """Paint ``layer`` where ``mask`` onto ``canvas`` at (x0, y0), clipped; -> the painted region's
    (canvas slice, mask part) for the owner map."""
    h, w = mask.shape
    height, width = canvas.shape[:2]
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(width, x0 + w), min(height, y0 + h)
    if cx0 >= cx1 or cy0 >= cy1:
        return None
    part = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    region = canvas[cy0:cy1, cx0:cx1]
    region[part] = layer[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0][part]
    return (slice(cy0, cy1), slice(cx0, cx1)), part


def draw_stuff(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """Background stuff that is never an object: buildings with windows (like buses), trees (like
    potted plants), poles, blobs with patterns."""
    height, width = canvas.shape[:2]
    for _ in range(int(rng.integers(*STUFF_RANGE))):
        kind = rng.choice(["building", "tree", "pole", "blob"])
        w = max(4, int(width * rng.uniform(0.08, 0.45)))
        h = max(4, int(height * rng.uniform(0.1, 0.6)))
        x0, y0 = int(rng.integers(-w // 3, width)), int(rng.integers(-h // 3, height))
        ys, xs = np.mgrid[0:h, 0:w]
        if kind == "building":
            mask = np.ones((h, w), dtype=bool)
            colour = hsv_to_rgb(rng.uniform(0, 60), rng.uniform(0, 0.3), rng.uniform(0.4, 0.8))
            layer = np.broadcast_to(colour, (h, w, 3)).astype(np.float32).copy()
            cell = max(3, int(rng.uniform(0.1, 0.25) * min(w, h)))
            windows = ((xs % cell) < cell * 0.55) & ((ys % cell) < cell * 0.55)
            layer[windows] = hsv_to_rgb(rng.uniform(180, 220), 0.3, rng.uniform(0.5, 0.9))
        elif kind == "tree":
            mask = ((xs - w / 2) ** 2 / (w / 2) ** 2 + (ys - h / 3) ** 2 / (h / 3) ** 2 <= 1) | (
                (abs(xs - w / 2) < w * 0.08) & (ys > h / 3))
            layer = np.empty((h, w, 3), dtype=np.float32)
            layer[:] = hsv_to_rgb(rng.uniform(80, 140), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.6))
            layer[ys > h * 0.62] = hsv_to_rgb(25, 0.6, 0.3)
        elif kind == "pole":
            mask = abs(xs - w / 2) < max(1.0, w * 0.06)
            layer = np.broadcast_to(np.full(3, rng.uniform(20, 200)), (h, w, 3)).astype(np.float32).copy()
        else:
            mask = (xs - w / 2) ** 2 / (w / 2) ** 2 + (ys - h / 2) ** 2 / (h / 2) ** 2 <= 1
            colour = hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95))
            field = pattern_field(rng, str(rng.choice(["none", "stripes", "spots", "checks"])), h, w)
            layer = (colour[None, None, :] * field[..., None]).astype(np.float32)
        _paste(canvas, layer, mask, x0, y0)


def is_difficult(rng: np.random.Generator, r_visible: float, visible: float) -> bool:
    """VOC's "difficult" (hard to recognise from the box alone), from the visible box's size and the
    visible share: small (under a threshold drawn from DIFFICULT_R), mostly hidden, or half hidden
    and smallish (VOC: difficult objects' median r is 0.10, 72 % of them truncated)."""
    hidden_below, small_below = DIFFICULT_HIDDEN_SMALL
    return bool(r_visible < rng.uniform(*DIFFICULT_R) or visible < DIFFICULT_VISIBLE
                or (visible < hidden_below and r_visible < small_below))


SCENE_TRIES = 8  # redraws of a picture that came out without a non-difficult object (VOC has none such)


def render_scene(rng: np.random.Generator, longer_px: int) -> tuple[np.ndarray, list[SceneObject]]:
    """Draw one picture -> (uint8 [H, W, 3], its annotated objects); every picture holds at least one
    non-difficult object, as every VOC 2007 picture does (redrawn up to SCENE_TRIES times, then the
    largest object is marked non-difficult)."""
    for _ in range(SCENE_TRIES):
        image, objects = _draw_scene(rng, longer_px)
        if any(not o.difficult for o in objects):
            return image, objects
    if not objects:
        return image, objects
    largest = max(range(len(objects)), key=lambda k: (objects[k].box_xyxy[2] - objects[k].box_xyxy[0])
                  * (objects[k].box_xyxy[3] - objects[k].box_xyxy[1]))
    objects[largest] = SceneObject(objects[largest].box_xyxy, objects[largest].label, False, objects[largest].truncated)
    return image, objects


def _draw_scene(rng: np.random.Generator, longer_px: int) -> tuple[np.ndarray, list[SceneObject]]:
    """One attempt at a picture -> (uint8 [H, W, 3], its annotated objects)."""
    height, width = image_shape_hw(rng, longer_px)
    canvas = np.asarray(draw_background(rng, (height, width)), dtype=np.float32).copy()  # [H, W, 3]
    draw_stuff(rng, canvas)
    count = number_of_objects(rng)
    classes = object_classes(rng, count)
    extents = [object_extent_wh(rng, c, count, (height, width)) for c in classes]
    order = sorted(range(count), key=lambda k: -(extents[k][0] * extents[k][1]) * rng.uniform(0.7, 1.3))
    owner = np.full((height, width), -1, dtype=np.int32)  # [H, W]: which object a pixel shows
    full_area = np.zeros(count, dtype=np.int64)
    for k in order:
        w, h = extents[k]
        layer, mask = draw_object(rng, CLASS_NAMES[classes[k]], w, h)
        x0, y0 = _offset(rng, w, width), _offset(rng, h, height)
        full_area[k] = int(mask.sum())
        painted = _paste(canvas, layer, mask, x0, y0)
        if painted is not None:
            region, part = painted
            owner[region][part] = k
    objects = []
    for k in range(count):
        ys, xs = np.nonzero(owner == k)
        if full_area[k] == 0 or len(xs) / full_area[k] < MIN_VISIBLE:
            continue
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        if min(x2 - x1, y2 - y1) < MIN_BOX_PX:
            continue
        visible = len(xs) / full_area[k]
        r_visible = np.sqrt((x2 - x1) * (y2 - y1) / (height * width))
        objects.append(SceneObject((float(x1), float(y1), float(x2), float(y2)), classes[k] + 1,
                                   difficult=is_difficult(rng, r_visible, visible),
                                   truncated=bool(visible < TRUNCATED_BELOW)))
    return np.clip(canvas, 0, 255).astype(np.uint8), objects
