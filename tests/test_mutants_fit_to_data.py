"""frcnn.engine.fit_to_data where tests/test_fit_edges.py and tests/test_own_data.py left mutants alive
(scripts/mutation_test.sh): stage lengths in epochs under several processes (devices x nodes), Caffe's
iter_size (batches_per_update), every stage of the alternating recipe, epochs without an ``auto`` value, the
one-image and empty training sets, and the logged lines."""

import logging

import numpy as np
import pytest

from frcnn.engine.fit_to_data import (
    anchor_scales_for_box_sides,
    fit_config_to_data,
    min_proposal_size_for,
    steps_for_epochs,
    training_boxes_wh,
    training_boxes_wh_and_factors,
)
from frcnn.errors import ConfigError


class ImagesWithBoxes:
    """``count`` blank ``hw`` images, each with the given boxes (what ``training_annotations`` reads: ``raw``)."""

    def __init__(self, count: int, hw=(100, 100), boxes=((10.0, 10.0, 50.0, 30.0),)):
        self.count, self.hw, self.boxes = count, hw, np.asarray(boxes, dtype=np.float32).reshape(-1, 4)

    def __len__(self) -> int:
        return self.count

    def raw(self, index: int):
        return np.zeros((*self.hw, 3), dtype=np.uint8), self.boxes, np.ones(len(self.boxes), dtype=np.int64)


def config(schedule: dict, recipe: str = "joint", trainer: dict | None = None, anchor_scales=(128, 256, 512),
           min_size=16.0) -> dict:
    """The part of a resolved config fit_config_to_data reads."""
    return {"rpn": {"anchor_scales": anchor_scales, "min_size": min_size}, "recipe": {"name": recipe},
            "schedule": {recipe: schedule}, "trainer": trainer if trainer is not None else {},
            "data": {"scales": [100], "max_size": 1000}}


def joint(**stage) -> dict:
    return {"epochs": 1, "lr_epochs": [0.5], "max_steps": None, "lr_steps": None, "images_per_batch": 2, **stage}


@pytest.mark.parametrize("trainer, processes", [
    ({}, 1),  # no devices, no nodes: one process
    ({"devices": 1}, 1),
    ({"devices": 2}, 2),
    ({"devices": [0, 1, 2]}, 3),  # a list of device ids: one process each
    ({"devices": "auto"}, 1),  # not a count: one process
    ({"devices": 0}, 1),  # no device is no count either
    ({"devices": -1}, 1),
    ({"devices": 2, "num_nodes": 3}, 6),
    ({"num_nodes": 2}, 2),
])
def test_an_epoch_is_split_over_every_process(trainer, processes, caplog):
    """12 images, 2 per mini-batch per process: an epoch is ceil(12 / (2 x processes)) mini-batches."""
    with caplog.at_level(logging.INFO, logger="frcnn.engine.fit_to_data"):
        fitted = fit_config_to_data(config(joint(epochs=2), trainer=trainer), ImagesWithBoxes(12))
    per_epoch = -(-12 // (2 * processes))
    assert fitted["schedule"]["joint"]["max_steps"] == 2 * per_epoch
    assert f"{2 * processes} per mini-batch" in caplog.text


def test_a_joint_update_of_several_batches_counts_all_their_images(caplog):
    """batches_per_update (Caffe's iter_size) 2 x 2 images: 4 images per update, 3 updates per epoch of 12;
    the line logged says so."""
    with caplog.at_level(logging.INFO, logger="frcnn.engine.fit_to_data"):
        fitted = fit_config_to_data(config(joint(batches_per_update=2)), ImagesWithBoxes(12))
    assert fitted["schedule"]["joint"]["max_steps"] == 3 and fitted["schedule"]["joint"]["lr_steps"] == [2]
    assert caplog.messages == ["schedule.joint: 1 epochs of 12 images, 4 per mini-batch -> max_steps=3, lr_steps=[2] "
                               "(lr_epochs [0.5])"]


def test_every_alternating_stage_is_fitted_and_logged(caplog):
    schedule = {"stage1_rpn": joint(epochs=2, lr_epochs=[1]), "stage1_det": joint(epochs=1, images_per_batch=4),
                "stage2_rpn": joint(epochs=0.5, lr_epochs=[]), "stage2_det": joint(epochs=3, lr_epochs=None)}
    with caplog.at_level(logging.INFO, logger="frcnn.engine.fit_to_data"):
        fitted = fit_config_to_data(config(schedule, recipe="alternating"), ImagesWithBoxes(12))
    stages = fitted["schedule"]["alternating"]
    assert [(s["max_steps"], s["lr_steps"]) for s in stages.values()] == [(12, [6]), (3, [2]), (3, []), (18, [])]
    assert schedule["stage1_rpn"]["max_steps"] is None  # the input is left as it was
    assert caplog.messages == [
        "schedule.alternating.stage1_rpn: 2 epochs of 12 images, 2 per mini-batch -> max_steps=12, lr_steps=[6] "
        "(lr_epochs [1])",
        "schedule.alternating.stage1_det: 1 epochs of 12 images, 4 per mini-batch -> max_steps=3, lr_steps=[2] "
        "(lr_epochs [0.5])",
        "schedule.alternating.stage2_rpn: 0.5 epochs of 12 images, 2 per mini-batch -> max_steps=3, lr_steps=[] "
        "(lr_epochs [])",
        "schedule.alternating.stage2_det: 3 epochs of 12 images, 2 per mini-batch -> max_steps=18, lr_steps=[] "
        "(lr_epochs [])",
    ]


def test_a_stage_given_in_steps_is_left_alone():
    cfg = config(joint(epochs=None, max_steps=30, lr_steps=[20]))
    assert fit_config_to_data(cfg, None) == cfg  # nothing to fit: the data set is not read


@pytest.mark.parametrize("epochs, lr_epochs, expected", [
    (0.01, [0.01], (1, [1])),  # never fewer than 1 step
    (0.5, [0.25], (1, [1])),  # round(0.5) = 0 -> 1; round(0.25) = 0 -> 1
    (2, [1.5], (2, [2])),  # round(1.5) = 2
])
def test_steps_for_epochs_of_one_image(epochs, lr_epochs, expected):
    assert steps_for_epochs(epochs, lr_epochs, num_images=1, images_per_batch=2) == expected


def test_an_empty_training_set_is_named():
    with pytest.raises(ValueError, match=r"^the training set is empty \(0 images\)$"):
        steps_for_epochs(1, [], num_images=0, images_per_batch=2)


class GradedBoxes:
    """10 images of 200 x 200 px, 100 square boxes in all of sides 10, 11, ..., 109 px."""

    def __len__(self) -> int:
        return 10

    def raw(self, index: int):
        sides = np.arange(10 * index, 10 * index + 10, dtype=np.float32) + 10
        boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
        return np.zeros((200, 200, 3), dtype=np.uint8), boxes, np.ones(10, dtype=np.int64)


def test_auto_anchor_scales_and_min_size_are_logged_with_what_they_came_from(caplog):
    """At data.scales=[200] the 200-px images keep their size. Box sides 10 .. 109 px: p5 = 10 + 0.05 x 99 =
    14.95, p95 = 104.05, log2(104.05 / 14.95) = 2.80 octaves -> 4 scales around sqrt(14.95 x 104.05) = 39.44:
    13.94, 27.89, 55.78, 111.56 -> 14, 28, 56, 112. The 1st-percentile shorter side is 10.99 px: half is 5.495,
    rounded down to 0.5 px: 5 (the paper's 16 is larger). Logged to 0.1 px (14.95 and 104.05 are a hair under)."""
    cfg = config(joint(epochs=None, max_steps=10, lr_steps=[8]), anchor_scales="auto", min_size="auto")
    cfg["data"]["scales"] = [200]
    with caplog.at_level(logging.INFO, logger="frcnn.engine.fit_to_data"):
        fitted = fit_config_to_data(cfg, GradedBoxes())
    assert fitted["rpn"]["anchor_scales"] == [14, 28, 56, 112] and fitted["rpn"]["min_size"] == 5.0
    assert caplog.messages == [
        "rpn.anchor_scales=auto -> [14, 28, 56, 112] px: an octave ladder over the box sides sqrt(w h) p5 14.9 px "
        ".. p95 104.0 px (100 training boxes at data.scales=[200])",
        "rpn.min_size=auto -> 5 px of the original images: the paper's 16 px or half the 1st-percentile shorter box "
        "side (11.0 original px), the smaller (100 training boxes at data.scales=[200])",
    ]


def test_one_box_is_enough_to_fit_to():
    fitted = fit_config_to_data(config(joint(), anchor_scales="auto", min_size="auto"), ImagesWithBoxes(1))
    # one 40 x 20 box (sqrt(w h) = 28.3) in a 100-px image at scale 100: scales 14, 28, 57; min_size 10
    assert fitted["rpn"]["anchor_scales"] == [14, 28, 57] and fitted["rpn"]["min_size"] == 10.0


def test_auto_values_need_boxes_and_say_which_numbers_to_give():
    with pytest.raises(ConfigError, match=r"^rpn\.anchor_scales / rpn\.min_size = auto: the training set has no "
                                          r"boxes to fit them to; give numbers \(e\.g\. rpn\.anchor_scales=\[128,256,512\] "
                                          r"rpn\.min_size=16\)$"):
        fit_config_to_data(config(joint(), anchor_scales="auto"), ImagesWithBoxes(3, boxes=()))


def test_an_empty_data_set_has_no_boxes_of_either_shape():
    wh, factors = training_boxes_wh_and_factors(ImagesWithBoxes(0), [600], 1000)
    assert wh.shape == (0, 2) and factors.shape == (0,) and training_boxes_wh(ImagesWithBoxes(0), [600], 1000).shape == (0, 2)
    with pytest.raises(ConfigError, match="the training set has no boxes"):
        fit_config_to_data(config(joint(), min_size="auto"), ImagesWithBoxes(0))


@pytest.mark.parametrize("fit", [anchor_scales_for_box_sides, min_proposal_size_for])
def test_sides_that_are_no_size_are_left_out(fit):
    """Zero, negative, NaN and infinite sides (degenerate boxes) do not move the fitted value."""
    sides = [40.0] * 20 + [30.0] * 5
    assert fit(sides + [0.0, -5.0, -1e9, float("nan"), float("inf")]) == fit(sides)


def test_no_usable_side_is_named():
    with pytest.raises(ValueError, match=r"^no boxes to fit anchor scales to$"):
        anchor_scales_for_box_sides([0.0, float("nan")])
    with pytest.raises(ValueError, match=r"^no boxes to fit the minimum proposal size to$"):
        min_proposal_size_for([-1.0, float("inf")])


def test_one_box_side_is_enough():
    assert min_proposal_size_for([20.0]) == 10.0 and anchor_scales_for_box_sides([20.0]) == [10, 20, 40]


def test_a_ladder_of_tiny_objects_starts_at_1_px():
    """Sides of 1 px: the ladder 0.5, 1, 2 px rounds to 0, 1, 2 and is held at 1 px at least."""
    assert anchor_scales_for_box_sides([1.0] * 20) == [1, 1, 2]


def test_float32_sides_are_fitted_in_float64():
    """Sides given in float32 (a box array) at a rounding edge: in float64 the 1st percentile of these two is
    31.9999997 px (min_size 15.5) and p95 / p5 just over 2^2.5 (4 scales); computed in float32 they would be 32.0
    (16) and just under (3 scales)."""
    assert min_proposal_size_for(np.array([21.208893, 1100.3196], dtype=np.float32)) == 15.5
    assert anchor_scales_for_box_sides(np.array([9.136217, 72.90833], dtype=np.float32)) == [10, 21, 41, 83]
