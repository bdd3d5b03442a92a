"""frcnn.modeling.build beyond tests/test_config_to_model.py: what a config that lacks the optional keys builds
(a detector file written by an older frcnn), and the values build_model takes from the backbone rather than
the config (stride, RoI size, pixel statistics, the frozen layers)."""

from __future__ import annotations

import copy

import pytest
import torch

from frcnn.engine.recipes import model_config
from frcnn.modeling.build import build_model, rois_per_minibatch
from tests.conftest import compose_config

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    cfg = compose_config(["backbone.weights=null"], tmp_path_factory.mktemp("run"))
    return model_config(cfg)


def test_a_config_without_the_optional_keys_builds_the_defaults(small_cfg):
    cfg = copy.deepcopy(small_cfg)
    for mode in ("train", "test"):
        for key in ("ranking", "use_regression", "use_nms"):
            cfg["rpn"][mode].pop(key, None)
    roi = cfg["roi_head"]
    roi["batch_size"] = roi.pop("rois_per_minibatch") + 8  # an older file's RoIs per image, read as is
    roi.pop("target_normalization", None)
    roi.pop("warp_boxes", None)
    model = build_model(cfg, NUM_CLASSES)
    for settings in (model.rpn.train_proposals, model.rpn.test_proposals):
        assert (settings.ranking, settings.use_regression, settings.use_nms) == ("cls", True, True)
    assert model.roi_head.rois_per_minibatch == roi["batch_size"]
    assert model.roi_head.target_normalization == "fixed" and not hasattr(model.roi_head, "target_means")
    assert model.roi_head.warp_boxes is False


def test_rois_per_minibatch_prefers_the_new_key():
    assert rois_per_minibatch({"rois_per_minibatch": 96, "batch_size": 64}) == 96
    assert rois_per_minibatch({"batch_size": 64}) == 64


def test_warp_boxes_reaches_the_roi_head(small_cfg):
    cfg = copy.deepcopy(small_cfg)
    cfg["roi_head"]["warp_boxes"] = True  # recipe.approximate=false (frcnn.engine.recipes.model_config)
    assert build_model(cfg, NUM_CLASSES).roi_head.warp_boxes is True


def test_the_backbone_sets_stride_roi_size_and_pixel_statistics(small_cfg):
    model = build_model(small_cfg, NUM_CLASSES)
    backbone = model.backbone_info
    assert model.size_divisible == model.rpn.anchor_generator.stride == backbone.stride == 16
    assert model.roi_head.spatial_scale == pytest.approx(1.0 / 16)
    assert model.roi_head.roi_output_size == backbone.roi_output_size
    assert model.rpn.head.conv.in_channels == backbone.out_channels
    assert torch.equal(model.pixel_mean.flatten(), torch.as_tensor(backbone.pixel_mean).flatten().to(model.pixel_mean))
    assert torch.equal(model.pixel_std.flatten(), torch.as_tensor(backbone.pixel_std).flatten().to(model.pixel_std))
    assert model.roi_head.add_gt_to_proposals is True  # Fast R-CNN's default (conf/roi_head)
    assert model.roi_head.predictor.cls_score.out_features == NUM_CLASSES + 1
    assert model.roi_head.predictor.cls_score.in_features == backbone.representation_size


def test_timm_output_stride_8_reaches_anchors_and_pooling(small_cfg):
    cfg = copy.deepcopy(small_cfg)
    cfg["backbone"] = {"name": "efficientnet_lite0", "weights": None, "head": "c4", "output_stride": 8}
    model = build_model(cfg, NUM_CLASSES)
    assert model.backbone_info.stride == model.size_divisible == model.rpn.anchor_generator.stride == 8
    assert model.roi_head.spatial_scale == pytest.approx(1.0 / 8)
    assert model.roi_head.conv_head  # c4: Lite0's last blocks per RoI
    # TensorFlow-ported weights: inputs scaled to [-1, 1], not torchvision's ImageNet statistics
    assert model.pixel_mean.flatten().tolist() == model.pixel_std.flatten().tolist() == [0.5, 0.5, 0.5]


def test_the_backbone_keys_reach_build_backbone(small_cfg):
    from frcnn.modeling.backbone import build_backbone

    cfg = copy.deepcopy(small_cfg)
    cfg["backbone"]["weights"] = "builtin"
    shipped = build_backbone("small", weights="builtin").body.state_dict()
    built = build_model(cfg, NUM_CLASSES).backbone.state_dict()
    assert shipped.keys() == built.keys() and all(torch.equal(shipped[k], built[k]) for k in shipped)
    cfg["backbone"] = {"name": "efficientnet_lite0", "weights": None, "head": "c4"}
    model = build_model(cfg, NUM_CLASSES)
    assert model.roi_head.roi_output_size == model.backbone_info.roi_output_size == 14  # c4 at stride 16
    cfg["backbone"]["head"] = "fc"
    model = build_model(cfg, NUM_CLASSES)
    assert not model.roi_head.conv_head and model.backbone_info.representation_size == 1024  # two fc of 1024
    cfg["backbone"] = {"name": "timm", "weights": None, "model": "resnet18"}
    body = build_model(cfg, NUM_CLASSES).backbone
    assert sum(p.numel() for p in body.parameters()) == sum(
        p.numel() for p in build_backbone("timm", model="resnet18").body.parameters())


def test_vgg16_keeps_conv1_and_conv2_frozen(small_cfg):
    """§3.1.3: conv3_1 and up are tuned for VGG-16; build_model freezes the rest."""
    cfg = copy.deepcopy(small_cfg)
    cfg["backbone"] = {"name": "vgg16", "weights": None}
    body = build_model(cfg, NUM_CLASSES).backbone  # the body (FasterRCNN.backbone)
    frozen = {name.split(".")[0] for name, p in body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1_1", "conv1_2", "conv2_1", "conv2_2"}
    assert all(p.requires_grad for p in body.get_submodule("conv3_1").parameters())
