"""frcnn.modeling.faster_rcnn where the suite left mutants alive (scripts/mutation_test.sh): the padding
groups, the input normalisation, the channels-last rule, the resize factors at inference, the Fig. 4 ranking
and the unshared pair of Tables 2 / 3 (stage-1 RPN proposes, stage-1 detector classifies)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from frcnn.engine.recipes import model_config
from frcnn.modeling.backbone import Backbone, set_trainable
from frcnn.modeling.build import build_model
from frcnn.modeling.faster_rcnn import (FasterRCNN, UnsharedFasterRCNN, evaluation_proposal_settings, padded_size,
                                        padded_size_groups, run_by_padded_size)
from tests.conftest import compose_config

# two sizes that pad to different multiples of 16: two groups of one padded size each
IMAGES = [torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(1)),
          torch.rand(3, 80, 112, generator=torch.Generator().manual_seed(2)),
          torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(3))]
SHRUNK_100X = [100.0] * len(IMAGES)  # min_size 4 px of the original -> 400 px here: larger than any image


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    return model_config(compose_config(["backbone.weights=null"], tmp_path_factory.mktemp("run")))


def built(cfg, num_classes: int, seed: int) -> FasterRCNN:
    torch.manual_seed(seed)
    return build_model(cfg, num_classes).eval()


@pytest.fixture(scope="module")
def model(small_cfg):
    return built(small_cfg, 5, seed=0)


@pytest.fixture(scope="module")
def pair(small_cfg):
    """rpn_net and det_net differ in weights and in class count (only det_net's detector is used)."""
    return UnsharedFasterRCNN(built(small_cfg, 5, seed=1), built(small_cfg, 3, seed=2)).eval()


def same_detections(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[key], y[key])
                                    for x, y in zip(a, b) for key in ("boxes", "scores", "labels"))


def test_padded_size_rounds_each_side_up_to_a_multiple_of_the_stride():
    assert padded_size((100, 112), 16) == (112, 112)
    assert padded_size((100, 112), 32) == (128, 128)
    assert padded_size((1, 33), 32) == (32, 64)


def test_padded_size_groups_follow_the_given_stride_in_order_of_first_appearance():
    images = [torch.zeros(3, 100, 100), torch.zeros(3, 120, 120), torch.zeros(3, 112, 112), torch.zeros(3, 128, 90)]
    assert padded_size_groups(images, 16) == [[0, 2], [1], [3]]  # 112, 128, 128 x 96
    assert padded_size_groups(images, 32) == [[0, 1, 2], [3]]  # 128, 128 x 96


def test_run_by_padded_size_puts_outputs_back_in_input_order_and_passes_each_groups_scales():
    images = [torch.zeros(3, 16, 16), torch.zeros(3, 32, 32), torch.zeros(3, 16, 16)]
    calls = []

    def run(group, scales):
        calls.append(([int(image.shape[-1]) for image in group], scales))
        return [int(image.shape[-1]) for image in group], [s * 10 for s in scales]

    assert run_by_padded_size(images, 16, run, [1.0, 2.0, 3.0]) == ([16, 32, 16], [10.0, 20.0, 30.0])
    assert calls == [([16, 16], [1.0, 3.0]), ([32], [2.0])]
    assert run_by_padded_size(images, 16, lambda group, scales: ([scales],), None) == ([None, None, None],)
    assert run_by_padded_size([], 16, run) == ()


def test_preprocess_normalises_each_channel_with_its_own_statistics(model):
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    net = FasterRCNN(model.backbone_info, model.rpn, model.roi_head, pixel_mean=mean, pixel_std=std)
    batch, sizes = net.preprocess([torch.ones(3, 20, 30)])
    assert batch.shape == (1, 3, 32, 32) and sizes == [(20, 30)]
    for channel, expected in enumerate([1.8, 3.2, 5.6]):  # (1 - mean) / std, channel by channel
        assert torch.allclose(batch[0, channel, :20, :30], torch.tensor(expected))
    assert batch[0, :, 20:, :].abs().sum() == 0 and batch[0, :, :, 30:].abs().sum() == 0


def test_pixel_statistics_come_from_the_config_not_from_a_state_dict(small_cfg, model):
    """The statistics are not saved with the weights: a state dict of ImageNet-normalised weights loads
    (strictly) into a 0.5 / 0.5 model and leaves its statistics as they are (the backbone's, build_model)."""
    assert not {"pixel_mean", "pixel_std"} & set(model.state_dict())
    half = FasterRCNN(model.backbone_info, model.rpn, model.roi_head, pixel_mean=(0.5,) * 3, pixel_std=(0.5,) * 3)
    half.load_state_dict(model.state_dict())
    assert half.pixel_mean.flatten().tolist() == [0.5] * 3 and half.pixel_std.flatten().tolist() == [0.5] * 3


def conv_input_formats(model: FasterRCNN, images, **kwargs) -> list[str]:
    """The memory format of the batch entering each layer of the shared conv (a Sequential)."""
    seen = []

    def record(module, args):
        seen.append("nhwc" if args[0].is_contiguous(memory_format=torch.channels_last)
                    and not args[0].is_contiguous() else "nchw")

    hooks = [layer.register_forward_pre_hook(record) for layer in model.backbone]
    try:
        model(images, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_a_built_model_infers_channels_last_and_trains_nchw_on_the_cpu(small_cfg):
    """The class doc's rule, on the model build_model returns: inference channels-last, a backward through
    the conv on the CPU NCHW."""
    net = built(small_cfg, 5, seed=0)
    with torch.no_grad():
        assert set(conv_input_formats(net, IMAGES[:1])) == {"nhwc"}
    net.train()
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([2])}]
    assert conv_input_formats(net, IMAGES[:1], targets=targets)[-1] == "nchw"


class OpaqueBody(nn.Module):
    """A shared conv that is not a Sequential (as timm's feature nets)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.conv(x)


def test_no_forward_only_prefix_while_a_batchnorm_trains_or_for_a_body_that_is_not_a_sequential(model):
    body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3))
    set_trainable(body[0], False)
    net = FasterRCNN(Backbone(body, nn.Identity(), 8, 8, 7), model.rpn, model.roi_head).train()
    assert net._forward_only_prefix() == 0  # the BatchNorm trains: NCHW for all layers
    set_trainable(body[1], False)  # locked BatchNorm: conv and BatchNorm run forward only
    assert net._forward_only_prefix() == 2
    opaque = FasterRCNN(Backbone(OpaqueBody(), nn.Identity(), 8, 8, 7), model.rpn, model.roi_head).train()
    assert opaque._forward_only_prefix() == 0


def test_inference_keeps_proposals_of_at_least_min_size_original_pixels(model):
    """Each image's resize factor reaches the proposal layer in forward, propose and detect_and_rank: an
    image shrunk 100x keeps no proposal of min_size 4 original px (400 px on a 96 x 128 input)."""
    with torch.no_grad():
        plain = model(IMAGES)
        assert any(len(d["boxes"]) for d in plain)
        assert same_detections(model(IMAGES, image_scales=[1.0] * 3), plain)
        assert all(len(d["boxes"]) == 0 for d in model(IMAGES, image_scales=SHRUNK_100X))
        detections, ranked = model.detect_and_rank(IMAGES, 7, SHRUNK_100X)
        assert all(len(d["boxes"]) == 0 for d in detections) and all(len(r) == 0 for r in ranked)


def test_evaluation_settings_rank_the_given_top_n_and_keep_the_test_settings_otherwise(model):
    test_settings, ranked_settings = evaluation_proposal_settings(model.rpn, 7)
    assert test_settings == model.rpn.test_proposals and test_settings.post_nms_top_n == 300
    assert ranked_settings.post_nms_top_n == 7
    assert ranked_settings == test_settings.__class__(**{**vars(test_settings), "post_nms_top_n": 7})
    detections, ranked = model.detect_and_rank(IMAGES, 7)
    proposals, _ = model.propose(IMAGES)
    assert [len(r) for r in ranked] == [7, 7, 7]
    assert all(torch.equal(r, p[:7]) for r, p in zip(ranked, proposals))  # NMS order: the same top 7
    with torch.no_grad():
        assert same_detections(detections, model(IMAGES))


def test_unshared_pair_proposes_with_the_rpn_net_and_classifies_with_the_det_net(pair):
    rpn_net, det_net = pair.rpn_net, pair.det_net
    assert pair.num_classes == 3 and pair.rpn is rpn_net.rpn
    proposals, scores = pair.propose(IMAGES)
    own_proposals, own_scores = rpn_net.propose(IMAGES)
    assert all(torch.equal(a, b) for a, b in zip(proposals, own_proposals))
    assert all(torch.equal(a, b) for a, b in zip(scores, own_scores))
    assert not torch.equal(proposals[0], det_net.propose(IMAGES)[0][0])
    with torch.no_grad():
        by_hand = [None] * len(IMAGES)
        for group in padded_size_groups(IMAGES, 16):  # images 0 and 2 in one batch, as the pair runs them
            feature_map, sizes = det_net.features([IMAGES[i] for i in group])
            found, _ = det_net.roi_head(feature_map, [proposals[i] for i in group], sizes)
            for index, image_detections in zip(group, found):
                by_hand[index] = image_detections
        detections = pair(IMAGES)
    assert same_detections(detections, by_hand)
    assert set(torch.cat([d["labels"] for d in detections]).tolist()) <= {1, 2, 3}  # det_net's classes
    ranked_detections, ranked = pair.detect_and_rank(IMAGES, 7)
    assert same_detections(ranked_detections, detections)
    assert all(torch.equal(r, p[:7]) for r, p in zip(ranked, proposals))


def test_unshared_pair_passes_each_images_resize_factor_to_its_rpn(pair):
    with torch.no_grad():
        assert same_detections(pair(IMAGES, image_scales=[1.0] * 3), pair(IMAGES))
        assert all(len(d["boxes"]) == 0 for d in pair(IMAGES, image_scales=SHRUNK_100X))
    assert all(len(p) == 0 for p in pair.propose(IMAGES, SHRUNK_100X)[0])
    detections, ranked = pair.detect_and_rank(IMAGES, 7, SHRUNK_100X)
    assert all(len(d["boxes"]) == 0 for d in detections) and all(len(r) == 0 for r in ranked)
