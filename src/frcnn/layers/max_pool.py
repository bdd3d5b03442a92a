"""VGG's 2 x 2, stride-2 max pooling, with a faster CPU forward where no gradient is needed.

torch's CPU ``max_pool2d`` on NCHW tensors runs far below memory speed: on a 2-core AMD EPYC
(AVX-512), torch 2.14.1, VGG-16's pool1 at 600 x 1000 takes 107 ms, pool2 55 ms, pool3 20 ms,
pool4 9 ms. The same maxima taken as two elementwise ``torch.maximum`` over strided views (row
pairs, then column pairs) take 42, 4, 2 and 1 ms, and give the same tensor bit for bit (a maximum
is exact; NaN propagates in both). The 4-step and joint recipes train VGG-16 with conv1_1 ..
conv2_2 fixed (§3.1.3), so pool1 and pool2 never need a gradient: a training step saves ~115 ms.

Where a gradient is needed, ``F.max_pool2d`` runs as before: its backward sends each bin's
gradient to one arg-max cell (Caffe's rule), which two elementwise maxima would split between
tied cells. GPUs, scripting, tracing, export and ``frcnn.layers.fast_paths.torch_layers_only()`` also
get ``F.max_pool2d``.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn.layers.fast_paths import fast_paths_allowed


def max_pool_2x2(features: Tensor) -> Tensor:
    """[..., H, W] -> [..., floor(H/2), floor(W/2)]: the maximum of each 2 x 2 cell (the last odd
    row / column dropped, as ``F.max_pool2d(x, 2, 2)``); the memory format follows the input."""
    height, width = features.shape[-2] // 2 * 2, features.shape[-1] // 2 * 2
    rows = torch.maximum(features[..., 0:height:2, :width], features[..., 1:height:2, :width])  # [..., H/2, W]
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2, 2)`` whose CPU forward without gradient is :func:`max_pool_2x2`."""

    def __init__(self):
        super().__init__(kernel_size=2, stride=2)

    def forward(self, features: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self._fast_path_applies(features):
            return max_pool_2x2(features)
        return F.max_pool2d(features, 2, 2)

    @torch.jit.unused
    def _fast_path_applies(self, features: Tensor) -> bool:
        if not fast_paths_allowed():  # first: a trace must not record the shape test below
            return False
        needs_grad = torch.is_grad_enabled() and features.requires_grad
        return (not needs_grad and features.device.type == "cpu" and features.dim() in (3, 4)
                and min(features.shape[-2:]) >= 2)  # smaller: F.max_pool2d's error
