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
joint training, :meth:`frcnn.modeling.rpn.RegionProposalNetwork.propose` with ``keep_box_graph``):
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

How the samples are read (PyTorch primitives, no custom C++): the feature map is laid out as
rows, one per cell ([B*H*W, C], channels-last), and each sample is an ``embedding_bag`` "bag"
of its 4 neighbouring cells' rows weighted by the bilinear weights (mode "sum" with
per-sample weights): one fused kernel reads all samples of a batch, and its backward gives the
gradient w.r.t. the rows (the features) and w.r.t. the weights, from which autograd takes the
gradient w.r.t. the sample positions (hence the boxes). The S x S max is max_pool2d's forward
with its arg-max index; its backward scatters the gradient to the arg-max samples.

Memory: the large tensor is the samples, R * C * (P * S)^2 values: 128 RoIs x 512 channels x
14 x 14 = 12.8 M floats (51 MB) for VGG-16 with P = 7, S = 2, and their gradient in the backward.
They are read in chunks of at most ``SAMPLE_BYTES_PER_CALL`` (8 MiB: 20 RoIs of VGG-16, 83 of the
small net) and ``max_rois_per_call`` RoIs, and a chunk's samples are freed once its bins are
reduced: the forward holds one chunk's samples beyond the pooled result and the max's int64
arg-max index ([R, C, P, P]), the backward one chunk's sample gradient at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("max", "avg")
# The samples read per call (and their gradient in the backward). glibc's malloc maps a large
# tensor fresh on every step (above its mmap threshold, which rises to at most 32 MiB) and the
# kernel faults in and zeroes each 4 KiB page anew: ~15 ms for the 51 MB of one step's samples
# in one piece on a 2-core machine. Chunks of at most 8 MiB reuse the memory the last chunk freed
# (small-net step 1.33 -> 1.17 x the approximate one; 16 MiB: 1.24, 4 MiB: 1.25).
SAMPLE_BYTES_PER_CALL = 8 * 2**20


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


def _axis_weights(positions: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """roi_align's 1-D bilinear rule on an axis of ``size`` cells: positions [...] in cells ->
    (low cell, high cell, weight of low, weight of high), all [...].

    A position more than one cell outside the map gets weight 0 on both (it reads 0); one within
    a cell of the border is clamped to the border (its gradient is 0 there). The weights are
    differentiable w.r.t. the position (d weight_high / d position = 1 between two cells); the
    cell indices are constants.
    """
    inside = ((positions >= -1.0) & (positions <= size)).to(positions.dtype)
    clamped = positions.clamp(0.0, size - 1)
    low = clamped.detach().floor()
    fraction = clamped - low  # in [0, 1): the high cell's weight
    high = (low + 1).clamp(max=size - 1)
    return low.long(), high.long(), (1 - fraction) * inside, fraction * inside


def _bilinear_bags(
    rois_xyxy: Tensor, image_index: Tensor, output_size: int, sampling_ratio: int, spatial_scale: float,
    aligned: bool, height: int, width: int,
) -> tuple[Tensor, Tensor]:
    """Each sample as a weighted sum of its 4 neighbouring cells (bilinear interpolation):
    rois [R, 4], image_index [R] -> (cells [R*(P*S)^2, 4], weights [R*(P*S)^2, 4]), the samples in
    (RoI, row, column) order.

    cells index the rows of the batch's feature map laid out as [B*H*W, C] (image b's cell (y, x)
    is row (b*H + y)*W + x).
    """
    p, s = output_size, sampling_ratio
    xs, ys = _sample_coordinates(rois_xyxy, p, s, spatial_scale, aligned)  # [R, P*S] each
    x_low, x_high, wx_low, wx_high = _axis_weights(xs, width)
    y_low, y_high, wy_low, wy_high = _axis_weights(ys, height)
    first_row = (image_index * height)[:, None]  # [R, 1]: the image's row 0 in the [B*H] rows
    corners = [(first_row + y, wy, x, wx) for y, wy in ((y_low, wy_low), (y_high, wy_high))
               for x, wx in ((x_low, wx_low), (x_high, wx_high))]  # (y, x) = (low, low), (low, high), ...
    cells = torch.stack([y[:, :, None] * width + x[:, None, :] for y, _, x, _ in corners], -1)  # [R, P*S, P*S, 4]
    weights = torch.stack([wy[:, :, None] * wx[:, None, :] for _, wy, _, wx in corners], -1)  # as cells
    return cells.reshape(-1, 4), weights.reshape(-1, 4)


class _BinMax(torch.autograd.Function):
    """samples [R, (P*S)^2, C] (each RoI's (P*S) x (P*S) grid, row-major, C contiguous) -> the max
    over each bin's S x S samples, [R, C, P, P] (channels-last strides).

    max_pool2d's forward and rule (the gradient goes to a bin's first arg-max); the backward
    scatters the output gradient to the arg-max rows in place of max_pool2d's channels-last
    backward, which copies the sample-sized gradient twice."""

    @staticmethod
    def forward(ctx, samples: Tensor, grid_size: int, sampling_ratio: int) -> Tensor:
        rois, cells, channels = samples.shape
        grid = samples.view(rois, grid_size, grid_size, channels).permute(0, 3, 1, 2)  # [R, C, P*S, P*S]
        pooled, argmax = F.max_pool2d(grid, sampling_ratio, return_indices=True)  # argmax: index in the P*S x P*S grid
        ctx.save_for_backward(argmax)
        ctx.cells = cells
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled: Tensor) -> tuple[Tensor, None, None]:
        (argmax,) = ctx.saved_tensors  # [R, C, P, P]
        rois, channels = argmax.shape[:2]
        grad_samples = grad_pooled.new_zeros((rois, ctx.cells, channels))
        grad_samples.scatter_(1, argmax.permute(0, 2, 3, 1).reshape(rois, -1, channels),
                              grad_pooled.permute(0, 2, 3, 1).reshape(rois, -1, channels))
        return grad_samples, None, None


def _warp_rois(
    cell_rows: Tensor, rois_xyxy: Tensor, image_index: Tensor, height: int, width: int, output_size: int,
    sampling_ratio: int, spatial_scale: float, aligned: bool, reduction: str,
) -> Tensor:
    """cell_rows [B*H*W, C] (the feature map, one row per cell), rois [R, 4] of images image_index [R]
    -> [R, C, P, P] (channels-last strides): one embedding_bag call reads the (P*S)^2 samples of
    every RoI, then a bin's S x S samples are reduced."""
    p, s = output_size, sampling_ratio
    channels = cell_rows.shape[1]
    cells, weights = _bilinear_bags(rois_xyxy, image_index, p, s, spatial_scale, aligned, height, width)
    samples = F.embedding_bag(cells, cell_rows, per_sample_weights=weights, mode="sum")  # [R*(P*S)^2, C]
    samples = samples.view(-1, (p * s) ** 2, channels)
    if reduction == "max":
        return _BinMax.apply(samples, p * s, s)  # [R, C, P, P], channels-last strides
    grid = samples.view(-1, p * s, p * s, channels).permute(0, 3, 1, 2)  # [R, C, P*S, P*S]
    return F.avg_pool2d(grid, s)


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
    batch, channels, height, width = features.shape
    rois_xyxy = torch.cat([image_rois.to(features.dtype) for image_rois in rois])  # [R, 4], image-major
    if rois_xyxy.shape[0] == 0:
        return features.new_zeros((0, channels, output_size, output_size))
    counts = torch.tensor([image_rois.shape[0] for image_rois in rois], device=features.device)
    image_index = torch.repeat_interleave(torch.arange(batch, device=features.device), counts)  # [R]
    cell_rows = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)  # [B*H*W, C]
    sample_bytes = channels * (output_size * sampling_ratio) ** 2 * features.element_size()  # one RoI's samples
    rois_per_call = max(1, min(max_rois_per_call, SAMPLE_BYTES_PER_CALL // sample_bytes))
    chunks = [
        _warp_rois(cell_rows, rois_xyxy[start : start + rois_per_call], image_index[start : start + rois_per_call],
                   height, width, output_size, sampling_ratio, spatial_scale, aligned, reduction)
        for start in range(0, rois_xyxy.shape[0], rois_per_call)
    ]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)
