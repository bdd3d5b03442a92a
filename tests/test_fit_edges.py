"""Values fitted to the training set at their edges (issue 34, item 5): frcnn.engine.fit_to_data.

``rpn.anchor_scales=auto``: an octave ladder of n = floor(log2(p95 / p5) + 0.5) + 1 scales (3 to 5), centred
on sqrt(p5 p95), each rounded to whole px; the tests sit on either side of the half-octave where n steps.
``rpn.min_size=auto``: the paper's 16 px, or half the 1st-percentile SHORTER box side in original-image px
(rounded down to 0.5 px, at least 1 px) when that is less; the tests use thin boxes whose longer side (or
sqrt(w h)) would keep the paper's 16, and images resized by factors 0.5 to 4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frcnn.engine.fit_to_data import anchor_scales_for_box_sides, fit_config_to_data, min_proposal_size_for
from frcnn.modeling.rpn import ProposalSettings, RegionProposalNetwork

P5 = 16.0  # the lower box side of the ladder tests


def two_sizes(high: float) -> list[float]:
    """50 sides of 16 px and 50 of ``high``: p5 = 16, p95 = high exactly (numpy's linear percentiles)."""
    return [P5] * 50 + [high] * 50


# ------------------------------------------------------------------------------ anchor scales: octave rounding
@pytest.mark.parametrize("octaves, expected", [
    # 2.5 octaves: floor(3.0) + 1 = 4 scales around sqrt(16 * 16 * 2^2.5) = 16 * 2^1.25 = 38.05:
    # 16 * 2^(1.25 + k - 1.5) for k = 0..3: 13.45, 26.91, 53.82, 107.63 -> 13, 27, 54, 108
    # (Python's round(2.5) is 2: a ladder rounded half-to-even would hold 3 scales here)
    (2.5, [13, 27, 54, 108]),
    # just under 2.5: floor(2.999...) + 1 = 3 scales, 16 * 2^(1.25 + k - 1): 19.03, 38.05, 76.11 -> 19, 38, 76
    (2.5 - 1e-9, [19, 38, 76]),
    # 3.5 octaves: 5 scales around 16 * 2^1.75 = 53.82: 13.45, 26.91, 53.82, 107.63, 215.27
    (3.5, [13, 27, 54, 108, 215]),
    # just under 3.5: 4 scales around 53.82: 19.03, 38.05, 76.11, 152.22
    (3.5 - 1e-9, [19, 38, 76, 152]),
    # 1.5 octaves: floor(2.0) + 1 = 3 scales (and 3 is also the floor of the clamp)
    (1.5, [13, 27, 54]),
    # 4.5 octaves would give 6 scales: clamped to 5, around 16 * 2^2.25 = 76.11: 19.03 ... 304.44
    (4.5, [19, 38, 76, 152, 304]),
])
def test_anchor_scale_count_steps_at_the_half_octave(octaves, expected):
    assert anchor_scales_for_box_sides(two_sizes(P5 * 2.0 ** octaves)) == expected


@pytest.mark.parametrize("side, expected", [
    # one size: 0 octaves -> 3 scales (the paper's number) of side / 2, side, 2 side
    (44.8, [22, 45, 90]),  # 22.4 -> 22, 89.6 -> 90: rounded to the nearest px (not floored, not ceiled)
    (45.2, [23, 45, 90]),  # 22.6 -> 23, 90.4 -> 90
])
def test_anchor_scales_round_to_the_nearest_pixel(side, expected):
    assert anchor_scales_for_box_sides([side] * 20) == expected


def test_anchor_scales_ignore_the_outer_five_percent():
    """4 tiny (1 px) and 4 huge (10^4 px) boxes among 100: p5 and p95 are still 64 px (numpy's index 4.95 / 94.05
    falls between two 64s), so the ladder is the one-size ladder 32, 64, 128."""
    sides = [1.0] * 4 + [64.0] * 92 + [1e4] * 4
    assert anchor_scales_for_box_sides(sides) == [32, 64, 128]
    # a 5th tiny box moves p5 to 1 + 0.95 * 63 = 60.85 px: the centre moves, the count stays 3
    assert anchor_scales_for_box_sides([1.0] * 5 + [64.0] * 91 + [1e4] * 4) == [31, 62, 125]


# ------------------------------------------------------------------------------ minimum size: 16 px and below
@pytest.mark.parametrize("shorter, expected", [
    (32.0, 16.0),  # half is 16: the paper's value, the edge
    (40.0, 16.0),  # never above 16
    (31.99, 15.5),  # 15.995 rounded DOWN to 0.5 px (round() would give 16)
    (31.0, 15.5),
    (30.99, 15.0),
    (11.0, 5.5),
    (3.0, 1.5),
    (2.99, 1.0),  # 1.495 -> 1.0
    (1.99, 1.0),  # 0.995 -> 0.5, then at least 1 px
])
def test_min_size_edges(shorter, expected):
    assert min_proposal_size_for([shorter] * 100) == expected


# ------------------------------------------------------------------------------ fit_config_to_data on boxes
class BoxesDataset:
    """A data set of blank images with the given boxes (what training_annotations reads: ``raw``)."""

    def __init__(self, image_hw: tuple[int, int], boxes_per_image: list[list[list[float]]]):
        self.image_hw, self.boxes = image_hw, boxes_per_image

    def __len__(self) -> int:
        return len(self.boxes)

    def raw(self, index: int):
        boxes = np.asarray(self.boxes[index], dtype=np.float32).reshape(-1, 4)
        return np.zeros((*self.image_hw, 3), dtype=np.uint8), boxes, np.ones(len(boxes), dtype=np.int64)


def fitted_rpn(compose_cfg, tmp_path, dataset, scale: int = 256) -> dict:
    cfg = compose_cfg(["rpn.anchor_scales=auto", "rpn.min_size=auto", f"data.scales=[{scale}]",
                       "data.max_size=1000"], tmp_path)
    return fit_config_to_data(cfg, dataset)["rpn"]


def box(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y + h]


def test_min_size_is_fitted_from_the_shorter_side(compose_cfg, tmp_path):
    """Thin boxes 10 x 60 (and 60 x 10), 256-px images at scale 256 (factor 1): the shorter side 10 px gives
    min_size 5; the longer side (60 -> 30 -> the paper's 16) or sqrt(w h) (24.5 -> 12) would not."""
    dataset = BoxesDataset((256, 256), [[box(20, 20, 10, 60), box(100, 100, 60, 10)]] * 10)
    assert fitted_rpn(compose_cfg, tmp_path, dataset)["min_size"] == 5.0


@pytest.mark.parametrize("shorter, expected", [(32, 16.0), (31, 15.5), (40, 16.0)])
def test_min_size_leaves_16_only_below_32_px_boxes(compose_cfg, tmp_path, shorter, expected):
    """Boxes of shorter side 32 px keep the paper's 16; 31 px moves it to 15.5 (longer side 200 px either way)."""
    dataset = BoxesDataset((256, 256), [[box(10, 10, shorter, 200), box(50, 20, 200, shorter)]] * 5)
    assert fitted_rpn(compose_cfg, tmp_path, dataset)["min_size"] == expected


@pytest.mark.parametrize("image_side, factor", [(64, 4.0), (128, 2.0), (256, 1.0), (512, 0.5)])
def test_fitted_min_size_keeps_a_proposal_on_the_smallest_object(compose_cfg, tmp_path, image_side, factor):
    """rpn.min_size is in ORIGINAL-image px (the authors' proposal layer: min_size x im_scale; frcnn.modeling.rpn
    multiplies it by each image's resize factor), so it is fitted from the boxes' original sides.
    Square images of ``image_side`` px at data.scales=[256] are resized by ``factor``; every object is 12 x 40
    original px (12 factor x 40 factor at the network input): min_size = 12 / 2 = 6 original px, i.e. 6 factor px
    at the input, half the object's shorter side there. (Fitted from the input sides instead, factor 4 would
    give min(16, 48 / 2) = 16 original px = 64 input px, more than the 48-px object: none of its proposals kept.)
    A proposal exactly on the object goes through the proposal layer with the fitted value."""
    dataset = BoxesDataset((image_side, image_side), [[box(4, 4, 12, 40), box(30, 10, 40, 12)]] * 4)
    min_size = fitted_rpn(compose_cfg, tmp_path, dataset)["min_size"]
    assert min_size == 6.0
    input_side = 256
    on_object = torch.tensor([[0.0, 0.0, 12 * factor, 40 * factor]])  # network-input px
    rpn = RegionProposalNetwork(in_channels=1)
    settings = ProposalSettings(pre_nms_top_n=-1, post_nms_top_n=10, min_size_px=min_size)
    proposals, _ = rpn.propose(on_object, torch.zeros(1, 1), torch.zeros(1, 1, 4), [(input_side, input_side)],
                               settings, image_scales=[factor])
    assert torch.equal(proposals[0], on_object)
