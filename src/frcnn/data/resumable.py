"""Training batches as a pure function of (seed, step), so a stage resumed from a mid-epoch
checkpoint sees exactly the batches, in the order and with the augmentation, that an
uninterrupted run would have seen.

Lightning 2.x restarts a non-stateful DataLoader from the beginning of the epoch when it resumes
from a mid-epoch checkpoint (it warns "resuming from a checkpoint that ended before the epoch
ended ..."), and a loader rebuilt on resume restarts its shuffle generator and the augmentation
RNG from their seeds. Two small wrappers remove both sources of divergence:

- :class:`ResumeBatchSampler` seeds the shuffle of every epoch from (seed, epoch) and leaves
  out the batches before the resume step; each index is tagged with the number of the batch
  (the training step) it belongs to.
- :class:`StepSeededDataset` reseeds the dataset's augmentation from (seed, step, index) before
  reading an item, so a random flip or scale depends on the item and its step, not on how
  many items were transformed before in this process.

Used for single-process training, and under DDP with ``data.sampler=repeat_factor`` (whose sampler deals
each rank its share of the epoch itself); otherwise under DDP Lightning's distributed sampler is kept
(resume then restarts the epoch order, as Lightning warns).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class ResumeBatchSampler(Sampler):
    """Epoch ``e`` of ``batch_sampler`` with its shuffle ``generator`` seeded from (``seed``, e) (and
    ``set_epoch(e)`` passed to its sampler where it has one), minus the batches before training step
    ``start_step``; items are ``(step, index)`` pairs
    (step = e * batches per epoch + position) for :class:`StepSeededDataset`.

    Each epoch is a pure function of its number, which Lightning passes through ``set_epoch``
    before iterating, so an iterator Lightning creates and discards on restart changes nothing.
    """

    def __init__(self, batch_sampler: Sampler, generator: torch.Generator, seed: int, start_step: int = 0):
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.batch_sampler = batch_sampler
        self.generator = generator
        self.seed = int(seed)
        self.start_step = int(start_step)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def sampler(self) -> "ResumeBatchSampler":
        """Lightning calls ``loader.batch_sampler.sampler.set_epoch(epoch)`` before each epoch: this object."""
        return self

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        self.generator.manual_seed(item_seed([self.seed, self.epoch]))
        order = getattr(self.batch_sampler, "sampler", None)
        if callable(getattr(order, "set_epoch", None)):  # a sampler seeded per epoch (RepeatFactorSampler)
            order.set_epoch(self.epoch)
        first_step = self.epoch * len(self.batch_sampler)
        for position, batch in enumerate(self.batch_sampler):
            step = first_step + position
            if step >= self.start_step:
                yield [(step, int(index)) for index in batch]


def _transform_of(dataset: Dataset):
    """The training transform of a detection dataset (or of the dataset a ProposalDataset wraps)."""
    transform = getattr(dataset, "transform", None)
    if transform is None and hasattr(dataset, "base"):
        transform = getattr(dataset.base, "transform", None)
    return transform


class StepSeededDataset(Dataset):
    """``dataset`` read with ``(step, index)`` keys: the augmentation RNG is reseeded from
    (``seed``, step, index) first, so the item is the same whenever and wherever it is read."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)
        self.transform = _transform_of(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # class_names, raw(), skipped, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: tuple[int, int] | int):
        step, index = key if isinstance(key, Sequence) else (0, key)
        if self.transform is not None and hasattr(self.transform, "reseed"):
            self.transform.reseed([self.seed, int(step), int(index)])
        return self.dataset[int(index)]


def item_seed(entropy: Sequence[int]) -> int:
    """One 32-bit seed from a list of non-negative integers (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(v) % (2**63) for v in entropy]).generate_state(1)[0])
