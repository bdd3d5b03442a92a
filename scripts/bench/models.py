"""The two models timed against each other: frcnn's FasterRCNN and torchvision's FasterRCNN built from the
same modules and weights (the twin), and their inputs."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVPredictor
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import nms, roi_pool

import frcnn.modeling.rpn
from bench.common import SETTINGS, SIZES, TORCHVISION_MIN_PROPOSAL_SIZE
from frcnn.layers.max_pool import MaxPool2x2
from frcnn.layers.onednn_linear import OneDNNLinear
from frcnn.modeling.backbone import build_backbone, freeze_prefix
from frcnn.modeling.faster_rcnn import FasterRCNN
from frcnn.modeling.roi_head import RoIHead
from frcnn.modeling.rpn import ProposalSettings, RegionProposalNetwork


class _NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform minus the resize: inputs arrive at network size, as frcnn's do."""

    def resize(self, image, target=None):
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        return result  # the sizes are equal: rescaling by 1 is a no-op


class _SingleMapRoIPool(nn.Module):
    """``box_roi_pool`` for torchvision: RoI max pooling on the one stride-16 map (as frcnn)."""

    def __init__(self, output_size: int, spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, features, proposals, image_shapes):
        return roi_pool(features["0"], proposals, self.output_size, self.spatial_scale)


class _BodyWithChannels(nn.Module):
    def __init__(self, body: nn.Module, out_channels: int):
        super().__init__()
        self.body = body
        self.out_channels = out_channels

    def forward(self, x):
        return self.body(x)


def full_nms_then_cut(boxes, scores, iou_thresh, top_n):
    return nms(boxes, scores, iou_thresh)[:top_n]


def build_frcnn(size: str) -> FasterRCNN:
    spec = SIZES[size]
    backbone = build_backbone(spec["backbone"], num_hidden=spec["hidden"], head=spec.get("head"))
    freeze_prefix(backbone)  # VGG-16: conv1_1..conv2_2 fixed (§3.1.3), as factory.build_model does
    rpn = RegionProposalNetwork(
        backbone.out_channels, anchor_scales_px=spec["scales"], stride=16,
        train_proposals=ProposalSettings(12000, 2000, 0.7, TORCHVISION_MIN_PROPOSAL_SIZE),
        test_proposals=ProposalSettings(6000, 300, 0.7, TORCHVISION_MIN_PROPOSAL_SIZE),
    )
    # 128 RoIs per image, as torchvision's box_batch_size_per_image (frcnn counts them per mini-batch)
    roi_head = RoIHead(backbone.head, backbone.representation_size, spec["num_classes"],
                       roi_output_size=backbone.roi_output_size,
                       spatial_scale=1 / 16, pool_type="max", rois_per_minibatch=128 * spec["train_batch"],
                       positive_fraction=0.25, bg_iou_lo=0.0, score_thresh=0.05, nms_thresh=0.3,
                       detections_per_image=100)
    model = FasterRCNN(backbone, rpn, roi_head, backbone.pixel_mean, backbone.pixel_std,
                       channels_last=not SETTINGS.baseline)
    if SETTINGS.baseline:
        frcnn.modeling.rpn.nms_top_n = full_nms_then_cut
    return model


def with_torch_layers(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose frcnn layers with CPU fast paths (OneDNNLinear, MaxPool2x2) are
    torch's own (``nn.Linear``: F.linear, MKL on the CPU; ``nn.MaxPool2d``) with the same weights:
    torchvision's twin runs what torchvision would."""
    twin = copy.deepcopy(module)
    for parent in twin.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, OneDNNLinear):
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.load_state_dict(child.state_dict())
                setattr(parent, name, plain)
            elif isinstance(child, MaxPool2x2):
                setattr(parent, name, nn.MaxPool2d(2, 2))
    return twin


def build_torchvision_twin(ours: FasterRCNN, size: str) -> TVFasterRCNN:
    """torchvision's FasterRCNN with frcnn's modules' weights and the same settings."""
    spec = SIZES[size]
    body = _BodyWithChannels(with_torch_layers(ours.backbone), ours.backbone_info.out_channels)
    rpn_head = TVRPNHead(body.out_channels, ours.rpn.anchor_generator.num_anchors_per_location)
    ours_head = ours.rpn.head
    rpn_head.load_state_dict({
        "conv.0.0.weight": ours_head.conv.weight, "conv.0.0.bias": ours_head.conv.bias,
        "cls_logits.weight": ours_head.cls_logits.weight, "cls_logits.bias": ours_head.cls_logits.bias,
        "bbox_pred.weight": ours_head.bbox_deltas.weight, "bbox_pred.bias": ours_head.bbox_deltas.bias,
    })
    anchor_gen = TVAnchorGenerator(sizes=(tuple(spec["scales"]),), aspect_ratios=((0.5, 1.0, 2.0),))
    predictor = TVPredictor(ours.roi_head.predictor.cls_score.in_features, spec["num_classes"] + 1)
    predictor.load_state_dict(ours.roi_head.predictor.state_dict())
    model = TVFasterRCNN(
        body, num_classes=None,
        rpn_anchor_generator=anchor_gen, rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=12000, rpn_post_nms_top_n_train=2000,
        rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_test=300,
        rpn_nms_thresh=0.7, rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3,
        rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
        box_head=with_torch_layers(ours.roi_head.head),
        box_predictor=predictor, box_score_thresh=0.05, box_nms_thresh=0.3, box_detections_per_img=100,
        box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5, box_batch_size_per_image=128, box_positive_fraction=0.25,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
    )
    # The constructor only accepts MultiScaleRoIAlign; any module with its call signature works.
    model.roi_heads.box_roi_pool = _SingleMapRoIPool(ours.roi_head.roi_output_size, 1 / 16)
    h, w = spec["image_hw"]
    model.transform = _NoResizeTransform(min(h, w), max(h, w), list(ours.pixel_mean.flatten().tolist()),
                                         list(ours.pixel_std.flatten().tolist()), size_divisible=16)
    return model


def make_inputs(size: str, batch: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Random images in [0, 1] at network size and 3 random ground-truth boxes each."""
    spec = SIZES[size]
    h, w = spec["image_hw"]
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, h, w, generator=gen) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(3, 2, generator=gen) * torch.tensor([w * 0.6, h * 0.6])
        wh = (0.1 + 0.3 * torch.rand(3, 2, generator=gen)) * torch.tensor([w, h])
        boxes = torch.cat((xy, xy + wh), dim=1)
        labels = torch.randint(1, spec["num_classes"] + 1, (3,), generator=gen)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets
