"""FasterRCNN: shared conv backbone + RPN + Fast R-CNN detector (paper Fig. 2). Plain PyTorch."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from frcnn.backbones import Backbone, has_training_batchnorm
from frcnn.roi_head import RoIHead
from frcnn.rpn import RegionProposalNetwork

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def batch_images(images: list[Tensor], size_divisible: int = 16) -> tuple[Tensor, list[tuple[int, int]]]:
    """Zero-pad images of different sizes to one batch tensor, bottom/right, to a multiple of
    the stride. images: list of [3, H_i, W_i] -> ([B, 3, H, W], [(H_i, W_i)])."""
    image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    height = int(math.ceil(max(h for h, _ in image_sizes) / size_divisible) * size_divisible)
    width = int(math.ceil(max(w for _, w in image_sizes) / size_divisible) * size_divisible)
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for i, img in enumerate(images):
        batch[i, :, : img.shape[-2], : img.shape[-1]] = img
    return batch, image_sizes


class FasterRCNN(nn.Module):
    """Faster R-CNN: one network whose shared conv layers feed the RPN and the detector.

    Images enter as float tensors in [0, 1]; the model normalises them with ImageNet
    statistics (what torchvision's pretrained backbones expect). Boxes are (x1, y1, x2, y2)
    in input-image pixels.

    ``channels_last``: the shared conv layers run on an NHWC (channels-last) batch, which
    oneDNN's CPU convolutions run ~20% faster than NCHW (BENCHMARKS.md); the numbers are
    the same up to float rounding. Not while a BatchNorm of the shared layers trains: PyTorch's
    channels-last BatchNorm backward sums in float32 (the NCHW one in float64), and its
    nearly cancelling sums then lose ~1% of the gradient. False gives the plain NCHW path.
    """

    def __init__(self, backbone: Backbone, rpn: RegionProposalNetwork, roi_head: RoIHead,
                 pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD, channels_last: bool = True):
        super().__init__()
        self.backbone = backbone.body
        self.backbone_info = backbone
        self.rpn = rpn
        self.roi_head = roi_head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)
        self.size_divisible = backbone.stride
        self.channels_last = channels_last

    @property
    def num_classes(self) -> int:
        return self.roi_head.num_classes

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        normalised = [(img - self.pixel_mean[0]) / self.pixel_std[0] for img in images]
        return batch_images(normalised, self.size_divisible)

    def _conv_channels_last(self) -> bool:
        """channels_last, unless a BatchNorm of the shared layers trains (see the class doc)."""
        if not self.channels_last or not self.training:
            return self.channels_last
        return not has_training_batchnorm(self.backbone)

    def features(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Shared conv layers: -> (feature map [B, C, H/16, W/16], image sizes)."""
        batch, image_sizes = self.preprocess(images)
        if self._conv_channels_last():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.backbone(batch), image_sizes

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Training (targets given): the RPN and detector losses are summed. Approximate joint
        training (§3.2 ii): proposals are treated as fixed (no gradient w.r.t. their
        coordinates). With a box-warping RoI head (``roi_head.warp_boxes``) the proposals keep
        their graph back to the RPN's regression outputs and the shared conv: non-approximate
        joint training (§3.2 iii). Returns a dict of losses with ``total``.
        Inference: list of {boxes [D, 4], scores [D], labels [D]} per image."""
        feature_map, image_sizes = self.features(images)
        if targets is None:
            proposals, _, _ = self.rpn(feature_map, image_sizes)
            detections, _ = self.roi_head(feature_map, proposals, image_sizes)
            return detections
        gt_boxes = [t["boxes"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals, _, rpn_losses = self.rpn(feature_map, image_sizes, gt_boxes,
                                            keep_box_graph=self.roi_head.warp_boxes)
        _, det_losses = self.roi_head(feature_map, proposals, image_sizes, gt_boxes, gt_labels)
        losses = {**rpn_losses, **det_losses}
        losses["total"] = rpn_losses["rpn"] + det_losses["det"]
        return losses

    @torch.no_grad()
    def propose(self, images: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """RPN proposals (test settings) for a list of images."""
        feature_map, image_sizes = self.features(images)
        proposals, scores, _ = self.rpn(feature_map, image_sizes)
        return proposals, scores


class UnsharedFasterRCNN(nn.Module):
    """RPN and Fast R-CNN with separate backbones (paper Tables 2/3 "unshared"): the stage-1
    RPN proposes, the stage-1 detector classifies on its own conv features."""

    def __init__(self, rpn_net: FasterRCNN, det_net: FasterRCNN):
        super().__init__()
        self.rpn_net = rpn_net
        self.det_net = det_net

    @property
    def num_classes(self) -> int:
        return self.det_net.num_classes

    @property
    def rpn(self) -> RegionProposalNetwork:
        return self.rpn_net.rpn

    def propose(self, images: list[Tensor]):
        return self.rpn_net.propose(images)

    def forward(self, images: list[Tensor]):
        proposals, _ = self.rpn_net.propose(images)
        feature_map, image_sizes = self.det_net.features(images)
        detections, _ = self.det_net.roi_head(feature_map, proposals, image_sizes)
        return detections
