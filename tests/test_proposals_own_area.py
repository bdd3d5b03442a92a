"""Proposals from the picture, not its padding (issue 38, item 1).

Pictures of different sizes are zero-padded to one batch; the anchors centred over the padding a larger
picture adds must not compete for a smaller picture's proposals (the authors run one picture per pass and
never have them). A picture alone keeps every anchor: its proposals are bit-identical to the layer
without the rule. Anchor index -> position: index = (y * W_f + x) * k + anchor (grid_anchors), and the
position's window starts on picture i when y * stride < H_i and x * stride < W_i (checked here from the
index, independently of ``centred_on_own_area``).
"""

import math

import pytest
import torch

import frcnn.modeling.rpn as rpn_module
from frcnn.modeling.anchors import centred_on_own_area, grid_anchors
from frcnn.modeling.rpn import ProposalSettings, RegionProposalNetwork

STRIDE = 16
# different shapes, landscape and portrait; residues mod 16 from 0 to 15 (an edge position centred up to
# 8 px beyond the picture belongs to it, as in a pass of the picture alone)
SHAPES = [(240, 320), (177, 250), (320, 241), (200, 199)]


def every_anchor(monkeypatch):
    """The proposal layer without the rule (what it was before issue 38)."""
    monkeypatch.setattr(rpn_module, "centred_on_own_area",
                        lambda anchors, sizes, stride: torch.ones(len(sizes), anchors.shape[0], dtype=torch.bool))


def positions_on_picture(anchor_index: torch.Tensor, feature_hw, num_per_location: int, image_hw) -> torch.Tensor:
    """bool [N]: the anchors' window starts on the picture (y * stride < H_i, x * stride < W_i)."""
    location = anchor_index // num_per_location
    y, x = location // feature_hw[1], location % feature_hw[1]
    return (y * STRIDE < image_hw[0]) & (x * STRIDE < image_hw[1])


def make_rpn() -> RegionProposalNetwork:
    torch.manual_seed(0)
    rpn = RegionProposalNetwork(8, anchor_scales_px=(32, 64, 128), stride=STRIDE,
                                train_proposals=ProposalSettings(2000, 300, min_size_px=4),
                                test_proposals=ProposalSettings(600, 100, min_size_px=4))
    with torch.no_grad():  # scores and boxes that vary (the paper's N(0, 0.01) gives nearly equal ones)
        for layer in (rpn.head.conv, rpn.head.cls_logits, rpn.head.bbox_deltas):
            layer.weight.normal_(std=0.3)
    return rpn


def padded_batch_features(shapes, generator) -> torch.Tensor:
    """[B, 8, H_f, W_f] for the batch padded to the largest sides; random everywhere, the padding too (the
    conv layers' outputs over the padding are not zeros)."""
    height = max(math.ceil(h / STRIDE) for h, _ in shapes)
    width = max(math.ceil(w / STRIDE) for _, w in shapes)
    return torch.randn(len(shapes), 8, height, width, generator=generator)


def test_centred_on_own_area_by_hand():
    """One 16-px anchor per position of a 3 x 4 grid: centres x 8, 24, 40, 56 and y 8, 24, 40. A 33 x 40 picture
    is 48 x 48 padded alone (x 56 is over the batch's padding); a 17 x 64 picture is 32 x 64 (y 40 is)."""
    anchors = grid_anchors(torch.tensor([[-8.0, -8.0, 8.0, 8.0]]), (3, 4), STRIDE)
    mask = centred_on_own_area(anchors, [(33, 40), (17, 64), (48, 64)], STRIDE)
    assert mask.view(3, 3, 4).tolist() == [
        [[True, True, True, False]] * 3,
        [[True, True, True, True]] * 2 + [[False] * 4],
        [[True] * 4] * 3,
    ]


def test_a_picture_alone_keeps_every_anchor():
    """Any size, every residue mod the stride: the feature map of a picture alone (padded to a multiple of
    the stride) has only anchors of its own area."""
    reference = torch.tensor([[-8.0, -8.0, 8.0, 8.0], [-64.0, -32.0, 64.0, 32.0]])
    for side in range(1, 2 * STRIDE + 2):
        for other in (side, 37, 64):
            anchors = grid_anchors(reference, (math.ceil(side / STRIDE), math.ceil(other / STRIDE)), STRIDE)
            assert centred_on_own_area(anchors, [(side, other)], STRIDE).all(), (side, other)


@pytest.mark.parametrize("training", [True, False])
def test_single_picture_proposals_are_unchanged(monkeypatch, training):
    """A picture alone: bit-identical boxes and scores with and without the rule (train and test settings)."""
    rpn = make_rpn().train(training)
    gen = torch.Generator().manual_seed(1)
    for shape in SHAPES:
        features = padded_batch_features([shape], gen)
        with torch.no_grad():
            got, got_scores, _ = rpn(features, [shape])
            with monkeypatch.context() as patch:
                every_anchor(patch)
                before, before_scores, _ = rpn(features, [shape])
        assert got[0].shape[0] > 0
        assert torch.equal(got[0], before[0]) and torch.equal(got_scores[0], before_scores[0]), shape


@pytest.mark.parametrize("num_pictures", [2, 4])
@pytest.mark.parametrize("training", [True, False])
def test_batched_proposals_come_from_anchors_over_their_picture(monkeypatch, num_pictures, training):
    """A 2- and a 4-picture pass of different shapes: every proposal of picture i comes from an anchor whose
    window lies on it, and ``propose`` returns exactly the boxes of those anchors. The control: without the
    rule, anchors over the padding take some of the smaller pictures' proposals."""
    rpn = make_rpn().train(training)
    shapes = SHAPES[:num_pictures]
    features = padded_batch_features(shapes, torch.Generator().manual_seed(num_pictures))
    feature_hw = tuple(features.shape[-2:])
    anchors = rpn.anchor_generator(feature_hw)
    k = rpn.anchor_generator.num_anchors_per_location
    settings = rpn.train_proposals if training else rpn.test_proposals
    with torch.no_grad():
        logits, deltas = rpn.head(features)
        boxes, _, picked = rpn.select_anchors(anchors, logits, deltas, shapes, settings)
        proposals, _, _ = rpn(features, shapes)
        with monkeypatch.context() as patch:
            every_anchor(patch)
            _, _, picked_before = rpn.select_anchors(anchors, logits, deltas, shapes, settings)
    for i, shape in enumerate(shapes):
        assert picked[i].numel() > 0
        assert positions_on_picture(picked[i], feature_hw, k, shape).all(), shape
        assert torch.equal(proposals[i], boxes[i][picked[i]])
    over_padding = [int((~positions_on_picture(p, feature_hw, k, shape)).sum()) for p, shape in zip(picked_before, shapes)]
    assert sum(over_padding) > 0, over_padding  # the test would see anchors over the padding


@pytest.fixture(scope="module")
def small_detector():
    from frcnn.engine.recipes import model_config
    from frcnn.modeling.build import build_model
    from tests.conftest import compose_config

    cfg = compose_config(["backbone=small", "rpn.anchor_scales=[32,64,128]", "rpn.min_size=4"], "unused")
    torch.manual_seed(0)
    model = build_model(model_config(cfg), 5)
    with torch.no_grad():  # scores and boxes that vary, as a trained RPN's
        for layer in (model.rpn.head.cls_logits, model.rpn.head.bbox_deltas):
            layer.weight.normal_(std=0.3)
    return model


@pytest.mark.parametrize("num_pictures", [2, 4])
def test_training_pass_of_the_detector_proposes_from_each_picture(monkeypatch, small_detector, num_pictures):
    """The whole model's training step (what joint training feeds the RoI head): pictures of different shapes
    in one padded batch; each proposal's anchor lies on its picture."""
    model = small_detector.train()
    shapes = [(s[0] // 2, s[1] // 2) for s in SHAPES[:num_pictures]]  # 120 x 160, 88 x 125, 160 x 120, 100 x 99
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=gen) for h, w in shapes]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])} for _ in shapes]
    calls = []
    select = model.rpn.select_anchors

    def recording(anchors, logits, deltas, image_sizes, *args, **kwargs):
        out = select(anchors, logits, deltas, image_sizes, *args, **kwargs)
        calls.append((anchors, image_sizes, out[2]))
        return out

    monkeypatch.setattr(model.rpn, "select_anchors", recording)
    with torch.no_grad():
        model(images, targets)
    ((anchors, image_sizes, picked),) = calls
    feature_hw = (math.ceil(max(h for h, _ in shapes) / STRIDE), math.ceil(max(w for _, w in shapes) / STRIDE))
    assert anchors.shape[0] == feature_hw[0] * feature_hw[1] * 9 and image_sizes == shapes
    for index, shape in zip(picked, shapes):
        assert index.numel() > 0 and positions_on_picture(index, feature_hw, 9, shape).all(), shape
