"""Balanced mini-batch sampling shared by the RPN (§3.1.3) and the Fast R-CNN head."""

from __future__ import annotations

import torch
from torch import Tensor

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


def sample_balanced(
    labels: Tensor, batch_size: int, positive_fraction: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Sample at most ``batch_size`` examples, up to ``positive_fraction`` of them positive.

    Paper §3.1.3: "we randomly sample 256 anchors in an image ... where the sampled positive
    and negative anchors have a ratio of up to 1:1. If there are fewer than 128 positive
    samples in an image, we pad the mini-batch with negative ones."

    labels: [N] with 1 = positive, 0 = negative, -1 = ignore.
    Returns (positive_idx [P], negative_idx [Q]) with P + Q <= batch_size.
    """
    positive = torch.nonzero(labels == POSITIVE).flatten()
    negative = torch.nonzero(labels == NEGATIVE).flatten()
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    perm_pos = torch.randperm(positive.numel(), device=labels.device, generator=generator)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), device=labels.device, generator=generator)[:num_neg]
    return positive[perm_pos], negative[perm_neg]
