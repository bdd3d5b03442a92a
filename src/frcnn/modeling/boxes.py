"""Box parameterisation of the paper (eq. 2) on top of torchvision.ops.

Convention everywhere in frcnn: float boxes (x1, y1, x2, y2) in input-image pixels,
continuous coordinates (width = x2 - x1, no "+1").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# exp(t_w) must never overflow: clamp t_w, t_h at log(1000 / 16), as Detectron (BBOX_XFORM_CLIP) and
# torchvision's BoxCoder (bbox_xform_clip) do. The authors' py-faster-rcnn has no clamp
# (lib/fast_rcnn/bbox_transform.py: np.exp(dw) unbounded); only t_w, t_h above 4.135 (a side grown > 62.5x) change.
DEFAULT_MAX_LOG_SCALE = math.log(1000.0 / 16)


def _centre_size(boxes_xyxy: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    widths = boxes_xyxy[..., 2] - boxes_xyxy[..., 0]
    heights = boxes_xyxy[..., 3] - boxes_xyxy[..., 1]
    centre_x = boxes_xyxy[..., 0] + 0.5 * widths
    centre_y = boxes_xyxy[..., 1] + 0.5 * heights
    return centre_x, centre_y, widths, heights


def encode_boxes(
    gt_boxes_xyxy: Tensor, reference_boxes_xyxy: Tensor, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
) -> Tensor:
    """Regression targets t* of ground truth relative to reference (anchor/proposal) boxes.

    Paper eq. 2: t_x = (x - x_a) / w_a, t_y = (y - y_a) / h_a, t_w = log(w / w_a), t_h = log(h / h_a).
    ``weights`` multiply the four targets (Fast R-CNN normalises detector targets by
    1/std, i.e. weights = (10, 10, 5, 5) for stds (0.1, 0.1, 0.2, 0.2)).

    gt_boxes_xyxy, reference_boxes_xyxy: [..., 4] -> targets [..., 4]
    """
    gx, gy, gw, gh = _centre_size(gt_boxes_xyxy)
    ax, ay, aw, ah = _centre_size(reference_boxes_xyxy)
    wx, wy, ww, wh = weights
    targets_dx = wx * (gx - ax) / aw
    targets_dy = wy * (gy - ay) / ah
    targets_dw = ww * torch.log(gw / aw)
    targets_dh = wh * torch.log(gh / ah)
    return torch.stack((targets_dx, targets_dy, targets_dw, targets_dh), dim=-1)


def decode_boxes(
    deltas: Tensor,
    reference_boxes_xyxy: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    max_log_scale: float = DEFAULT_MAX_LOG_SCALE,
) -> Tensor:
    """Inverse of :func:`encode_boxes`: apply deltas t to reference boxes (paper eq. 2).

    t_w and t_h are clamped at ``max_log_scale`` before exp so decoding never overflows.

    deltas: [..., 4] (or [..., K*4] for K classes, broadcast over the reference box);
    reference_boxes_xyxy: [..., 4] -> boxes [..., 4] / [..., K*4]
    """
    shape = deltas.shape
    deltas = deltas.unflatten(-1, (-1, 4))  # [..., K, 4]; K from the last dim alone, so 0 boxes work too
    ax, ay, aw, ah = (v.unsqueeze(-1) for v in _centre_size(reference_boxes_xyxy.to(deltas.dtype)))
    wx, wy, ww, wh = weights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=max_log_scale)
    dh = (deltas[..., 3] / wh).clamp(max=max_log_scale)
    centre_x = dx * aw + ax
    centre_y = dy * ah + ay
    half_w = 0.5 * torch.exp(dw) * aw
    half_h = 0.5 * torch.exp(dh) * ah
    boxes = torch.stack((centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h), dim=-1)
    return boxes.reshape(shape)
