"""Detection augmentation (paper §3.3 / Fast R-CNN §2.3 scale rule + horizontal flip).

Everything geometric goes through albumentations so that the image and its boxes are
transformed by one code path:

* ``PaperRescale``: one uniform factor per image so that the *shorter* side equals
  ``scale`` unless the *longer* side would then exceed ``max_size``, in which case the
  longer side equals ``max_size``. Images may be up- or down-scaled. (The built-ins do
  not implement this rule: ``A.SmallestMaxSize`` ignores the cap and ``A.LongestMaxSize``
  always rescales the longer side to ``max_size``, i.e. it also *upscales* images whose
  longer side is already within the cap, so chaining the two breaks the rule.)
* ``A.HorizontalFlip``: x1' = W - x2, x2' = W - x1 on the boxes.

The output image is float32 [3, H, W] in [0, 1]; mean/std normalisation is the model's job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.core.transforms_interface import BaseTransformInitSchema
from albumentations.core.type_definitions import Targets

from frcnn.data.checks import clip_and_check_boxes
from frcnn.data.resumable import item_seed

__all__ = [
    "DetectionTransform",
    "PaperRescale",
    "collate_detection",
    "image_scales",
    "paper_scale_factor",
    "resize_factor",
    "to_float_chw_tensor",
]


def paper_scale_factor(h: int, w: int, scale: int, max_size: int) -> float:
    """Uniform resize factor of the Faster R-CNN / Fast R-CNN scale rule.

    factor = scale / min(h, w); if round(factor * max(h, w)) > max_size then
    factor = max_size / max(h, w). (The rounding matches the reference
    implementation, which compares the *rounded* longer side with the cap.)

    Examples: (375, 500), 600, 1000 -> 600/375 = 1.6 (image becomes 600 x 800);
    (500, 1500), 600, 1000 -> 1000/1500 (image becomes 333 x 1000).
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got (h, w) = ({h}, {w})")
    short_side_px, long_side_px = min(h, w), max(h, w)
    factor = float(scale) / float(short_side_px)
    if round(factor * long_side_px) > max_size:
        factor = float(max_size) / float(long_side_px)
    return factor


def scaled_size_hw(h: int, w: int, factor: float) -> tuple[int, int]:
    """Output (H, W) after a uniform resize by ``factor`` (rounded, at least 1 px)."""
    return max(1, round(h * factor)), max(1, round(w * factor))


def resize_factor(input_hw: Sequence[int], orig_hw: Sequence[int]) -> float:
    """The uniform factor (network-input px per original px) that turned an image of ``orig_hw``
    into one of ``input_hw``, read back from the sizes: the ratio of the longer sides, whose
    rounding error is the smaller (800 / 500 = 1.6 for a 375 x 500 VOC image at scale 600)."""
    long_side = 0 if orig_hw[0] >= orig_hw[1] else 1
    return float(input_hw[long_side]) / float(orig_hw[long_side])


def image_scales(images: Sequence[torch.Tensor], targets: Sequence[Mapping[str, Any]]) -> list[float]:
    """Each image's :func:`resize_factor` from its target's ``orig_size`` (H, W); 1 for a target
    without one (an image that was not rescaled). images: [3, H_i, W_i] each."""
    return [resize_factor(image.shape[-2:], target["orig_size"]) if "orig_size" in target else 1.0
            for image, target in zip(images, targets)]


class PaperRescale(A.DualTransform):
    """Albumentations transform implementing ``paper_scale_factor`` for one image.

    ``scales``: candidate shorter-side lengths (px); one is drawn uniformly per call
    (multi-scale training). Pass a single scale for single-scale training / testing.
    Boxes are stored normalised inside albumentations, hence scale invariant; they are
    denormalised with the resized image's (H, W), so they stay aligned with its pixels.
    """

    _targets = (Targets.IMAGE, Targets.MASK, Targets.BBOXES)

    class InitSchema(BaseTransformInitSchema):
        scales: Sequence[int]
        max_size: int

    def __init__(self, scales: Sequence[int] = (600,), max_size: int = 1000, p: float = 1.0):
        super().__init__(p=p)
        if len(scales) == 0:
            raise ValueError("scales must contain at least one shorter-side length")
        self.scales = tuple(int(s) for s in scales)
        self.max_size = int(max_size)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw the scale for this image and return the uniform resize factor."""
        h, w = params["shape"][:2]
        scale = self.scales[0] if len(self.scales) == 1 else self.py_random.choice(self.scales)
        return {"factor": paper_scale_factor(h, w, scale, self.max_size)}

    def apply(self, img: np.ndarray, factor: float, **params: Any) -> np.ndarray:
        # img: [H, W, C] -> [round(H*f), round(W*f), C]
        new_h, new_w = scaled_size_hw(img.shape[0], img.shape[1], factor)
        interpolation = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_LINEAR
        out = cv2.resize(img, (new_w, new_h), interpolation=interpolation)
        if img.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing singleton channel
            out = out[..., None]
        return out

    def apply_to_mask(self, mask: np.ndarray, factor: float, **params: Any) -> np.ndarray:
        new_h, new_w = scaled_size_hw(mask.shape[0], mask.shape[1], factor)
        return cv2.resize(mask, (new_w, new_h), interpolation=cv2.INTER_NEAREST)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        # normalised [N, 4+] boxes are invariant under a uniform resize
        return bboxes

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scales", "max_size")


def to_float_chw_tensor(image_uint8_hwc: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] numpy -> float32 [3, H, W] tensor in [0, 1] (contiguous)."""
    chw = torch.from_numpy(np.ascontiguousarray(image_uint8_hwc)).permute(2, 0, 1)
    return chw.to(torch.float32).div_(255.0).contiguous()


class DetectionTransform:
    """Paper scale rule (+ random horizontal flip when training) for one detection sample.

    Training (``train=True``): the shorter-side scale is drawn uniformly from ``scales``
    per image, then ``augment`` (the ``augment`` config group's albumentations transforms,
    frcnn.data.augment) runs, then the image is flipped horizontally with probability ``hflip_prob``.
    A picture whose ground truth ``augment`` removes entirely (a crop or an affine zoom that leaves
    every box out) is drawn again without ``augment`` (rescale and flip only): a picture with
    objects never becomes a negative by accident.
    Evaluation (``train=False``): ``scales[0]`` only, never flipped, no ``augment`` (deterministic).

    Called as ``transform(image_uint8_hwc, boxes_xyxy [N, 4], labels [N])`` and returns
    ``(image float32 [3, H', W'] in [0, 1], boxes_xyxy float32 [N, 4], labels int64 [N])``.
    Boxes are continuous pixel coordinates (x1, y1, x2, y2) in the output image.

    Randomness: albumentations keeps its own RNG (``seed``; None = fresh random state).
    Inside a DataLoader worker the RNG is re-seeded from the worker's torch seed, so
    workers do not replay identical augmentation streams.
    """

    def __init__(
        self,
        scales: Sequence[int] = (600,),
        max_size: int = 1000,
        hflip_prob: float = 0.5,
        train: bool = True,
        seed: int | None = None,
        augment: Sequence[A.BasicTransform] = (),
    ):
        if len(scales) == 0:
            raise ValueError("scales must contain at least one shorter-side length")
        self.scales = tuple(int(s) for s in scales)
        self.max_size = int(max_size)
        self.hflip_prob = float(hflip_prob)
        self.train = bool(train)
        self.seed = seed
        self.augment = tuple(augment) if train else ()
        self._worker_seed: int | None = None  # torch worker seed the RNG was last set from
        self.pipeline = self._build_pipeline(self.augment)
        self.paper_pipeline = self._build_pipeline(()) if self.augment else self.pipeline
        if seed is not None:
            self._set_seed(int(seed))

    def _build_pipeline(self, augment: Sequence[A.BasicTransform]) -> A.Compose:
        """Rescale (random scale if training) -> ``augment`` -> optional flip, with pascal_voc boxes."""
        scales = self.scales if self.train else self.scales[:1]
        ops: list[A.BasicTransform] = [PaperRescale(scales=scales, max_size=self.max_size, p=1.0), *augment]
        if self.train and self.hflip_prob > 0:
            ops.append(A.HorizontalFlip(p=self.hflip_prob))
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True)
        return A.Compose(ops, bbox_params=bbox_params, seed=self.seed)

    def _reseed_if_new_worker(self) -> None:
        """Give each DataLoader worker (and each epoch of non-persistent workers) its own RNG."""
        info = torch.utils.data.get_worker_info()
        if info is None or info.seed == self._worker_seed:
            return
        self._worker_seed = info.seed
        self._set_seed(item_seed([info.seed] + ([] if self.seed is None else [int(self.seed)])))

    def _set_seed(self, seed: int) -> None:
        """Seed the pipelines. albumentations' Compose gives every transform a generator with the same seed, so
        their draws coincide (a vertical flip exactly when the horizontal one, a scale tied to the flip): each
        transform but the horizontal flip gets its own seed derived from ``seed`` and its position; the flip keeps
        ``seed`` itself, so runs of the paper's pipeline draw the flips they always drew."""
        for pipeline in (self.pipeline, self.paper_pipeline)[: 1 if self.paper_pipeline is self.pipeline else 2]:
            pipeline.set_random_seed(seed)
            for position, op in enumerate(pipeline.transforms):
                if not isinstance(op, A.HorizontalFlip):
                    op.set_random_seed(item_seed([seed, position]))

    def reseed(self, entropy: Sequence[int]) -> None:
        """Seed the augmentation RNG from ``entropy`` (e.g. [seed, step, index]): the next item's
        random scale and flip then depend on that key alone (exact resume, see data/resumable.py)."""
        info = torch.utils.data.get_worker_info()
        self._worker_seed = None if info is None else info.seed  # keep the per-worker reseed from overriding it
        self._set_seed(item_seed(entropy))

    def __call__(
        self, image_uint8_hwc: np.ndarray, boxes_xyxy: np.ndarray, labels: np.ndarray, source: str = "<image>"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes follow :func:`frcnn.data.checks.clip_and_check_boxes` (clip; degenerate
        ground truth is an error naming ``source``), then rescale and flip with the image."""
        self._reseed_if_new_worker()
        boxes_in, labels_in = clip_and_check_boxes(boxes_xyxy, labels, image_uint8_hwc.shape[:2], source)  # [N, 4], [N]
        out = self.pipeline(image=image_uint8_hwc, bboxes=boxes_in, labels=labels_in)
        if self.augment and (labels_in > 0).any() and not (np.asarray(out["labels"]) > 0).any():
            out = self.paper_pipeline(image=image_uint8_hwc, bboxes=boxes_in, labels=labels_in)  # class doc
        boxes_out = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)  # [N', 4]
        labels_out = np.asarray(out["labels"], dtype=np.int64).reshape(-1)  # [N']
        return (
            to_float_chw_tensor(out["image"]),
            torch.from_numpy(boxes_out),
            torch.from_numpy(labels_out),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(scales={self.scales}, max_size={self.max_size}, "
            f"hflip_prob={self.hflip_prob}, train={self.train}, seed={self.seed}, "
            f"augment={[type(t).__name__ for t in self.augment]})"
        )


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """[(image [3, H_i, W_i], target_i), ...] -> ([image_i, ...], [target_i, ...]); no stacking."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
