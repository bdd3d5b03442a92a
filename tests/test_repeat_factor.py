"""Repeat-factor sampling of rare classes (``data.sampler=repeat_factor``, issue 35 item 5): LVIS's factors
against a hand computation, the sampling frequencies they give, epochs as a function of (seed, epoch) so a
resumed loader replays the same batches, aspect grouping on top, disjoint DDP shares, and the config keys.
"""

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from frcnn.config.schema import check_schema
from frcnn.data.datamodule import DetectionDataModule
from frcnn.data.sampler import (
    AspectRatioBatchSampler,
    RepeatFactorSampler,
    image_classes,
    log_repeat_factors,
    repeat_factors,
)
from frcnn.errors import ConfigError


def test_repeat_factors_match_a_hand_computation():
    """10 pictures: class 1 in all, class 2 in one (f = 0.1), class 3 in four (f = 0.4), one picture without
    boxes. t = 0.5: r(1) = max(1, sqrt(0.5)) = 1, r(2) = sqrt(5), r(3) = sqrt(1.25); a picture takes its
    classes' largest factor, 1 without boxes."""
    classes = [np.array([1, 2])] + [np.array([1, 3])] * 4 + [np.array([1])] * 4 + [np.array([], dtype=np.int64)]
    classes[-2] = np.array([1, 1, 1])  # a class counted once per picture, however many boxes
    per_image, per_class = repeat_factors(classes, 0.5, num_classes=4)
    assert per_class.tolist() == pytest.approx([1.0, 1.0, math.sqrt(5), math.sqrt(1.25), 1.0])  # class 4: absent
    assert per_image.tolist() == pytest.approx([math.sqrt(5)] + [math.sqrt(1.25)] * 4 + [1.0] * 5)
    line = log_repeat_factors(per_class, per_image, ["a", "b", "c", "d"], 0.5)  # mean factor 1.171
    assert "b r=2.24 (1.91x), c r=1.12 (0.95x);" in line and "a picture of factor 1: 0.85x" in line
    with pytest.raises(ValueError, match="repeat_thresh"):
        repeat_factors(classes, 0.0)


def test_whole_rounds_repeat_each_picture_by_its_integer_factor():
    """Integer factors leave nothing to chance: an epoch of sum(r) draws lists picture i exactly r_i times."""
    sampler = RepeatFactorSampler([1, 2, 3, 1], seed=5, epoch_length=7)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert Counter(sampler) == {0: 1, 1: 2, 2: 3, 3: 1}


def test_sampling_frequencies_follow_the_repeat_factors():
    """Over 4000 epochs of N = 5 draws picture i is drawn r_i / sum(r) of the time (stochastic rounding of
    the fractional parts): factors 1, 2.236, 1.118, 1, 1.5 -> 0.146, 0.326, 0.163, 0.146, 0.219."""
    factors = np.array([1.0, math.sqrt(5), math.sqrt(1.25), 1.0, 1.5])
    sampler = RepeatFactorSampler(factors, seed=0)
    counts = np.zeros(len(factors))
    for epoch in range(4000):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == len(factors)  # an epoch is as long as the set
        np.add.at(counts, drawn, 1)
    expected = factors / factors.sum()
    assert counts / counts.sum() == pytest.approx(expected, abs=0.01)  # binomial sd ~0.003


def test_an_epoch_is_a_function_of_seed_and_epoch():
    factors = np.linspace(1.0, 3.0, 20)

    def epoch(seed, number):
        sampler = RepeatFactorSampler(factors, seed=seed)
        sampler.set_epoch(number)
        return list(sampler)

    assert epoch(0, 3) == epoch(0, 3)
    assert epoch(0, 3) != epoch(0, 4) and epoch(0, 3) != epoch(1, 3)


class Pictures(torch.utils.data.Dataset):
    """Annotations only: picture i is landscape unless i % 3 == 0, holds class 1, and class 2 when i % 5 == 0."""

    class_names = ("common", "rare")

    def __init__(self, n=30):
        self.n = n

    def __len__(self):
        return self.n

    def image_size_hw(self, index):
        return (40, 30) if index % 3 == 0 else (30, 40)

    def raw(self, index):
        labels = np.array([1, 2] if index % 5 == 0 else [1], dtype=np.int64)
        return np.zeros((*self.image_size_hw(index), 3), np.uint8), np.zeros((len(labels), 4), np.float32), labels

    def __getitem__(self, index):
        return index


class FakeTrainer:
    def __init__(self, world_size=1, global_rank=0):
        self.world_size, self.global_rank = world_size, global_rank


def repeat_factor_module(resume_step=0, world_size=1, rank=0, grouping=True):
    module = DetectionDataModule(lambda: Pictures(), lambda: Pictures(8), batch_size=2, seed=3,
                                 aspect_ratio_grouping=grouping, sampler="repeat_factor", repeat_thresh=0.5)
    module.trainer = FakeTrainer(world_size, rank)
    module.resume_step = resume_step
    return module


def training_batches(module, epochs=3):
    """{step: [picture indices]} of the first epochs, as Lightning iterates the loader's batch sampler."""
    batches = module.train_dataloader().batch_sampler
    steps = {}
    for epoch in range(epochs):
        batches.sampler.set_epoch(epoch)  # what Lightning calls before each epoch
        steps.update({batch[0][0]: [index for _, index in batch] for batch in batches})
    return steps


def test_the_training_loader_draws_by_repeat_factor_with_aspect_groups_and_resumes_exactly():
    module = repeat_factor_module()
    per_class = repeat_factors(image_classes(Pictures()), 0.5)[1]
    assert per_class[2] == pytest.approx(math.sqrt(0.5 / 0.2))  # the rare class: in 6 of 30 pictures
    loader = module.train_dataloader()
    inner = loader.batch_sampler.batch_sampler
    assert isinstance(inner, AspectRatioBatchSampler) and isinstance(inner.sampler, RepeatFactorSampler)
    steps = training_batches(module)
    per_epoch = len(loader.batch_sampler)
    assert sorted(steps) == list(range(3 * per_epoch))  # every epoch has the same number of steps
    epochs = [[steps[step] for step in range(e * per_epoch, (e + 1) * per_epoch)] for e in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # each epoch its own draw
    for epoch in range(10):  # whatever an epoch's mix of orientations, it has len() batches (step numbers rely on it)
        inner.sampler.set_epoch(epoch)
        assert len(list(inner)) == len(inner) == per_epoch
    for batch in steps.values():  # one orientation per batch
        assert len({Pictures().image_size_hw(i) for i in batch}) == 1
    rare_share = np.mean([i % 5 == 0 for batch in steps.values() for i in batch])
    assert rare_share > 0.2 + 0.05  # rare pictures (1 in 5) drawn more often: r = 1.58 -> 0.28
    resumed = training_batches(repeat_factor_module(resume_step=per_epoch + 3))
    assert resumed == {step: batch for step, batch in steps.items() if step >= per_epoch + 3}


@pytest.mark.parametrize("grouping", [False, True])
def test_ddp_ranks_take_disjoint_shares_of_one_epoch(grouping):
    """Two ranks: the same number of steps; their indices together are the epoch's draws (padded to a multiple
    of 2), positions dealt out alternately, so no draw is trained twice."""
    sampler = RepeatFactorSampler(repeat_factors(image_classes(Pictures(31)), 0.5)[0], seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    shares = []
    for rank in (0, 1):
        share = RepeatFactorSampler(sampler.factors, seed=3, num_replicas=2, rank=rank)
        share.set_epoch(2)
        shares.append(list(share))
    assert len(shares[0]) == len(shares[1]) == 16
    assert [i for pair in zip(*shares) for i in pair] == whole + whole[:1]  # padded with the epoch's first draw
    steps = [training_batches(repeat_factor_module(world_size=2, rank=rank, grouping=grouping)) for rank in (0, 1)]
    assert sorted(steps[0]) == sorted(steps[1])
    module = repeat_factor_module(world_size=2, rank=1)
    assert module.shards_itself  # the recipe's Trainer then leaves the loaders alone (use_distributed_sampler=False)
    assert list(module.val_dataloader().sampler) == [1, 3, 5, 7]
    assert list(module.evaluation_dataloader().sampler) == list(range(8))  # the final evaluation: the whole split


def test_repeat_factor_keys_are_checked(compose_cfg, tmp_path):
    cfg = compose_cfg(["data.sampler=repeat_factor", "data.repeat_thresh=0.3"], tmp_path)
    check_schema(cfg)
    for override, message in (("data.sampler=repeat", "data.sampler='repeat' is not allowed; allowed: uniform, "
                                                      "repeat_factor; did you mean 'repeat_factor'"),
                              ("data.repeat_thresh=0", "data.repeat_thresh=0 is out of range: must be in (0, 1]"),
                              ("data.repeat_thresh=1.5", "data.repeat_thresh=1.5 is out of range"),
                              ("data.repeat_thresh=often", "data.repeat_thresh: expected a number")):
        with pytest.raises(ConfigError) as err:
            check_schema(compose_cfg([override], tmp_path))
        assert message in str(err.value)


@pytest.mark.slow
def test_ddp_run_with_repeat_factor_and_keep_best(tmp_path):
    """Two processes through the CLI (gloo): repeat-factor sampling deals the ranks their shares with the
    Trainer's own DistributedSampler off, validation runs on each rank's half of the val split, and the final
    evaluation on rank 0 sees the whole split; keep_best picks a validated step."""
    from tests.test_ddp_cpu import DDP, ONE_NODE, ONE_THREAD, run_cli

    result = run_cli(*DDP, *ONE_NODE, "recipe=joint", "schedule.joint.max_steps=4", "schedule.joint.images_per_batch=2",
                     "data.sampler=repeat_factor", "data.repeat_thresh=0.5", "recipe.val_every_n_epochs=1",
                     "recipe.keep_best=map_50", f"hydra.run.dir={tmp_path}", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_images"] == 4  # the whole val split
    assert metrics["model_selection"]["best_step"] in (2, 4) and (tmp_path / "joint" / "DONE").read_text().strip() == "4"
    assert "repeat-factor sampling (data.repeat_thresh=0.5)" in result.stdout + result.stderr
