"""The 20 object classes of the VOC-like data as drawings: parts in a unit box, a palette, a texture.

A class is recognisable by its silhouette (parts), its colours and its surface pattern, each varied
within the class (part proportions, pose mirrored, colour and pattern jittered), and some classes
share a silhouette family as VOC's confusable classes do (cat / dog / horse / cow / sheep
quadrupeds, car / bus / train vehicles, chair / sofa / diningtable furniture). A drawing is a list
of parts in unit-box coordinates ([0, 1] x [0, 1], y down); :func:`render_figure` rasterises it at
any w x h, so an object's aspect ratio is the box's, drawn from the class's VOC statistics.

Part roles: 1 the body (class colour and pattern), 2 a second colour of the class, 3 dark (wheels,
frames, legs), 4 light (windows, screens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

BODY, SECOND, DARK, LIGHT = 1, 2, 3, 4

Part = tuple  # ("ellipse" | "rect", x0, y0, x1, y1, role) | ("poly", [(x, y), ...], role) | ("line", [(x, y), ...], width, role)


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


# ----------------------------------------------------------------------------- silhouettes
def _quadruped(rng, leg: float, neck: float, ears: str, tail: float) -> list[Part]:
    """A four-legged animal seen from the side: body, legs of relative length ``leg``, a head raised
    by ``neck``, ``ears`` pointed / round / none, a tail of length ``tail``."""
    body_top, body_bottom = 0.30 + 0.25 * neck, 1.0 - leg
    head_w = _u(rng, 0.22, 0.30)
    parts: list[Part] = [("ellipse", 0.12, body_top, 0.80, body_bottom, BODY)]
    head_y = max(0.0, body_top - 0.30 * neck - 0.12)
    parts.append(("ellipse", 0.72, head_y, 0.72 + head_w, head_y + 0.28, BODY))
    if neck > 0.3:
        parts.append(("poly", [(0.62, body_top + 0.05), (0.76, head_y + 0.10), (0.86, head_y + 0.2),
                               (0.74, body_top + 0.25)], BODY))
    if ears == "pointed":
        parts.append(("poly", [(0.75, head_y + 0.05), (0.78, head_y - 0.10), (0.83, head_y + 0.04)], BODY))
    elif ears == "round":
        parts.append(("ellipse", 0.70, head_y + 0.02, 0.78, head_y + 0.20, SECOND))
    legs_x = (0.18, 0.30, 0.60, 0.72)
    for x in legs_x:
        parts.append(("rect", x, body_bottom - 0.08, x + 0.07, 1.0, BODY))
    if tail > 0:
        parts.append(("line", [(0.14, body_top + 0.1), (0.0, body_top + 0.1 - tail)], 0.04, BODY))
    return parts


def _vehicle(rng, cabin: float, windows: int, wheel: float) -> list[Part]:
    """A road vehicle from the side: body, a cabin of relative height ``cabin``, ``windows`` light
    panes, two wheels of diameter ``wheel`` (box heights)."""
    bottom = 1.0 - wheel / 2
    top = max(0.0, 1.0 - wheel / 2 - _u(rng, 0.35, 0.45) - cabin)
    parts: list[Part] = [("rect", 0.0, top + cabin, 1.0, bottom, BODY)]
    if cabin > 0:
        parts.append(("poly", [(0.2, top + cabin), (0.32, top), (0.72, top), (0.84, top + cabin)], BODY))
    pane_w = 0.8 / max(1, windows)
    for k in range(windows):
        x0 = 0.1 + k * pane_w
        y0 = top + 0.05 if cabin > 0 else top + 0.08
        parts.append(("rect", x0 + 0.02, y0, x0 + pane_w - 0.02, y0 + 0.18 + 0.5 * cabin, LIGHT))
    for x in (0.12, 0.70):
        parts.append(("ellipse", x, 1.0 - wheel, x + wheel * 0.75, 1.0, DARK))
    return parts


def aeroplane(rng) -> list[Part]:
    wing = _u(rng, 0.35, 0.5)
    return [("ellipse", 0.0, 0.38, 1.0, 0.62, BODY),
            ("poly", [(0.35, 0.5), (0.55, 0.5), (0.45, 0.5 + wing), (0.30, 0.5 + wing)], SECOND),
            ("poly", [(0.35, 0.5), (0.55, 0.5), (0.45, 0.5 - wing), (0.30, 0.5 - wing)], SECOND),
            ("poly", [(0.0, 0.5), (0.12, 0.5), (0.06, 0.1)], SECOND)]


def bicycle(rng) -> list[Part]:
    wheel = _u(rng, 0.5, 0.6)
    return [("ring", 0.0, 1 - wheel, wheel * 0.9, 1.0, 0.08, DARK),
            ("ring", 1 - wheel * 0.9, 1 - wheel, 1.0, 1.0, 0.08, DARK),
            ("line", [(0.22, 0.75), (0.45, 0.35), (0.75, 0.35), (0.78, 0.75), (0.22, 0.75)], 0.05, BODY),
            ("line", [(0.45, 0.35), (0.42, 0.12), (0.30, 0.10)], 0.05, BODY),
            ("line", [(0.72, 0.35), (0.70, 0.0)], 0.05, BODY)]


def bird(rng) -> list[Part]:
    up = _u(rng, -0.1, 0.25)
    return [("ellipse", 0.15, 0.30, 0.85, 0.80, BODY), ("ellipse", 0.68, 0.12, 1.0, 0.45, BODY),
            ("poly", [(0.30, 0.50), (0.65, 0.45), (0.40, 0.05 + up)], SECOND),
            ("poly", [(0.95, 0.25), (1.0, 0.32), (0.92, 0.34)], DARK),
            ("poly", [(0.18, 0.55), (0.0, 0.45), (0.0, 0.70)], SECOND),
            ("line", [(0.45, 0.78), (0.45, 1.0)], 0.03, DARK), ("line", [(0.55, 0.78), (0.55, 1.0)], 0.03, DARK)]


def boat(rng) -> list[Part]:
    sail = _u(rng, 0.0, 1.0) < 0.6
    hull_top = _u(rng, 0.55, 0.7) if sail else 0.3
    parts: list[Part] = [("poly", [(0.0, hull_top), (1.0, hull_top), (0.85, 1.0), (0.12, 1.0)], BODY)]
    if sail:
        parts += [("line", [(0.5, hull_top), (0.5, 0.0)], 0.03, DARK),
                  ("poly", [(0.52, 0.02), (0.52, hull_top - 0.05), (0.9, hull_top - 0.05)], LIGHT)]
    else:
        parts.append(("rect", 0.35, 0.0, 0.7, hull_top, SECOND))
    return parts


def bottle(rng) -> list[Part]:
    neck = _u(rng, 0.25, 0.4)
    return [("rect", 0.05, neck + 0.1, 0.95, 1.0, BODY), ("poly", [(0.05, neck + 0.12), (0.3, neck), (0.7, neck),
                                                                   (0.95, neck + 0.12)], BODY),
            ("rect", 0.3, 0.08, 0.7, neck + 0.02, BODY), ("rect", 0.28, 0.0, 0.72, 0.1, SECOND),
            ("rect", 0.05, 0.55, 0.95, 0.8, LIGHT)]


def bus(rng) -> list[Part]:
    return _vehicle(rng, cabin=0.0, windows=int(rng.integers(4, 7)), wheel=_u(rng, 0.22, 0.28))


def car(rng) -> list[Part]:
    return _vehicle(rng, cabin=_u(rng, 0.22, 0.3), windows=2, wheel=_u(rng, 0.32, 0.4))


def train(rng) -> list[Part]:
    parts = _vehicle(rng, cabin=0.0, windows=int(rng.integers(6, 10)), wheel=_u(rng, 0.12, 0.18))
    return parts + [("rect", 0.0, 0.62, 1.0, 0.7, SECOND)]


def cat(rng) -> list[Part]:
    return _quadruped(rng, leg=_u(rng, 0.18, 0.25), neck=_u(rng, 0.0, 0.2), ears="pointed", tail=_u(rng, 0.3, 0.5))


def dog(rng) -> list[Part]:
    return _quadruped(rng, leg=_u(rng, 0.25, 0.35), neck=_u(rng, 0.1, 0.3), ears="round", tail=_u(rng, 0.15, 0.3))


def horse(rng) -> list[Part]:
    return _quadruped(rng, leg=_u(rng, 0.4, 0.5), neck=_u(rng, 0.6, 0.9), ears="pointed", tail=_u(rng, 0.2, 0.35))


def cow(rng) -> list[Part]:
    return _quadruped(rng, leg=_u(rng, 0.28, 0.36), neck=_u(rng, 0.1, 0.3), ears="none", tail=_u(rng, 0.1, 0.3))


def sheep(rng) -> list[Part]:
    parts = _quadruped(rng, leg=_u(rng, 0.18, 0.26), neck=_u(rng, 0.0, 0.15), ears="round", tail=0.0)
    for k in range(6):  # fleece bumps along the back
        x = 0.15 + 0.1 * k
        parts.append(("ellipse", x, 0.22, x + 0.16, 0.42, BODY))
    return parts


def chair(rng) -> list[Part]:
    seat = _u(rng, 0.5, 0.6)
    return [("rect", 0.0, 0.0, 0.18, seat + 0.08, BODY), ("rect", 0.0, seat, 1.0, seat + 0.1, BODY),
            ("rect", 0.02, seat, 0.1, 1.0, DARK), ("rect", 0.88, seat, 0.96, 1.0, DARK)]


def sofa(rng) -> list[Part]:
    back = _u(rng, 0.35, 0.5)
    return [("rect", 0.05, 0.0, 0.95, back + 0.1, BODY), ("rect", 0.0, back, 1.0, 0.9, BODY),
            ("rect", 0.0, back - 0.1, 0.12, 0.9, SECOND), ("rect", 0.88, back - 0.1, 1.0, 0.9, SECOND),
            ("rect", 0.05, 0.9, 0.1, 1.0, DARK), ("rect", 0.9, 0.9, 0.95, 1.0, DARK)]


def diningtable(rng) -> list[Part]:
    top = _u(rng, 0.15, 0.3)
    return [("poly", [(0.1, 0.0), (0.9, 0.0), (1.0, top), (0.0, top)], BODY),
            ("rect", 0.06, top, 0.12, 1.0, SECOND), ("rect", 0.88, top, 0.94, 1.0, SECOND),
            ("rect", 0.3, top, 0.35, 0.85, SECOND)]


def motorbike(rng) -> list[Part]:
    wheel = _u(rng, 0.45, 0.55)
    return [("ellipse", 0.0, 1 - wheel, wheel * 0.85, 1.0, DARK), ("ellipse", 1 - wheel * 0.85, 1 - wheel, 1.0, 1.0, DARK),
            ("poly", [(0.2, 0.55), (0.45, 0.3), (0.75, 0.35), (0.8, 0.6), (0.5, 0.7)], BODY),
            ("rect", 0.35, 0.22, 0.6, 0.32, SECOND), ("line", [(0.78, 0.35), (0.85, 0.05)], 0.05, DARK)]


def person(rng) -> list[Part]:
    arms_up = _u(rng, 0.0, 1.0) < 0.2
    head = _u(rng, 0.12, 0.16)
    parts: list[Part] = [("ellipse", 0.32, 0.0, 0.68, head, SECOND),
                         ("poly", [(0.2, head + 0.02), (0.8, head + 0.02), (0.75, 0.58), (0.25, 0.58)], BODY),
                         ("rect", 0.27, 0.56, 0.47, 1.0, DARK), ("rect", 0.53, 0.56, 0.73, 1.0, DARK)]
    if arms_up:
        parts += [("line", [(0.25, head + 0.05), (0.05, 0.0)], 0.1, BODY), ("line", [(0.75, head + 0.05), (0.95, 0.0)], 0.1, BODY)]
    else:
        parts += [("line", [(0.2, head + 0.05), (0.02, 0.5)], 0.1, BODY), ("line", [(0.8, head + 0.05), (0.98, 0.5)], 0.1, BODY)]
    return parts


def pottedplant(rng) -> list[Part]:
    pot = _u(rng, 0.6, 0.72)
    parts: list[Part] = [("poly", [(0.2, pot), (0.8, pot), (0.7, 1.0), (0.3, 1.0)], SECOND)]
    for _ in range(5):  # foliage: overlapping leaves
        cx, cy = _u(rng, 0.25, 0.75), _u(rng, 0.15, pot - 0.1)
        parts.append(("ellipse", cx - 0.25, cy - 0.18, cx + 0.25, cy + 0.18, BODY))
    return parts


def tvmonitor(rng) -> list[Part]:
    stand = _u(rng, 0.1, 0.18)
    return [("rect", 0.0, 0.0, 1.0, 1.0 - stand, DARK), ("rect", 0.07, 0.07, 0.93, 0.93 - stand, LIGHT),
            ("rect", 0.42, 1.0 - stand, 0.58, 1.0, DARK), ("rect", 0.25, 0.95, 0.75, 1.0, DARK)]


# ----------------------------------------------------------------------------- appearance
@dataclass(frozen=True)
class Look:
    """Colours and surface of a class: body hue range (degrees) with saturation / value ranges,
    a second colour, and a pattern on the body (none | stripes | spots | patches | checks)."""

    hue: tuple[float, float]
    saturation: tuple[float, float]
    value: tuple[float, float]
    second: tuple[float, float, float, float]  # hue, saturation, value, hue jitter
    pattern: str


FIGURES: dict[str, tuple[Callable[[np.random.Generator], list[Part]], Look]] = {
    "aeroplane": (aeroplane, Look((190, 230), (0.0, 0.15), (0.75, 1.0), (0, 0.8, 0.7, 30), "none")),
    "bicycle": (bicycle, Look((0, 360), (0.6, 1.0), (0.5, 0.9), (0, 0.0, 0.2, 0), "none")),
    "bird": (bird, Look((20, 45), (0.3, 0.7), (0.3, 0.7), (30, 0.2, 0.9, 20), "spots")),
    "boat": (boat, Look((0, 360), (0.5, 0.9), (0.6, 0.95), (210, 0.3, 0.8, 40), "stripes")),
    "bottle": (bottle, Look((90, 140), (0.5, 0.9), (0.25, 0.55), (40, 0.6, 0.8, 20), "none")),
    "bus": (bus, Look((40, 60), (0.7, 1.0), (0.8, 1.0), (0, 0.8, 0.8, 20), "none")),
    "car": (car, Look((0, 360), (0.5, 1.0), (0.35, 0.9), (0, 0.0, 0.3, 0), "none")),
    "cat": (cat, Look((20, 40), (0.2, 0.6), (0.35, 0.8), (25, 0.3, 0.95, 15), "stripes")),
    "chair": (chair, Look((15, 35), (0.4, 0.7), (0.3, 0.6), (20, 0.5, 0.3, 10), "stripes")),
    "cow": (cow, Look((0, 30), (0.0, 0.2), (0.85, 1.0), (0, 0.0, 0.1, 0), "patches")),
    "diningtable": (diningtable, Look((20, 35), (0.5, 0.8), (0.45, 0.7), (20, 0.6, 0.35, 10), "checks")),
    "dog": (dog, Look((25, 45), (0.4, 0.8), (0.4, 0.85), (25, 0.5, 0.3, 15), "none")),
    "horse": (horse, Look((15, 30), (0.5, 0.8), (0.3, 0.55), (20, 0.4, 0.15, 10), "none")),
    "motorbike": (motorbike, Look((0, 360), (0.6, 1.0), (0.5, 0.9), (0, 0.0, 0.6, 0), "stripes")),
    "person": (person, Look((0, 360), (0.2, 0.9), (0.2, 0.95), (25, 0.45, 0.85, 10), "none")),
    "pottedplant": (pottedplant, Look((85, 135), (0.5, 0.9), (0.3, 0.7), (15, 0.7, 0.6, 10), "spots")),
    "sheep": (sheep, Look((35, 55), (0.05, 0.2), (0.85, 1.0), (0, 0.0, 0.2, 0), "spots")),
    "sofa": (sofa, Look((0, 360), (0.3, 0.7), (0.35, 0.75), (0, 0.3, 0.5, 30), "checks")),
    "train": (train, Look((0, 360), (0.6, 0.95), (0.45, 0.8), (50, 0.9, 0.9, 20), "none")),
    "tvmonitor": (tvmonitor, Look((0, 360), (0.0, 0.1), (0.05, 0.2), (200, 0.5, 0.8, 60), "none")),
}


def hsv_to_rgb(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    """One HSV colour (hue in degrees) -> float RGB [3] in 0..255."""
    h = (hue_deg % 360) / 60.0
    c = value * saturation
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return (np.array(rgb) + (value - c)) * 255.0


def class_colours(rng: np.random.Generator, look: Look) -> dict[int, np.ndarray]:
    """The four role colours of one object (float RGB [3] each)."""
    body = hsv_to_rgb(_u(rng, *look.hue), _u(rng, *look.saturation), _u(rng, *look.value))
    h2, s2, v2, jitter = look.second
    second = hsv_to_rgb(h2 + _u(rng, -jitter, jitter), np.clip(s2 + _u(rng, -0.1, 0.1), 0, 1),
                        np.clip(v2 + _u(rng, -0.1, 0.1), 0, 1))
    dark = np.full(3, _u(rng, 15, 60))
    light = hsv_to_rgb(_u(rng, 180, 220), _u(rng, 0.1, 0.4), _u(rng, 0.8, 1.0))
    return {BODY: body, SECOND: second, DARK: dark, LIGHT: light}


def pattern_field(rng: np.random.Generator, pattern: str, h: int, w: int) -> np.ndarray:
    """[h, w] multiplier in [0.45, 1.25] that puts ``pattern`` on a body of h x w pixels."""
    if pattern == "none":
        return np.ones((h, w), dtype=np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    period = max(3.0, _u(rng, 0.08, 0.2) * max(h, w))
    if pattern == "stripes":
        angle = _u(rng, 0, np.pi)
        wave = np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period)
        return np.where(wave > 0.3, 0.55, 1.0).astype(np.float32)
    if pattern == "checks":
        cells = ((xs // period).astype(int) + (ys // period).astype(int)) % 2
        return np.where(cells == 1, 0.7, 1.1).astype(np.float32)
    # spots (small, many) and patches (large, few): discs of another brightness
    count, radius = (12, 0.12) if pattern == "spots" else (4, 0.3)
    field = np.ones((h, w), dtype=np.float32)
    for _ in range(count):
        cx, cy, r = _u(rng, 0, w), _u(rng, 0, h), max(1.5, radius * _u(rng, 0.5, 1.2) * max(h, w))
        field[(xs - cx) ** 2 + (ys - cy) ** 2 <= r * r] = 0.45 if pattern == "spots" else 0.05
    return field


def render_figure(parts: list[Part], w: int, h: int, mirror: bool) -> np.ndarray:
    """Rasterise ``parts`` in a w x h box -> role map uint8 [h, w] (0 outside the figure)."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)

    def px(x: float, y: float) -> tuple[float, float]:
        x = 1.0 - x if mirror else x
        return x * (w - 1), y * (h - 1)

    for part in parts:
        kind, role = part[0], part[-1]
        if kind in ("ellipse", "rect", "ring"):
            (xa, ya), (xb, yb) = px(part[1], part[2]), px(part[3], part[4])
            box = [min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)]
            if kind == "rect":
                draw.rectangle(box, fill=role)
            elif kind == "ellipse":
                draw.ellipse(box, fill=role)
            else:
                draw.ellipse(box, outline=role, width=max(1, round(part[5] * min(w, h))))
        elif kind == "poly":
            draw.polygon([px(x, y) for x, y in part[1]], fill=role)
        else:  # line
            draw.line([px(x, y) for x, y in part[1]], fill=role, width=max(1, round(part[2] * min(w, h))))
    return np.asarray(canvas, dtype=np.uint8)


def draw_object(rng: np.random.Generator, class_name: str, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """One object of ``class_name`` in a w x h box -> (RGB float32 [h, w, 3], mask bool [h, w])."""
    shape_fn, look = FIGURES[class_name]
    roles = render_figure(shape_fn(rng), w, h, mirror=bool(rng.integers(0, 2)))
    colours = class_colours(rng, look)
    rgb = np.zeros((h, w, 3), dtype=np.float32)
    for role, colour in colours.items():
        rgb[roles == role] = colour
    body = roles == BODY
    if body.any():
        rgb[body] *= pattern_field(rng, look.pattern, h, w)[body][:, None]
    shade = np.linspace(1.08, 0.9, h, dtype=np.float32)[:, None, None]  # light from above
    return np.clip(rgb * shade, 0, 255), roles > 0
