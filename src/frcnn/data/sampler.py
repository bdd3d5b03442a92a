"""Training samplers: aspect-ratio grouping and LVIS's repeat-factor sampling of rare classes.

Aspect-ratio grouping: mini-batches of only landscape (W >= H) or only portrait (W < H) images.
Images of a batch are padded to the largest H and W in it; after the paper rescale (shorter side
600) a landscape and a portrait image padded together waste up to half the batch's pixels. Grouping
by orientation keeps the padding small.

Repeat-factor sampling (``data.sampler=repeat_factor``; LVIS, Gupta, Dollar and Girshick 2019, Appendix
B.2; detectron2's RepeatFactorTrainingSampler): an image holding a rare class is drawn more often, in
proportion to its repeat factor (:func:`repeat_factors`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import BatchSampler, Dataset, DistributedSampler, Sampler

__all__ = ["LANDSCAPE", "PORTRAIT", "SAMPLERS", "AspectRatioBatchSampler", "RepeatFactorSampler", "aspect_group_ids",
           "image_classes", "repeat_factors"]

LANDSCAPE, PORTRAIT = 0, 1
SAMPLERS = ("uniform", "repeat_factor")  # data.sampler
log = logging.getLogger(__name__)


def _base_dataset(dataset: Dataset) -> Dataset:
    """The data set a wrapper with ``.base`` (ProposalDataset: the same images with proposals) reads."""
    while getattr(dataset, "base", None) is not None:
        dataset = dataset.base
    return dataset


def aspect_group_ids(dataset: Dataset) -> list[int] | None:
    """Group of every image (0: W >= H, 1: W < H) from ``dataset.image_size_hw(i)`` (annotation sizes, no
    decoding); a wrapper with ``.base`` (ProposalDataset) uses its base. None if sizes are unknown."""
    sizes = getattr(dataset, "image_size_hw", None)
    if not callable(sizes):
        base = getattr(dataset, "base", None)
        return aspect_group_ids(base) if base is not None else None
    return [LANDSCAPE if w >= h else PORTRAIT for h, w in (sizes(i) for i in range(len(dataset)))]


# ----------------------------------------------------------------------------- repeat-factor sampling
def image_classes(dataset: Dataset) -> list[np.ndarray]:
    """The distinct labels (1..C) of every training image's boxes, in index order, as training sees them
    (difficult / crowd boxes left out; files read from their annotations, no image decoded:
    :func:`frcnn.data.records.training_annotations`); a wrapper with ``.base`` uses its base."""
    from frcnn.data.records import training_annotations

    annotations = training_annotations(_base_dataset(dataset))
    return [np.unique(np.asarray(labels, dtype=np.int64)) for *_, labels in annotations]


def repeat_factors(classes_per_image: Sequence[np.ndarray], repeat_thresh: float,
                   num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LVIS's repeat factors -> (per image [N], per class [C + 1], index = label, 0 unused).

    f(c) = the fraction of training images that hold class c; a class's factor is
    r(c) = max(1, sqrt(t / f(c))) with t = ``repeat_thresh``, so a class in a fraction t of the images or
    more is not repeated and a class in t / 4 of them is repeated twice; an image's factor is the largest
    of its classes' (1 for an image without boxes). A class absent from every image keeps 1.
    """
    if not repeat_thresh > 0:
        raise ValueError(f"repeat_thresh must be > 0, got {repeat_thresh!r}")
    num_images = len(classes_per_image)
    top = max((int(c.max()) for c in classes_per_image if len(c)), default=0)
    num_classes = max(int(num_classes or 0), top)
    images_with = np.zeros(num_classes + 1, dtype=np.int64)  # [C + 1]
    for classes in classes_per_image:
        images_with[np.unique(classes)] += 1
    fraction = images_with / max(num_images, 1)
    with np.errstate(divide="ignore"):
        per_class = np.where(images_with > 0, np.maximum(1.0, np.sqrt(repeat_thresh / fraction)), 1.0)
    per_class[0] = 1.0
    per_image = np.array([per_class[c].max() if len(c) else 1.0 for c in classes_per_image], dtype=np.float64)
    return per_image, per_class


class RepeatFactorSampler(Sampler[int]):
    """Image indices drawn by their repeat factors ``factors`` [N], each epoch a pure function of
    (``seed``, epoch) (Lightning passes the epoch through ``set_epoch``), so a resumed run replays it.

    Epoch e is one round of detectron2's RepeatFactorTrainingSampler seeded from (seed, e): image i is
    listed floor(r_i) times and once more with probability frac(r_i) (stochastic rounding), the list is
    shuffled, and the epoch is its first ``epoch_length`` entries (default N, the number of images: an
    epoch sees as many images as uniform sampling, so a schedule in epochs or steps keeps its length and
    cost; at most sum(floor(r)), the shortest a round can be). Image i is then drawn r_i / sum(r) of the
    time, as in detectron2's endless stream.

    ``num_replicas`` / ``rank`` (DDP): the epoch is padded with its first entries to a multiple of
    ``num_replicas`` and rank k takes positions k, k + num_replicas, ... (as DistributedSampler does), so
    the ranks' shares are disjoint parts of one list that every rank computes alike.
    """

    def __init__(self, factors: Sequence[float] | np.ndarray, seed: int = 0, epoch_length: int | None = None,
                 num_replicas: int = 1, rank: int = 0):
        self.factors = np.asarray(factors, dtype=np.float64).reshape(-1)  # [N]
        if len(self.factors) == 0 or not np.all(self.factors >= 1.0):
            raise ValueError("repeat factors must be a non-empty list of numbers >= 1")
        self.epoch_length = len(self.factors) if epoch_length is None else int(epoch_length)
        smallest_round = int(np.floor(self.factors).sum())  # a round lists at least this many draws
        if not 1 <= self.epoch_length <= smallest_round:
            raise ValueError(f"epoch_length must be in [1, {smallest_round}] (sum of the factors' integer parts), "
                             f"got {epoch_length}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.seed, self.num_replicas, self.rank = int(seed), int(num_replicas), int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Every rank's indices of epoch ``epoch``, before the deal: int64 [epoch_length]."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        whole = np.floor(self.factors)
        copies = whole.astype(np.int64) + (rng.random(len(self.factors)) < self.factors - whole)  # [N]
        pool = np.repeat(np.arange(len(self.factors), dtype=np.int64), copies)  # [sum(copies)] >= N
        return pool[rng.permutation(len(pool))[: self.epoch_length]]

    def __len__(self) -> int:
        return math.ceil(self.epoch_length / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        order = np.resize(self.epoch_order(self.epoch), len(self) * self.num_replicas)  # padded with its start
        yield from order[self.rank :: self.num_replicas].tolist()


def log_repeat_factors(per_class: np.ndarray, per_image: np.ndarray, class_names: Sequence[str],
                       repeat_thresh: float) -> str:
    """The start-up line of repeat-factor sampling: each repeated class's factor and how often a picture of it is
    drawn against uniform sampling (r / mean(r) over the pictures)."""
    mean = float(per_image.mean())
    repeated = [f"{name} r={per_class[label]:.2f} ({per_class[label] / mean:.2f}x)"
                for label, name in enumerate(class_names, start=1) if label < len(per_class) and per_class[label] > 1.0]
    line = (f"repeat-factor sampling (data.repeat_thresh={repeat_thresh:g}): "
            + (f"{', '.join(repeated)}; a picture is drawn r / mean(r) times as often as uniformly (x: a picture "
               f"whose largest factor is that class's; mean r {mean:.3f}, a picture of factor 1: {1 / mean:.2f}x)"
               if repeated
               else "no class is in fewer than that share of the pictures: sampling stays uniform"))
    log.info("%s", line)
    return line


class AspectRatioBatchSampler(BatchSampler):
    """Batches of ``batch_size`` indices of one group, in the order ``sampler`` yields them.

    Indices go into their group's bucket as the sampler yields them; a full bucket is emitted as a
    batch. At the end each non-empty bucket is emitted as a smaller batch (``drop_last=False``), so
    with a sampler that yields every index once the epoch covers every index exactly once, in
    ``sum_g ceil(n_g / batch_size)`` batches. Order (and so reproducibility) comes from ``sampler``: a
    ``RandomSampler`` with a seeded generator gives a fixed sequence of epochs.

    Under a ``DistributedSampler`` (Lightning injects one through the ``sampler`` argument) every rank
    must run the same number of steps, whatever its mix of groups; under a :class:`RepeatFactorSampler`
    each epoch draws another multiset of images, whose mix of groups varies; in both cases the epoch is
    padded to
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
        """Same batch count on every rank (distributed sampling) and in every epoch (repeat factors)."""
        return isinstance(self.sampler, (DistributedSampler, RepeatFactorSampler))

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
