"""Aspect-ratio grouping: mini-batches of only landscape (W >= H) or only portrait (W < H) images.

Images of a batch are padded to the largest H and W in it; after the paper rescale (shorter side
600) a landscape and a portrait image padded together waste up to half the batch's pixels. Grouping
by orientation keeps the padding small.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from torch.utils.data import BatchSampler, Dataset, DistributedSampler, Sampler

__all__ = ["LANDSCAPE", "PORTRAIT", "AspectRatioBatchSampler", "aspect_group_ids"]

LANDSCAPE, PORTRAIT = 0, 1


def aspect_group_ids(dataset: Dataset) -> list[int] | None:
    """Group of every image (0: W >= H, 1: W < H) from ``dataset.image_size_hw(i)`` (annotation sizes, no
    decoding); a wrapper with ``.base`` (ProposalDataset) uses its base. None if sizes are unknown."""
    sizes = getattr(dataset, "image_size_hw", None)
    if not callable(sizes):
        base = getattr(dataset, "base", None)
        return aspect_group_ids(base) if base is not None else None
    return [LANDSCAPE if w >= h else PORTRAIT for h, w in (sizes(i) for i in range(len(dataset)))]


class AspectRatioBatchSampler(BatchSampler):
    """Batches of ``batch_size`` indices of one group, in the order ``sampler`` yields them.

    Indices go into their group's bucket as the sampler yields them; a full bucket is emitted as a
    batch. At the end each non-empty bucket is emitted as a smaller batch (``drop_last=False``), so
    with a sampler that yields every index once the epoch covers every index exactly once, in
    ``sum_g ceil(n_g / batch_size)`` batches. Order (and so reproducibility) comes from ``sampler``: a
    ``RandomSampler`` with a seeded generator gives a fixed sequence of epochs.

    Under a ``DistributedSampler`` (Lightning injects one through the ``sampler`` argument) every rank
    must run the same number of steps, whatever its mix of groups: the epoch is then padded to
    ``ceil(len(sampler) / batch_size) + groups - 1`` batches (the most any mix needs) by repeating its
    first batches (``drop_last=True``: cut to ``len(sampler) // batch_size - (groups - 1)``).
    """

    def __init__(self, sampler: Sampler | Sequence[int], group_ids: Sequence[int], batch_size: int,
                 drop_last: bool = False):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.sampler = sampler
        self.group_ids = [int(g) for g in group_ids]
        self.num_groups = max(self.group_ids, default=0) + 1
        self.batch_size = batch_size
        self.drop_last = bool(drop_last)

    @property
    def _fixed_length(self) -> bool:
        """Same batch count on every rank (distributed sampling)."""
        return isinstance(self.sampler, DistributedSampler)

    def _grouped_batches(self) -> list[list[int]]:
        buckets: list[list[int]] = [[] for _ in range(self.num_groups)]
        batches: list[list[int]] = []
        for index in self.sampler:
            bucket = buckets[self.group_ids[index]]
            bucket.append(int(index))
            if len(bucket) == self.batch_size:
                batches.append(bucket.copy())
                bucket.clear()
        if not self.drop_last:
            batches.extend(bucket for bucket in buckets if bucket)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._grouped_batches()
        if self._fixed_length and batches:
            target = len(self)
            batches = (batches * math.ceil(target / len(batches)))[:target]
        yield from batches

    def __len__(self) -> int:
        n = len(self.sampler)
        if self._fixed_length:
            spare = self.num_groups - 1
            return max(n // self.batch_size - spare, 0) if self.drop_last else math.ceil(n / self.batch_size) + spare
        counts = [0] * self.num_groups
        if n == len(self.group_ids):  # the sampler yields every index once
            for group in self.group_ids:
                counts[group] += 1
            per_group = (c // self.batch_size if self.drop_last else math.ceil(c / self.batch_size) for c in counts)
            return sum(per_group)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size) + self.num_groups - 1
