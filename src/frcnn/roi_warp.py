"""RoI warping: RoI pooling differentiable w.r.t. the box coordinates (paper §3.2 iii).

The paper's third training scheme, non-approximate joint training, needs "an RoI pooling layer
that is differentiable w.r.t. the box coordinates" and points to the RoI warping layer of Dai
et al. (multi-task network cascades, MNC). The rule implemented here:

    For an RoI (x1, y1, x2, y2) in image pixels, map it to the feature map (x * spatial_scale,
    minus half a cell when ``aligned``), split it into P x P bins and place S x S sample points
    at the centres of an even S x S sub-grid of each bin. Each sample is the *bilinear*
    interpolation of the feature map at its (real-valued) position; the S x S samples of a bin
    are reduced by max (RoI max pooling's rule, Fast R-CNN §2.1) or average (RoIAlign's).

Every sample position is an affine function of the box coordinates, and bilinear interpolation
is continuous and piecewise linear in the position, so the output has a gradient w.r.t. the
features (as RoI pooling has) *and* w.r.t. x1, y1, x2, y2, which RoI max pooling's rounding of
the box to whole cells does not have (its gradient there is zero almost everywhere).

Sampling matches ``torchvision.ops.roi_align`` with the same ``sampling_ratio`` and ``aligned``
(average reduction): a sample more than one cell outside the map reads 0, one within a cell of
the border reads the border value (its coordinate is clamped, so the gradient w.r.t. that
coordinate is 0 there). With ``aligned=False`` the RoI's size is at least one cell, as in
roi_align (gradient 0 w.r.t. the size while the floor holds). Max reduction over the S x S
samples equals max-pooling roi_align's (P*S) x (P*S) output with sampling_ratio=1.

Gradients at the proposal layer's discrete steps (what reaches the RPN in non-approximate
joint training, :meth:`frcnn.rpn.RegionProposalNetwork.propose` with ``keep_box_graph``):
    top-k by objectness, NMS, the minimum-size filter and the RoI sampling of Fast R-CNN are
    *selections*: which boxes survive is a piecewise-constant function of the scores and boxes,
    with zero gradient; the gradient flows through the continuous coordinates of the boxes that
    survive, back through box decoding (eq. 2) to the RPN's regression outputs and the shared
    conv layers. The objectness scores get no gradient from the detector (they only rank).
    Clipping to the image is a clamp: a coordinate inside the image passes its gradient, a
    clipped one gets zero. Ground-truth boxes added to the RoI set are constants. The Fast R-CNN
    regression targets of a RoI (eq. 2 w.r.t. its matched ground truth) are labels, computed
    without gradient, like the class labels; the box gradient comes from the features the RoI
    warps.

Memory: the samples are read with one ``torch.nn.functional.grid_sample`` call per batch (a
fused PyTorch kernel, no custom C++, which runs the images on parallel CPU threads), which keeps
only the feature map and the sample grid for its backward. The one large tensor is the sampled
output, R * C * (P * S)^2 values: 128 RoIs x 512 channels x 14 x 14 = 12.8 M floats (51 MB) for
VGG-16 with P = 7, S = 2; RoIs are processed in chunks of ``max_rois_per_call`` so a test-time
batch of many proposals never holds more than one chunk's samples beyond the pooled result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("max", "avg")


def _sample_coordinates(
    rois_xyxy: Tensor, output_size: int, sampling_ratio: int, spatial_scale: float, aligned: bool
) -> tuple[Tensor, Tensor]:
    """Sample positions in feature-map cells: rois [R, 4] -> (x [R, P*S], y [R, P*S]).

    Position k of P*S along an axis: start + (k + 0.5) * size / (P * S), where start and size
    are the RoI's first edge and extent in cells (roi_align's bin rule with S samples per bin).
    """
    offset = 0.5 if aligned else 0.0
    x1 = rois_xyxy[:, 0] * spatial_scale - offset
    y1 = rois_xyxy[:, 1] * spatial_scale - offset
    width = rois_xyxy[:, 2] * spatial_scale - offset - x1
    height = rois_xyxy[:, 3] * spatial_scale - offset - y1
    if not aligned:  # roi_align's legacy rule: an RoI spans at least one cell
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    steps = output_size * sampling_ratio
    fractions = (torch.arange(steps, device=rois_xyxy.device, dtype=rois_xyxy.dtype) + 0.5) / steps  # [P*S]
    xs = x1[:, None] + fractions[None, :] * width[:, None]
    ys = y1[:, None] + fractions[None, :] * height[:, None]
    return xs, ys


def _sample_grid(
    rois_xyxy: Tensor, output_size: int, sampling_ratio: int, spatial_scale: float, aligned: bool, height: int,
    width: int,
) -> tuple[Tensor, Tensor]:
    """rois [R, 4] -> (grid_sample grid [R*P*S, P*S, 2] for a [height, width] map, inside [R*P*S, P*S] bool).

    ``inside``: roi_align's rule, a sample more than one cell outside the map reads 0.
    """
    steps = output_size * sampling_ratio
    xs, ys = _sample_coordinates(rois_xyxy, output_size, sampling_ratio, spatial_scale, aligned)  # [R, P*S]
    # grid_sample, align_corners=True: normalised -1 / +1 are the centres of the first / last cell
    grid_x = xs * (2.0 / max(width - 1, 1)) - 1.0
    grid_y = ys * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack(
        (grid_x[:, None, :].expand(-1, steps, -1), grid_y[:, :, None].expand(-1, -1, steps)), dim=-1
    )  # [R, P*S (y), P*S (x), 2]
    with torch.no_grad():
        inside_x = (xs >= -1.0) & (xs <= width)  # [R, P*S]
        inside_y = (ys >= -1.0) & (ys <= height)
        inside = inside_y[:, :, None] & inside_x[:, None, :]
    return grid.reshape(-1, steps, 2), inside.reshape(-1, steps)


def _warp_batch(
    features: Tensor, rois: list[Tensor], output_size: int, sampling_ratio: int, spatial_scale: float,
    aligned: bool, reduction: str,
) -> Tensor:
    """features [B, C, H, W], rois: per image [R_b, 4] -> [sum R_b, C, P, P] in image order.

    One ``grid_sample`` call for the whole batch (its CPU kernel runs the images on parallel
    threads; one call per image would leave all but one idle): each image's sample grid is padded
    to the batch's largest R with samples that are read and dropped.
    """
    batch, channels, height, width = features.shape
    steps = output_size * sampling_ratio
    counts = [image_rois.shape[0] for image_rois in rois]
    rows = max(counts)
    grids, insides = [], []
    for image_rois, count in zip(rois, counts):
        grid, inside = _sample_grid(image_rois, output_size, sampling_ratio, spatial_scale, aligned, height, width)
        padding = (rows - count) * steps
        grids.append(F.pad(grid, (0, 0, 0, 0, 0, padding)))  # padded samples read the map's centre, dropped below
        insides.append(F.pad(inside, (0, 0, 0, padding)))
    grid = torch.stack(grids).to(features.dtype)  # [B, rows*P*S, P*S, 2]
    inside = torch.stack(insides)[:, None]  # [B, 1, rows*P*S, P*S]
    samples = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)
    if not bool(inside.all()):  # [B, C, rows*P*S, P*S]
        samples = samples * inside.to(samples.dtype)
    # S x S windows of the [rows*P*S, P*S] sample grid never straddle two RoIs (each spans P*S rows)
    if reduction == "max":
        pooled = F.max_pool2d(samples, sampling_ratio)  # [B, C, rows*P, P]
    else:
        pooled = F.avg_pool2d(samples, sampling_ratio)
    pooled = pooled.view(batch, channels, rows, output_size, output_size).transpose(1, 2)
    pooled = pooled.reshape(batch * rows, channels, output_size, output_size)  # [B*rows, C, P, P], image-major
    if any(count != rows for count in counts):  # drop the padding rows (one gather, one scatter in backward)
        keep = torch.cat([torch.arange(count, device=features.device) + b * rows for b, count in enumerate(counts)])
        pooled = pooled.index_select(0, keep)
    return pooled  # [sum R_b, C, P, P]


def roi_warp(
    features: Tensor,
    rois: list[Tensor],
    output_size: int = 7,
    spatial_scale: float = 1.0 / 16,
    sampling_ratio: int = 2,
    aligned: bool = True,
    reduction: str = "max",
    max_rois_per_call: int = 512,
) -> Tensor:
    """Bilinear RoI warping (see the module doc), differentiable w.r.t. features and boxes.

    features [B, C, H, W]; rois: per image [R_i, 4] boxes (x1, y1, x2, y2) in input pixels
    -> [sum R_i, C, P, P] in the order of ``rois`` (as torchvision's roi_pool / roi_align).
    sampling_ratio: S samples per bin along each axis (fixed: the grid must not depend on the
    box size, or its gradient would have jumps); reduction: "max" or "avg" over the S x S.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"roi_warp reduction={reduction!r}; allowed: {REDUCTIONS}")
    if sampling_ratio < 1:
        raise ValueError(f"roi_warp sampling_ratio must be >= 1 (a fixed grid), got {sampling_ratio}")
    if len(rois) != features.shape[0]:
        raise ValueError(f"roi_warp: {len(rois)} RoI lists for a batch of {features.shape[0]} feature maps")
    longest = max((image_rois.shape[0] for image_rois in rois), default=0)
    if longest == 0:
        return features.new_zeros((0, features.shape[1], output_size, output_size))
    per_image: list[list[Tensor]] = [[] for _ in rois]
    for start in range(0, longest, max_rois_per_call):
        chunks = [image_rois[start : start + max_rois_per_call].to(features.dtype) for image_rois in rois]
        pooled = _warp_batch(features, chunks, output_size, sampling_ratio, spatial_scale, aligned, reduction)
        if start == 0 and longest <= max_rois_per_call:  # one call (training: 128 RoIs per mini-batch)
            return pooled
        for image_chunks, image_pooled in zip(per_image, pooled.split([chunk.shape[0] for chunk in chunks])):
            image_chunks.append(image_pooled)
    return torch.cat([chunk for image_chunks in per_image for chunk in image_chunks])  # image-major
