"""Built-in synthetic detection data set: coloured shapes on a cluttered background.

Every image is generated on the fly from ``numpy.random.default_rng([seed, split_id, index])``,
so item ``i`` of a split is identical on every call, in every worker and in any order, and the
"train" / "val" / "test" splits are independent streams (no files, no download, no cache).

Classes (labels 1..5; 0 is background): circle, square, triangle, bar (rectangle with aspect
ratio between 1:3 and 1:2, horizontal or vertical) and ring (annulus). Colours are drawn
independently of the class, so a detector has to learn shape, not colour.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageChops, ImageDraw

from frcnn.data.transforms import to_float_chw_tensor

__all__ = ["CLASS_NAMES", "ShapesDataset", "render_shapes_image"]

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "bar", "ring")
SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

MAX_PAIRWISE_IOU = 0.3  # a placement with a larger IoU against a placed object is rejected
MAX_COVERAGE = 0.4  # ... as is one whose intersection covers more of the smaller box than this
PLACEMENT_TRIES = 20  # attempts per object before the object is dropped
COLOUR_TRIES = 12  # attempts to find an object colour that stands out
MIN_COLOUR_DISTANCE = 90.0  # RGB L2 distance from local background / overlapping objects
GRADIENT_GRID_HW = (9, 9)  # low-resolution grid upsampled into the smooth background
FINE_NOISE_AMPLITUDE = 6  # per-pixel grey noise in [-A, A] (low contrast)

Transform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------- geometry
def box_overlaps_one_to_many(box_xyxy: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Overlap of one box [4] with boxes [M, 4] -> (IoU [M], intersection / smaller area [M]).

    Continuous coordinates, area = (x2 - x1) * (y2 - y1).
    """
    if len(boxes_xyxy) == 0:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.float64)
    ix1 = np.maximum(box_xyxy[0], boxes_xyxy[:, 0])
    iy1 = np.maximum(box_xyxy[1], boxes_xyxy[:, 1])
    ix2 = np.minimum(box_xyxy[2], boxes_xyxy[:, 2])
    iy2 = np.minimum(box_xyxy[3], boxes_xyxy[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box_xyxy[2] - box_xyxy[0]) * (box_xyxy[3] - box_xyxy[1])
    areas = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
    return inter / (area + areas - inter), inter / np.minimum(area, areas)


def placement_is_allowed(proposal_xyxy: np.ndarray, placed_xyxy: np.ndarray) -> bool:
    """Accept a placement iff IoU <= MAX_PAIRWISE_IOU and the intersection covers at most
    MAX_COVERAGE of the smaller box, against every placed box (the second rule stops a
    small object from being hidden under, or entirely covering part of, a larger one).
    """
    iou, coverage = box_overlaps_one_to_many(proposal_xyxy, placed_xyxy)
    return bool(np.all(iou <= MAX_PAIRWISE_IOU) and np.all(coverage <= MAX_COVERAGE))


def boxes_intersect(box_xyxy: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
    """Whether one box [4] overlaps each of boxes [M, 4] with positive area -> bool [M]."""
    if len(boxes_xyxy) == 0:
        return np.zeros(0, dtype=bool)
    return (
        (np.minimum(box_xyxy[2], boxes_xyxy[:, 2]) > np.maximum(box_xyxy[0], boxes_xyxy[:, 0]))
        & (np.minimum(box_xyxy[3], boxes_xyxy[:, 3]) > np.maximum(box_xyxy[1], boxes_xyxy[:, 1]))
    )


# ----------------------------------------------------------------------------- background
def draw_background(rng: np.random.Generator, image_size_hw: tuple[int, int]) -> Image.Image:
    """Smooth random two-colour gradient + low-frequency colour blotches + fine grey noise.

    The gradient and blotches live on a 9x9 grid that is bilinearly upsampled (cheap);
    the fine noise is uniform in [-6, 6] grey levels per pixel.
    """
    h, w = image_size_hw
    gh, gw = GRADIENT_GRID_HW
    colour_a, colour_b = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys = np.linspace(0.0, 1.0, gh)[:, None]
    xs = np.linspace(0.0, 1.0, gw)[None, :]
    t = xs * np.cos(angle) + ys * np.sin(angle)  # [gh, gw]
    t = (t - t.min()) / (np.ptp(t) + 1e-9)
    grid = colour_a + t[..., None] * (colour_b - colour_a)  # [gh, gw, 3]
    grid = grid + rng.normal(0.0, 10.0, size=grid.shape)  # low-frequency blotches
    grid_u8 = np.clip(grid, 0, 255).astype(np.uint8)
    smooth = Image.fromarray(grid_u8).resize((w, h), Image.Resampling.BILINEAR)
    a = FINE_NOISE_AMPLITUDE
    noise_u8 = rng.integers(0, 2 * a + 1, size=(h, w), dtype=np.uint8)  # [H, W]
    noise = Image.fromarray(noise_u8).convert("RGB")
    return ImageChops.add(smooth, noise, scale=1.0, offset=-a)


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Uniform random RGB colour."""
    r, g, b = rng.integers(0, 256, size=3)
    return int(r), int(g), int(b)


def draw_clutter(rng: np.random.Generator, image: Image.Image, max_blob_size_px: int) -> None:
    """Draw 1-4 thin lines (1-2 px) and 1-5 small blobs (<= max_blob_size_px) that are not objects."""
    w, h = image.size
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        x1, x2 = rng.uniform(0, w, size=2)
        y1, y2 = rng.uniform(0, h, size=2)
        draw.line([(x1, y1), (x2, y2)], fill=random_colour(rng), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(1, 6))):
        bw, bh = rng.integers(2, max(3, max_blob_size_px) + 1, size=2)
        x0 = rng.uniform(0, max(1, w - bw))
        y0 = rng.uniform(0, max(1, h - bh))
        draw.ellipse([x0, y0, x0 + bw - 1, y0 + bh - 1], fill=random_colour(rng))


# ----------------------------------------------------------------------------- shapes
def shape_extent_wh(rng: np.random.Generator, class_name: str, size_px: int) -> tuple[int, int, dict]:
    """(width, height) of the shape's drawing box and its class-specific parameters.

    ``size_px`` is the longer side: circle / square / ring are size x size; a triangle is
    size wide and 0.8-1.0 size tall (rotated by a multiple of 90 degrees); a bar is size long
    and size * U(1/3, 1/2) thick, horizontal or vertical.
    """
    s = size_px
    if class_name in ("circle", "square"):
        return s, s, {}
    if class_name == "ring":
        thickness = max(3, round(s * rng.uniform(0.15, 0.25)))
        return s, s, {"thickness": thickness}
    if class_name == "triangle":
        height = max(3, round(s * rng.uniform(0.8, 1.0)))
        apex = rng.uniform(0.3, 0.7)  # apex position along the base, fraction of the base
        direction = int(rng.integers(0, 4))  # 0 up, 1 down, 2 left, 3 right
        w, h = (s, height) if direction < 2 else (height, s)
        return w, h, {"apex": apex, "direction": direction}
    if class_name == "bar":
        thickness = max(3, round(s * rng.uniform(1 / 3, 1 / 2)))
        horizontal = bool(rng.integers(0, 2))
        return (s, thickness, {}) if horizontal else (thickness, s, {})
    raise ValueError(f"unknown shape class {class_name!r}")


def triangle_vertices(w: int, h: int, apex: float, direction: int) -> list[tuple[float, float]]:
    """Vertices of a triangle filling a w x h box: base on one side, apex on the opposite one."""
    if direction == 0:  # apex up
        return [(apex * (w - 1), 0), (0, h - 1), (w - 1, h - 1)]
    if direction == 1:  # apex down
        return [(apex * (w - 1), h - 1), (0, 0), (w - 1, 0)]
    if direction == 2:  # apex left
        return [(0, apex * (h - 1)), (w - 1, 0), (w - 1, h - 1)]
    return [(w - 1, apex * (h - 1)), (0, 0), (0, h - 1)]  # apex right


def draw_shape_mask(class_name: str, w: int, h: int, params: dict) -> Image.Image:
    """Binary ('L', 0/255) mask of size w x h with the shape drawn inside it."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    full = [0, 0, w - 1, h - 1]
    if class_name in ("square", "bar"):
        draw.rectangle(full, fill=255)
    elif class_name == "circle":
        draw.ellipse(full, fill=255)
    elif class_name == "ring":
        t = params["thickness"]
        draw.ellipse(full, fill=255)
        draw.ellipse([t, t, w - 1 - t, h - 1 - t], fill=0)
    elif class_name == "triangle":
        draw.polygon(triangle_vertices(w, h, params["apex"], params["direction"]), fill=255)
    else:
        raise ValueError(f"unknown shape class {class_name!r}")
    return mask


def pick_colour(
    rng: np.random.Generator, avoid_colours: list[np.ndarray]
) -> tuple[int, int, int]:
    """Random colour at least MIN_COLOUR_DISTANCE (RGB L2) from every colour in avoid_colours.

    Tries COLOUR_TRIES times and otherwise keeps the candidate farthest from its nearest
    colour to avoid.
    """
    best, best_dist = random_colour(rng), -1.0
    for _ in range(COLOUR_TRIES):
        candidate = random_colour(rng)
        dist = min((float(np.linalg.norm(np.subtract(candidate, c))) for c in avoid_colours), default=np.inf)
        if dist >= MIN_COLOUR_DISTANCE:
            return candidate
        if dist > best_dist:
            best, best_dist = candidate, dist
    return best


def sample_size_px(rng: np.random.Generator, min_size_px: int, max_size_px: int) -> int:
    """Object size (longer side, px), log-uniform in [min_size_px, max_size_px]."""
    return int(round(np.exp(rng.uniform(np.log(min_size_px), np.log(max_size_px)))))


def render_shapes_image(
    rng: np.random.Generator,
    image_size_hw: tuple[int, int],
    num_objects: int,
    min_size_px: int,
    max_size_px: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image -> (image uint8 [H, W, 3], boxes_xyxy float32 [N, 4], labels int64 [N]).

    Objects are placed uniformly at random; a placement overlapping an already placed object
    too much (``placement_is_allowed``) is rejected and retried (PLACEMENT_TRIES times, then
    the object is dropped, so N <= num_objects). Each box is the tight box of the full drawn shape
    in continuous pixel coordinates (pixel i covers [i, i + 1)), so x2 = last column + 1.
    Later objects may partially occlude earlier ones.
    """
    h, w = image_size_hw
    max_size_px = max(min_size_px, min(max_size_px, h, w))
    image = draw_background(rng, image_size_hw)
    background = np.asarray(image, dtype=np.float32)  # [H, W, 3], before clutter and objects
    draw_clutter(rng, image, max_blob_size_px=max(3, min_size_px // 3))

    boxes: list[np.ndarray] = []
    labels: list[int] = []
    colours: list[np.ndarray] = []
    for _ in range(num_objects):
        class_index = int(rng.integers(0, len(CLASS_NAMES)))
        class_name = CLASS_NAMES[class_index]
        for _try in range(PLACEMENT_TRIES):
            size_px = sample_size_px(rng, min_size_px, max_size_px)
            sw, sh, params = shape_extent_wh(rng, class_name, size_px)
            x0 = int(rng.integers(0, w - sw + 1))
            y0 = int(rng.integers(0, h - sh + 1))
            proposal = np.array([x0, y0, x0 + sw, y0 + sh], dtype=np.float64)
            placed = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            if placement_is_allowed(proposal, placed):
                break
        else:
            continue  # no valid placement found: drop this object

        local_bg = background[y0 : y0 + sh, x0 : x0 + sw].reshape(-1, 3).mean(axis=0)
        overlapping = [colours[j] for j in np.flatnonzero(boxes_intersect(proposal, placed))]
        colour = pick_colour(rng, [local_bg, *overlapping])
        mask = draw_shape_mask(class_name, sw, sh, params)
        image.paste(colour, (x0, y0, x0 + sw, y0 + sh), mask=mask)
        left, top, right, bottom = mask.getbbox()  # tight, right/bottom exclusive
        boxes.append(np.array([x0 + left, y0 + top, x0 + right, y0 + bottom], dtype=np.float64))
        labels.append(class_index + 1)
        colours.append(np.asarray(colour, dtype=np.float64))

    image_u8 = np.array(image, dtype=np.uint8)  # [H, W, 3], writable copy
    boxes_xyxy = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)  # [N, 4]
    labels_arr = np.asarray(labels, dtype=np.int64).reshape(-1)  # [N]
    return image_u8, boxes_xyxy, labels_arr


# ----------------------------------------------------------------------------- dataset
class ShapesDataset(torch.utils.data.Dataset):
    """Deterministic synthetic shapes detection data set (see module docstring).

    ``__getitem__(i)`` -> ``(image float32 [3, H, W] in [0, 1], target)`` with target keys
    ``boxes`` float32 [N, 4] (x1, y1, x2, y2, continuous px), ``labels`` int64 [N] in 1..C,
    ``image_id`` int (= i), ``difficult`` bool [N] (all False), ``orig_size`` (H, W) before
    the transform. With ``transform`` given, the image/boxes/labels are whatever it returns
    (e.g. rescaled and flipped by ``DetectionTransform``).
    """

    class_names: tuple[str, ...] = CLASS_NAMES

    def __init__(
        self,
        split: str = "train",
        num_images: int = 200,
        image_size: tuple[int, int] = (256, 256),
        min_objects: int = 1,
        max_objects: int = 4,
        min_size_px: int = 24,
        max_size_px: int = 112,
        seed: int = 0,
        transform: Transform | None = None,
    ):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        if not 0 <= min_objects <= max_objects:
            raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
        if not 3 <= min_size_px <= max_size_px:
            raise ValueError(f"need 3 <= min_size_px <= max_size_px, got {min_size_px}, {max_size_px}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.split = split
        self.num_images = int(num_images)
        self.image_size_hw = (int(image_size[0]), int(image_size[1]))
        if min(self.image_size_hw) < min_size_px:
            raise ValueError(f"image_size {self.image_size_hw} is smaller than min_size_px={min_size_px}")
        self.min_objects = int(min_objects)
        self.max_objects = int(max_objects)
        self.min_size_px = int(min_size_px)
        self.max_size_px = int(max_size_px)
        self.seed = int(seed)
        self.transform = transform

    @property
    def num_classes(self) -> int:
        """Number of foreground classes C (labels are 1..C)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return self.num_images

    def _check_index(self, index: int) -> int:
        """Map a (possibly negative) index into [0, len); IndexError outside."""
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        return int(index) % self.num_images

    def _rng(self, index: int) -> np.random.Generator:
        """Per-image RNG from (seed, split, index): independent of call order and workers."""
        return np.random.default_rng([self.seed, SPLIT_IDS[self.split], index])

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Untransformed item -> (image uint8 [H, W, 3], boxes_xyxy float32 [N, 4], labels int64 [N])."""
        index = self._check_index(index)
        rng = self._rng(index)
        num_objects = int(rng.integers(self.min_objects, self.max_objects + 1))
        return render_shapes_image(rng, self.image_size_hw, num_objects, self.min_size_px, self.max_size_px)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        index = self._check_index(index)
        image_u8, boxes_xyxy, labels = self.raw(index)
        if self.transform is not None:
            image, boxes, labels_t = self.transform(image_u8, boxes_xyxy, labels)
        else:
            image = to_float_chw_tensor(image_u8)  # [3, H, W]
            boxes, labels_t = torch.from_numpy(boxes_xyxy), torch.from_numpy(labels)
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),  # [N, 4]
            "labels": torch.as_tensor(labels_t, dtype=torch.int64).reshape(-1),  # [N]
            "image_id": index,
            "difficult": torch.zeros(len(labels_t), dtype=torch.bool),  # [N]
            "orig_size": self.image_size_hw,
        }
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, num_images={self.num_images}, "
            f"image_size={self.image_size_hw}, objects={self.min_objects}..{self.max_objects}, "
            f"size_px={self.min_size_px}..{self.max_size_px}, seed={self.seed})"
        )
