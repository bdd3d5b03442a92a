"""Lightning data module for detection data sets built lazily from zero-argument factories."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from frcnn.data.resumable import ResumeBatchSampler, StepSeededDataset
from frcnn.data.sampler import (
    SAMPLERS,
    AspectRatioBatchSampler,
    RepeatFactorSampler,
    aspect_group_ids,
    image_classes,
    log_repeat_factors,
    repeat_factors,
)
from frcnn.data.synthetic import ShapesDataset
from frcnn.data.transforms import DetectionTransform, collate_detection

# Lightning 2.x, resuming mid-epoch with a loader that has no state_dict (ours continues by step instead)
RESUME_WARNING = r"You're resuming from a checkpoint that ended before the epoch ended"

__all__ = ["DetectionDataModule", "build_shapes_datamodule", "resolve_num_workers", "usable_cpu_count"]

AUTO_WORKERS_MAX = 4  # the paper presets' loader workers before "auto"; enough to keep one GPU fed at 600 px


def usable_cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one: what torch's
    DataLoader counts when it warns about too many workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def resolve_num_workers(setting: int | str, cores: int | None = None) -> int:
    """``data.num_workers``: a number is used as given; ``auto`` is one loader worker per usable core
    but one (that core stays with the training process), at most AUTO_WORKERS_MAX: 0 on 1 core, 1 on 2,
    4 from 5 cores up. Never more than torch's suggested maximum (the usable cores), so no warning."""
    if setting != "auto":
        return int(setting)
    cores = usable_cpu_count() if cores is None else int(cores)
    return max(0, min(AUTO_WORKERS_MAX, cores - 1))

DatasetFactory = Callable[[], Dataset]


class DetectionDataModule(L.LightningDataModule):
    """Train / val detection loaders; batches are ``(list of images [3, H_i, W_i], list of targets)``.

    ``train_dataset_factory`` / ``val_dataset_factory`` are zero-argument callables (e.g.
    ``functools.partial`` or a Hydra ``_partial_: true`` node) that build the data sets in
    ``setup()``. Training batches are shuffled with a ``torch.Generator`` seeded from ``seed``
    (reproducible order; it also seeds the worker base seeds). Workers are persistent when
    ``num_workers > 0``. ``val_batch_size`` defaults to ``batch_size``.

    ``aspect_ratio_grouping``: training batches of more than one image hold only landscape or only
    portrait images (:class:`~frcnn.data.sampler.AspectRatioBatchSampler` over the same seeded shuffle),
    when the data set knows its image sizes (``image_size_hw(i)``). The train and val sets must have
    the same ``class_names``.

    ``resume_step``: in a single process, training batches start at this step of the seeded
    sequence and each item's augmentation is seeded from (seed, step, index)
    (:mod:`frcnn.data.resumable`), so a stage resumed mid-epoch continues exactly; the recipe
    sets it from the checkpoint it resumes (0 for a fresh stage).

    ``sampler``: ``uniform`` (each image once an epoch, shuffled) or ``repeat_factor`` (LVIS's repeat-factor
    sampling with threshold ``repeat_thresh``: :class:`~frcnn.data.sampler.RepeatFactorSampler`, an epoch of
    as many images as the set has, images of rare classes drawn more often; grouping applies on top). Its
    loader is the resumable one in every process: under DDP the sampler deals each rank its share itself
    (``shards_itself``: the Trainer must not inject a DistributedSampler) and the val loader is dealt out
    here as Lightning would; :meth:`evaluation_dataloader` is the whole val split.
    """

    def __init__(
        self,
        train_dataset_factory: DatasetFactory,
        val_dataset_factory: DatasetFactory,
        batch_size: int = 2,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
        seed: int = 0,
        aspect_ratio_grouping: bool = False,
        sampler: str = "uniform",
        repeat_thresh: float = 0.3,
    ):
        super().__init__()
        self.train_dataset_factory = train_dataset_factory
        self.val_dataset_factory = val_dataset_factory
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size) if val_batch_size is not None else self.batch_size
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.aspect_ratio_grouping = bool(aspect_ratio_grouping)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r}; allowed: {list(SAMPLERS)}")
        self.sampler = sampler
        self.repeat_thresh = float(repeat_thresh)
        self._repeat_factors = None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.resume_step = 0

    def setup(self, stage: str | None = None) -> None:
        """Build both data sets once (idempotent; cheap for the synthetic set)."""
        if self.train_dataset is None:
            self.train_dataset = self.train_dataset_factory()
        if self.val_dataset is None:
            self.val_dataset = self.val_dataset_factory()
            train_names, val_names = tuple(self.train_dataset.class_names), tuple(self.val_dataset.class_names)
            if train_names != val_names:
                raise ValueError(f"the val set's classes {list(val_names)} differ from the train set's "
                                 f"{list(train_names)}: labels would not mean the same class")

    @property
    def class_names(self) -> tuple[str, ...]:
        """Foreground class names of the train set (label k is class_names[k - 1])."""
        self.setup()
        return tuple(self.train_dataset.class_names)

    @property
    def num_classes(self) -> int:
        """Number of foreground classes C."""
        return len(self.class_names)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        """DataLoader with list collation; seeded shuffling; persistent workers if any."""
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_detection,
            persistent_workers=self.num_workers > 0,
            generator=generator,
            drop_last=False,
        )

    def _seeded_order(self, dataset: Dataset) -> tuple[torch.Generator, Sampler]:
        """The training shuffle (or sequential order) and its generator, seeded from ``seed``."""
        generator = torch.Generator().manual_seed(self.seed)
        order = RandomSampler(dataset, generator=generator) if self.shuffle else SequentialSampler(dataset)
        return generator, order

    def _grouped_loader(self, dataset: Dataset, group_ids: list[int]) -> DataLoader:
        """Training loader whose batches come from an AspectRatioBatchSampler over the seeded shuffle."""
        generator, order = self._seeded_order(dataset)
        return DataLoader(
            dataset,
            batch_sampler=AspectRatioBatchSampler(order, group_ids, self.batch_size, drop_last=False),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_detection,
            persistent_workers=self.num_workers > 0,
            generator=generator,
        )

    @property
    def shards_itself(self) -> bool:
        """True when the loaders deal out each rank's share under DDP themselves (repeat-factor sampling):
        the Trainer then runs with ``use_distributed_sampler=False``."""
        return self.sampler == "repeat_factor"

    def repeat_factors(self):
        """Per-image repeat factors of the training set (computed once, from its annotations)."""
        if self._repeat_factors is None:
            per_image, per_class = repeat_factors(image_classes(self.train_dataset), self.repeat_thresh,
                                                  num_classes=len(self.class_names))
            log_repeat_factors(per_class, per_image, self.class_names, self.repeat_thresh)
            self._repeat_factors = per_image
        return self._repeat_factors

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        group_ids = None
        if self.aspect_ratio_grouping and self.batch_size > 1:
            group_ids = aspect_group_ids(self.train_dataset)
        if self.sampler == "repeat_factor":
            order = RepeatFactorSampler(self.repeat_factors(), seed=self.seed, num_replicas=self._world_size(),
                                        rank=self._rank())
            return self._resumable_loader(self.train_dataset, group_ids, order)
        if self._world_size() == 1:
            return self._resumable_loader(self.train_dataset, group_ids)
        if group_ids is not None:
            return self._grouped_loader(self.train_dataset, group_ids)
        return self._loader(self.train_dataset, self.batch_size, shuffle=self.shuffle)

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.global_rank) if trainer is not None else 0

    def _resumable_loader(self, dataset: Dataset, group_ids: list[int] | None,
                          order: Sampler | None = None) -> DataLoader:
        """The training loader of one process: the seeded batches from step ``resume_step`` on, items
        reseeded per (step, index) (see :mod:`frcnn.data.resumable`); ``order``: the indices' sampler
        (default the seeded shuffle)."""
        if self.resume_step > 0:  # this loader does resume mid-epoch: Lightning's warning that it cannot is wrong here
            warnings.filterwarnings("ignore", message=RESUME_WARNING)
        generator, shuffled = self._seeded_order(dataset)
        order = shuffled if order is None else order
        if group_ids is not None:
            batches = AspectRatioBatchSampler(order, group_ids, self.batch_size, drop_last=False)
        else:
            batches = BatchSampler(order, self.batch_size, drop_last=False)
        return DataLoader(
            StepSeededDataset(dataset, self.seed),
            batch_sampler=ResumeBatchSampler(batches, generator, self.seed, self.resume_step),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_detection,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation during training; under DDP with ``shards_itself`` this rank's share (DistributedSampler
        without shuffling, as Lightning injects otherwise)."""
        self.setup("validate")
        if self.shards_itself and self._world_size() > 1:
            share = DistributedSampler(self.val_dataset, num_replicas=self._world_size(), rank=self._rank(),
                                       shuffle=False)
            return DataLoader(self.val_dataset, batch_size=self.val_batch_size, sampler=share,
                              num_workers=self.num_workers, pin_memory=self.pin_memory,
                              collate_fn=collate_detection, persistent_workers=self.num_workers > 0)
        return self._loader(self.val_dataset, self.val_batch_size, shuffle=False)

    def evaluation_dataloader(self) -> DataLoader:
        """The whole val split in one process (the final evaluation)."""
        self.setup("validate")
        return self._loader(self.val_dataset, self.val_batch_size, shuffle=False)


def build_shapes_datamodule(
    num_train: int = 200,
    num_val: int = 50,
    image_size: tuple[int, int] = (256, 256),
    scales: Sequence[int] = (256,),
    max_size: int = 1000,
    hflip_prob: float = 0.5,
    batch_size: int = 2,
    num_workers: int = 0,
    seed: int = 0,
    val_batch_size: int | None = None,
    min_objects: int = 1,
    max_objects: int = 4,
) -> DetectionDataModule:
    """DetectionDataModule over ShapesDataset "train" / "val" splits generated from ``seed``.

    Training uses ``DetectionTransform(scales, max_size, hflip_prob, train=True, seed=seed)``; validation
    uses ``scales[0]`` without flipping. With the default 256 x 256 images and scales=(256,)
    the paper rule leaves the image size unchanged.
    """
    image_size_hw = (int(image_size[0]), int(image_size[1]))
    common = dict(image_size=image_size_hw, min_objects=min_objects, max_objects=max_objects, seed=seed)
    train_factory = functools.partial(
        ShapesDataset,
        split="train",
        num_images=num_train,
        transform=DetectionTransform(
            scales=scales, max_size=max_size, hflip_prob=hflip_prob, train=True, seed=seed
        ),
        **common,
    )
    val_factory = functools.partial(
        ShapesDataset,
        split="val",
        num_images=num_val,
        transform=DetectionTransform(scales=scales, max_size=max_size, hflip_prob=0.0, train=False),
        **common,
    )
    return DetectionDataModule(
        train_factory,
        val_factory,
        batch_size=batch_size,
        val_batch_size=val_batch_size,
        num_workers=num_workers,
        pin_memory=False,
        shuffle=True,
        seed=seed,
    )
