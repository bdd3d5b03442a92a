"""Mixed precision (``trainer.precision=bf16-mixed`` / ``16-mixed``): which values leave autocast.

Box coordinates, scores and losses are computed in float32: a bfloat16 coordinate near 1000 px is
off by up to 4 px. The layers' outputs that feed them are therefore promoted as they leave the
layer; float32 and float64 tensors (gradient checks run in float64) pass unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor


def full_precision(tensor: Tensor) -> Tensor:
    """``tensor`` in float32 if it is bfloat16 / float16, else unchanged (TorchScript-compatible)."""
    if tensor.dtype == torch.bfloat16 or tensor.dtype == torch.float16:
        return tensor.float()
    return tensor
