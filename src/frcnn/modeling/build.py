"""The one place where configuration values become model objects (plain dicts in, modules out).

Nothing here imports Hydra: a config node converted with ``OmegaConf.to_container`` or a
hand-written dict both work, so the model stays usable without the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from frcnn.modeling.backbone import build_backbone, freeze_prefix
from frcnn.modeling.faster_rcnn import FasterRCNN
from frcnn.modeling.roi_head import RoIHead
from frcnn.modeling.rpn import ProposalSettings, RegionProposalNetwork


def proposal_settings(rpn_cfg: Mapping[str, Any], mode: str) -> ProposalSettings:
    """rpn.<mode>.pre_nms_top_n / post_nms_top_n with the shared nms_thresh / min_size."""
    mode_cfg = rpn_cfg[mode]
    return ProposalSettings(
        pre_nms_top_n=int(mode_cfg["pre_nms_top_n"]),
        post_nms_top_n=int(mode_cfg["post_nms_top_n"]),
        nms_thresh=float(rpn_cfg["nms_thresh"]),
        min_size_px=float(rpn_cfg["min_size"]),
        ranking=str(mode_cfg.get("ranking", "cls")),
        use_regression=bool(mode_cfg.get("use_regression", True)),
        use_nms=bool(mode_cfg.get("use_nms", True)),
    )


def build_rpn(rpn_cfg: Mapping[str, Any], in_channels: int, stride: int) -> RegionProposalNetwork:
    return RegionProposalNetwork(
        in_channels=in_channels,
        anchor_scales_px=list(rpn_cfg["anchor_scales"]),
        anchor_ratios=list(rpn_cfg["anchor_ratios"]),
        stride=stride,
        mid_channels=rpn_cfg.get("mid_channels"),
        fg_iou_thresh=float(rpn_cfg["fg_iou"]),
        bg_iou_thresh=float(rpn_cfg["bg_iou"]),
        batch_size_per_image=int(rpn_cfg["batch_size"]),
        positive_fraction=float(rpn_cfg["positive_fraction"]),
        reg_lambda=float(rpn_cfg["lambda"]),
        reg_normalizer=str(rpn_cfg["reg_normalizer"]),
        smooth_l1_beta=float(rpn_cfg["smooth_l1_beta"]),
        ignore_cross_boundary=bool(rpn_cfg["ignore_cross_boundary"]),
        train_proposals=proposal_settings(rpn_cfg, "train"),
        test_proposals=proposal_settings(rpn_cfg, "test"),
    )


def rois_per_minibatch(roi_cfg: Mapping[str, Any]) -> int:
    """roi_head.rois_per_minibatch; a detector file written before that key existed holds
    roi_head.batch_size (RoIs per image) instead, read as is: only training samples RoIs."""
    if "rois_per_minibatch" in roi_cfg:
        return int(roi_cfg["rois_per_minibatch"])
    return int(roi_cfg["batch_size"])


def build_roi_head(roi_cfg: Mapping[str, Any], backbone, num_classes: int) -> RoIHead:
    return RoIHead(
        head=backbone.head,
        representation_size=backbone.representation_size,
        num_classes=num_classes,
        roi_output_size=backbone.roi_output_size,
        spatial_scale=1.0 / backbone.stride,
        pool_type=str(roi_cfg["pool_type"]),
        rois_per_minibatch=rois_per_minibatch(roi_cfg),
        positive_fraction=float(roi_cfg["positive_fraction"]),
        fg_iou_thresh=float(roi_cfg["fg_iou"]),
        bg_iou_hi=float(roi_cfg["bg_iou_hi"]),
        bg_iou_lo=float(roi_cfg["bg_iou_lo"]),
        target_stds=tuple(float(s) for s in roi_cfg["target_stds"]),
        add_gt_to_proposals=bool(roi_cfg["add_gt_to_proposals"]),
        smooth_l1_beta=float(roi_cfg["smooth_l1_beta"]),
        score_thresh=float(roi_cfg["score_thresh"]),
        nms_thresh=float(roi_cfg["nms_thresh"]),
        detections_per_image=int(roi_cfg["detections_per_image"]),
        warp_boxes=bool(roi_cfg.get("warp_boxes", False)),  # set by recipe.approximate=false (recipes.model_config)
        target_normalization=str(roi_cfg.get("target_normalization", "fixed")),  # absent in older detector files
    )


def build_model(model_cfg: Mapping[str, Any], num_classes: int) -> FasterRCNN:
    """model_cfg holds the ``backbone``, ``rpn`` and ``roi_head`` config nodes."""
    backbone_cfg = model_cfg["backbone"]
    backbone = build_backbone(str(backbone_cfg["name"]), weights=backbone_cfg.get("weights"),
                              model=backbone_cfg.get("model"), head=backbone_cfg.get("head"),
                              output_stride=int(backbone_cfg.get("output_stride") or 16))
    freeze_prefix(backbone)
    rpn = build_rpn(model_cfg["rpn"], backbone.out_channels, backbone.stride)
    roi_head = build_roi_head(model_cfg["roi_head"], backbone, num_classes)
    return FasterRCNN(backbone, rpn, roi_head, pixel_mean=backbone.pixel_mean, pixel_std=backbone.pixel_std)
