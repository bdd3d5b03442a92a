"""`Detector`: a trained detector as a Python callable (images in, boxes in their own pixels out).

    from frcnn import Detector
    detector = Detector.from_checkpoint("<run dir>/final/model.pt", device="cpu")
    result = detector("photo.jpg")                    # or a PIL image, an HWC uint8 array, a CHW float tensor
    for box, score, name in zip(result.boxes, result.scores, result.class_names): ...
    results = detector([img_a, img_b, img_c])         # a list in, a list out (same order)

Each image is rescaled by the paper's test rule (§3.3: shorter side = the scale the checkpoint was
trained at, longer side <= max_size) with the same resize as training and ``scripts/eval.py``
(:class:`frcnn.data.transforms.PaperRescale`), the network runs under ``torch.inference_mode``, and
the boxes are divided by the per-axis factors actually applied, so they are in the input image's
original pixels.

Batching never changes which boxes are found: only images whose network-input sizes are equal share
a batch, so no image is padded differently than it would be alone (the batch-invariance rule of the
paper presets' issue). What a batch does change is the float rounding of the convolutions (oneDNN
blocks a batch of 3 differently from a batch of 1; features differ by ~1e-7, scores by ~3e-8), so the
default ``batch_size=1`` gives every image exactly the result it gets alone, and a larger one (for a
GPU) the same detections up to that rounding (``tests/test_predictor.py``: batch_size 1 against 4 on
images of mixed sizes).

``tile=400, overlap=0.2``: a large image is cut into overlapping tiles of 400 original px, each detected at
the training magnification, ``batch_size`` tiles per forward pass, and the tiles' boxes merged by class-wise
NMS (:mod:`frcnn.inference.tiling` states the rules).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from frcnn.data.checks import BadImageError
from frcnn.data.transforms import PaperRescale, paper_scale_factor, resize_factor, to_float_chw_tensor
from frcnn.inference.detector_file import PAPER_TEST_SCALE, checkpoint_input_scale, load_detector
from frcnn.inference.svd import compress_roi_head
from frcnn.inference.tiling import (
    DEFAULT_OVERLAP,
    check_tiling,
    image_detection_cap,
    merge_tiles,
    no_cap_per_image,
    roi_heads,
    shift_boxes,
    tile_resize_factor,
    tile_windows,
)

log = logging.getLogger(__name__)

ImageInput = Union[str, Path, Image.Image, np.ndarray, Tensor]
IMAGES_IN_MEMORY = 32  # a long list is decoded and rescaled this many images at a time


@dataclass(frozen=True)
class Detections:
    """One image's detections, in that image's original pixels.

    boxes [D, 4] float32 (x1, y1, x2, y2), continuous coordinates; scores [D] float32 (softmax
    probability of the class), decreasing within a class; labels [D] int64 in 1..C;
    class_names: the D labels' names; image_size: the input's (height, width) in px.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_names: list[str]
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.scores.numel())

    def above(self, score_thresh: float) -> Detections:
        """The detections with score >= score_thresh."""
        keep = self.scores >= score_thresh
        names = [name for name, kept in zip(self.class_names, keep.tolist()) if kept]
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], names, self.image_size)


def read_image(path: str | Path) -> tuple[Image.Image, str | None]:
    """Decode a file completely -> (RGB image, PIL format name); BadImageError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()  # Image.open is lazy: decode now so a truncated file fails here
            return image.convert("RGB"), image.format
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImageError(f"{path}: cannot read the image ({exc.__class__.__name__}: {exc})") from exc


def as_hwc_array(image: ImageInput) -> np.ndarray:
    """Any accepted input -> an RGB [H, W, 3] array: uint8 for files, PIL images and uint8 arrays;
    float32 in [0, 1] for CHW float tensors (the range training images have after ``/ 255``)."""
    if isinstance(image, (str, Path)):
        image = read_image(image)[0]
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a numpy image must be uint8 [H, W, 3] (RGB), got {image.dtype} {list(image.shape)}")
        return image
    if isinstance(image, Tensor):
        if not image.is_floating_point() or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"a tensor image must be float [3, H, W] (RGB) in [0, 1], got {image.dtype} "
                             f"{list(image.shape)}; an HWC uint8 image goes in as a numpy array")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"a tensor image must hold values in [0, 1] (uint8 / 255), got [{low:g}, {high:g}]")
        return image.detach().to("cpu", torch.float32).permute(1, 2, 0).contiguous().numpy()
    raise TypeError(f"cannot detect on a {type(image).__name__}: pass a path, a PIL image, an HWC uint8 numpy "
                    "array or a CHW float tensor in [0, 1] (or a list of them)")


def network_input(image_hwc: np.ndarray, scale: int, max_size: int, factor: float | None = None) -> Tensor:
    """[H, W, 3] -> float32 [3, H', W'] in [0, 1], resized by the paper's rule (§3.3) with
    training's own resize (:class:`PaperRescale`: area for shrinking, bilinear for enlarging);
    ``factor``: resize by this factor instead of the rule's own (the tiles of a tiled image)."""
    height, width = image_hwc.shape[:2]
    if factor is None:
        factor = paper_scale_factor(height, width, scale, max_size)
    resized = PaperRescale(scales=(scale,), max_size=max_size).apply(image_hwc, factor=factor)
    if resized.dtype == np.uint8:
        return to_float_chw_tensor(resized)
    return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).contiguous()


def boxes_to_original_pixels(boxes: Tensor, network_hw: tuple[int, int], original_hw: tuple[int, int]) -> Tensor:
    """[D, 4] boxes in network-input pixels -> original pixels: divided by the per-axis factors
    actually applied (rounded output size / input size), clipped to the image."""
    (net_h, net_w), (height, width) = network_hw, original_hw
    factors = boxes.new_tensor([width / net_w, height / net_h, width / net_w, height / net_h])
    boxes = boxes.reshape(-1, 4) * factors
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def same_size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped by equal size, each group cut into batches of <= batch_size, in input order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    return [members[start:start + batch_size] for members in groups.values()
            for start in range(0, len(members), batch_size)]


class Detector:
    """A detector (``FasterRCNN`` or ``UnsharedFasterRCNN``) with its class names and test scale.

    ``scale`` / ``max_size``: the shorter side and the cap on the longer side the network sees
    (:meth:`from_checkpoint` takes the checkpoint's training values). ``score_thresh``: keep
    detections with score >= this (the model itself drops scores <= its ``roi_head.score_thresh``,
    0.05). ``batch_size``: images (tiles) per forward pass (same-size images only; the detections do not
    depend on it, their values only up to the convolutions' float rounding: module docstring).
    ``tile``: detect each image by tiles of this many original px overlapping by ``overlap`` of a tile
    (:mod:`frcnn.inference.tiling`); None: the whole image at once.
    """

    def __init__(self, model: torch.nn.Module, class_names: Sequence[str], scale: int = PAPER_TEST_SCALE[0],
                 max_size: int = PAPER_TEST_SCALE[1], device: str | torch.device = "cpu",
                 score_thresh: float = 0.0, batch_size: int = 1, tile: int | None = None,
                 overlap: float = DEFAULT_OVERLAP):
        if not 0.0 <= score_thresh <= 1.0:
            raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(scale) < 1 or int(max_size) < int(scale):
            raise ValueError(f"need 1 <= scale ({scale}) <= max_size ({max_size})")
        check_tiling(tile, overlap)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.class_names = [str(name) for name in class_names]
        self.scale, self.max_size = int(scale), int(max_size)
        self.score_thresh = float(score_thresh)
        self.batch_size = int(batch_size)
        self.tile = None if tile is None else int(tile)
        self.overlap = float(overlap)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", scale: int | None = None,
                        max_size: int | None = None, svd_rank: int | Sequence[int] | None = None,
                        **options) -> Detector:
        """Load a detector file (``<run dir>/final/model.pt``) with the restricted reader
        (:func:`frcnn.inference.detector_file.load_detector`); the test scale defaults to the one it was trained
        at (:func:`frcnn.inference.detector_file.checkpoint_input_scale`), else the paper's 600 / 1000.
        ``svd_rank``: compress the RoI head's fc layers by truncated SVD (:mod:`frcnn.inference.svd`, Fast
        R-CNN §3.1), e.g. ``[1024, 256]`` for VGG-16's fc6 / fc7."""
        resolve_device(device)  # before reading a large file
        model, class_names = load_detector(path)
        if svd_rank:
            for line in compress_roi_head(model, svd_rank):
                log.info("truncated SVD: %s", line)
        trained_scale, trained_max = checkpoint_input_scale(path) or PAPER_TEST_SCALE
        return cls(model, class_names, scale or trained_scale, max_size or trained_max, device, **options)

    def network_input(self, image: ImageInput) -> tuple[Tensor, tuple[int, int]]:
        """-> (float32 [3, H', W'] in [0, 1] as the network sees it, original (H, W))."""
        pixels = as_hwc_array(image)
        return network_input(pixels, self.scale, self.max_size), (int(pixels.shape[0]), int(pixels.shape[1]))

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> Detections | list[Detections]:
        """One image -> :class:`Detections`; a list -> a list of them, in the same order. The network
        runs under ``torch.inference_mode``; the returned tensors are ordinary ones (copied out)."""
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        if self.tile is not None:
            return self._detect_tiled(images[0]) if single else [self._detect_tiled(image) for image in images]
        results: list[Detections] = []
        chunk = max(IMAGES_IN_MEMORY, self.batch_size)  # network-scale copies held at once
        for start in range(0, len(images), chunk):
            results += self._detect_chunk(images[start:start + chunk])
        return results[0] if single else results

    def _forward(self, inputs: Sequence[tuple[Tensor, tuple[int, int]]]) -> list[dict[str, Tensor]]:
        """(network-scale image [3, H', W'], original (H, W)) pairs -> the model's outputs, same-size
        images ``batch_size`` at a time, boxes in network-input pixels."""
        outputs: list[dict[str, Tensor]] = [{}] * len(inputs)
        sizes = [tuple(tensor.shape[-2:]) for tensor, _ in inputs]
        with torch.inference_mode():
            for batch in same_size_batches(sizes, self.batch_size):
                batch_images = [inputs[i][0].to(self.device) for i in batch]
                # rpn.min_size is in original-image pixels (§3.3 / the authors' proposal layer): pass the factors
                factors = [resize_factor(sizes[i], inputs[i][1]) for i in batch]
                for index, output in zip(batch, self.model(batch_images, image_scales=factors)):
                    outputs[index] = output
        return outputs

    def _detect_chunk(self, images: Sequence[ImageInput]) -> list[Detections]:
        inputs = [self.network_input(image) for image in images]
        outputs = self._forward(inputs)
        return [self._in_original_pixels(output, tuple(tensor.shape[-2:]), original_hw)
                for output, (tensor, original_hw) in zip(outputs, inputs)]

    def _detect_tiled(self, image: ImageInput) -> Detections:
        """One image by tiles (:mod:`frcnn.inference.tiling`): every tile at the training magnification, no
        cap per tile, class-wise NMS across tiles, a cap that scales with the image's area."""
        pixels = as_hwc_array(image)
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        windows = tile_windows(height, width, self.tile, self.overlap)
        factor = tile_resize_factor(self.tile, self.scale, self.max_size)
        boxes, scores, labels = [], [], []
        chunk = max(IMAGES_IN_MEMORY, self.batch_size)  # network-scale tiles held at once
        with no_cap_per_image(self.model):
            for start in range(0, len(windows), chunk):
                some = windows[start:start + chunk]
                crops = [pixels[y1:y2, x1:x2] for x1, y1, x2, y2 in some]
                inputs = [(network_input(crop, self.scale, self.max_size, factor), crop.shape[:2]) for crop in crops]
                for window, output, (tensor, crop_hw) in zip(some, self._forward(inputs), inputs):
                    tile_boxes = boxes_to_original_pixels(output["boxes"].float().cpu(), tensor.shape[-2:], crop_hw)
                    boxes.append(shift_boxes(tile_boxes, window))
                    scores.append(output["scores"].float().cpu())
                    labels.append(output["labels"].cpu())
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        head = roi_heads(self.model)[-1]
        cap = image_detection_cap(height, width, self.tile, head.detections_per_image)
        keep = merge_tiles(boxes, scores, labels, float(head.nms_thresh), cap)
        return self._found(boxes[keep], scores[keep], labels[keep], (height, width))

    def _in_original_pixels(self, output: dict[str, Tensor], network_hw, original_hw) -> Detections:
        boxes = boxes_to_original_pixels(output["boxes"].float().cpu().clone(), network_hw, original_hw)
        return self._found(boxes, output["scores"].float().cpu().clone(), output["labels"].cpu().clone(),
                           tuple(original_hw))

    def _found(self, boxes: Tensor, scores: Tensor, labels: Tensor, original_hw: tuple[int, int]) -> Detections:
        names = [self.class_names[label - 1] for label in labels.tolist()]
        found = Detections(boxes, scores, labels, names, tuple(original_hw))
        return found.above(self.score_thresh) if self.score_thresh > 0 else found


def resolve_device(name: str | torch.device) -> torch.device:
    """A device name -> torch.device; a CUDA device on a machine without CUDA is an error."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={name!r} is not a torch device (e.g. cpu, cuda, cuda:1): {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: CUDA is not available on this machine; use device='cpu'")
    return device
