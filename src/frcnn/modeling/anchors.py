"""Anchors (paper §3.1.1) and their labelling against ground truth (§3.1.2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from frcnn.modeling.sampling import IGNORE, NEGATIVE, POSITIVE


def reference_anchors(scales_px: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """The k = len(scales) * len(ratios) reference boxes centred on (0, 0).

    Paper §3.1.1: "By default we use 3 scales and 3 aspect ratios, yielding k = 9 anchors at
    each sliding position", with box areas 128², 256², 512² and aspect ratios 1:1, 1:2, 2:1.
    A scale s is the side of the square box of the same area, a ratio r = h / w, so
    w = s / sqrt(r), h = s * sqrt(r) and the area stays s².

    Returns [k, 4] (x1, y1, x2, y2), ordered ratio-major: anchor index = ratio_i * S + scale_j.
    """
    scales = torch.as_tensor(list(scales_px), dtype=torch.float32)
    ratios = torch.as_tensor(list(ratios), dtype=torch.float32)
    if scales.numel() == 0 or ratios.numel() == 0:
        raise ValueError("rpn.anchor_scales and rpn.anchor_ratios must each hold at least one value")
    if (scales <= 0).any() or (ratios <= 0).any():
        raise ValueError(f"anchor scales and ratios must be > 0, got scales={scales.tolist()} ratios={ratios.tolist()}")
    sqrt_ratios = ratios.sqrt()[:, None]  # [R, 1]
    widths = (scales[None, :] / sqrt_ratios).reshape(-1)  # [R*S]
    heights = (scales[None, :] * sqrt_ratios).reshape(-1)
    return torch.stack((-widths / 2, -heights / 2, widths / 2, heights / 2), dim=1)


def grid_anchors(reference: Tensor, feature_hw: tuple[int, int], stride: int) -> Tensor:
    """Place the k reference anchors at every feature-map location (the sliding window's centre).

    Location (i, j) maps to image point ((j + 0.5) * stride, (i + 0.5) * stride).
    Returns [H * W * k, 4], location-major: index = (i * W + j) * k + anchor.
    """
    height, width = feature_hw
    shifts_x = (torch.arange(width, dtype=torch.float32, device=reference.device) + 0.5) * stride
    shifts_y = (torch.arange(height, dtype=torch.float32, device=reference.device) + 0.5) * stride
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)  # [HW, 1, 4]
    return (shifts + reference.reshape(1, -1, 4)).reshape(-1, 4)


class AnchorGenerator(torch.nn.Module):
    """Anchors for a feature map, cached per (feature size, device): they depend on nothing else."""

    def __init__(self, scales_px: Sequence[float] = (128, 256, 512), ratios: Sequence[float] = (0.5, 1.0, 2.0), stride: int = 16):
        super().__init__()
        self.scales_px = tuple(float(s) for s in scales_px)
        self.ratios = tuple(float(r) for r in ratios)
        self.stride = int(stride)
        self.register_buffer("reference", reference_anchors(self.scales_px, self.ratios), persistent=False)
        self._cache: dict[tuple[int, int, str], Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return self.reference.shape[0]

    def forward(self, feature_hw: tuple[int, int]) -> Tensor:  # [H*W*k, 4]
        key = (int(feature_hw[0]), int(feature_hw[1]), str(self.reference.device))
        if key not in self._cache:
            self._cache[key] = grid_anchors(self.reference, key[:2], self.stride)
        return self._cache[key]


def inside_image(anchors_xyxy: Tensor, image_hw: tuple[int, int], allowed_border_px: float = 0.0) -> Tensor:
    """Mask of anchors lying fully inside the image (paper §3.3: cross-boundary anchors are
    ignored during training). Returns bool [A]."""
    height, width = image_hw
    return (
        (anchors_xyxy[:, 0] >= -allowed_border_px)
        & (anchors_xyxy[:, 1] >= -allowed_border_px)
        & (anchors_xyxy[:, 2] <= width + allowed_border_px)
        & (anchors_xyxy[:, 3] <= height + allowed_border_px)
    )


def centred_on_own_area(anchors_xyxy: Tensor, image_sizes: Sequence[tuple[int, int]], stride: int) -> Tensor:
    """Which anchors of a padded batch belong to each picture: those centred on the picture's own area,
    (H_i, W_i) padded alone to a multiple of ``stride``, not on the padding a larger picture of the batch
    adds. These are the anchor positions a pass of the picture alone has (its feature map has
    ceil(H_i / stride) x ceil(W_i / stride) positions): the sliding window of position (y, x) starts on
    the picture, y * stride < H_i and x * stride < W_i. The authors run one picture per pass and never
    have other anchors (an anchor of the picture's last row or column may be centred up to stride / 2
    beyond its edge, as theirs are).

    anchors_xyxy [A, 4] (:func:`grid_anchors`), image_sizes [(H_i, W_i)] * B -> bool [B, A].
    """
    own_hw = [(math.ceil(h / stride) * stride, math.ceil(w / stride) * stride) for h, w in image_sizes]
    limits = anchors_xyxy.new_tensor([[w, h] for h, w in own_hw]).reshape(-1, 2)  # [B, 2] (x, y)
    centres = (anchors_xyxy[:, :2] + anchors_xyxy[:, 2:]) / 2  # [A, 2]
    return (centres[None, :, :] < limits[:, None, :]).all(dim=-1)


def label_anchors(
    anchors_xyxy: Tensor, gt_boxes_xyxy: Tensor, fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3, valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Binary class labels of anchors (paper §3.1.2).

    Positive: (i) the anchor(s) with the highest IoU for a ground-truth box, or (ii) an anchor
    with IoU > 0.7 with any ground-truth box. Negative: a non-positive anchor whose IoU is
    lower than 0.3 for all ground-truth boxes. The rest (and anchors not ``valid``, e.g.
    crossing the image boundary) are ignored (-1).

    anchors_xyxy: [A, 4], gt_boxes_xyxy: [G, 4], valid: bool [A] or None.
    Returns (labels int64 [A] in {1, 0, -1}, matched_gt_idx int64 [A]: index of the
    highest-IoU ground truth per anchor, 0 when G == 0).
    """
    num_anchors = anchors_xyxy.shape[0]
    labels = torch.full((num_anchors,), IGNORE, dtype=torch.int64, device=anchors_xyxy.device)
    if gt_boxes_xyxy.numel() == 0:
        labels.fill_(NEGATIVE)
        if valid is not None:
            labels[~valid] = IGNORE
        return labels, torch.zeros(num_anchors, dtype=torch.int64, device=anchors_xyxy.device)
    iou = box_iou(gt_boxes_xyxy, anchors_xyxy)  # [G, A]
    if valid is not None:
        iou = torch.where(valid[None, :], iou, torch.full_like(iou, -1.0))
    max_iou, matched_gt_idx = iou.max(dim=0)  # [A]
    labels[(max_iou >= 0) & (max_iou < bg_iou_thresh)] = NEGATIVE
    labels[max_iou > fg_iou_thresh] = POSITIVE
    # (i) every anchor tied for the best IoU of some ground truth is positive (if that IoU > 0)
    best_iou_per_gt = iou.max(dim=1, keepdim=True).values  # [G, 1]
    is_best = (iou == best_iou_per_gt) & (best_iou_per_gt > 0)
    labels[is_best.any(dim=0)] = POSITIVE
    return labels, matched_gt_idx
