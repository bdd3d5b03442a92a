"""FasterRCNN: shared conv backbone + RPN + Fast R-CNN detector (paper Fig. 2). Plain PyTorch."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from frcnn.checkpoint.pretrained import IMAGENET_MEAN, IMAGENET_STD
from frcnn.modeling.backbone import Backbone, has_training_batchnorm
from frcnn.modeling.roi_head import RoIHead
from frcnn.modeling.rpn import ProposalSettings, RegionProposalNetwork


def batch_images(images: list[Tensor], size_divisible: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """Zero-pad images of different sizes to one batch tensor, bottom/right, to a multiple of
    the stride. images: list of [3, H_i, W_i] -> ([B, 3, H, W], [(H_i, W_i)])."""
    image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    height = int(math.ceil(max(h for h, _ in image_sizes) / size_divisible) * size_divisible)
    width = int(math.ceil(max(w for _, w in image_sizes) / size_divisible) * size_divisible)
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for i, img in enumerate(images):
        batch[i, :, : img.shape[-2], : img.shape[-1]] = img
    return batch, image_sizes


def padded_size(image_hw: tuple[int, int], size_divisible: int) -> tuple[int, int]:
    """(H, W) rounded up to a multiple of the stride: the size :func:`batch_images` pads an image to alone."""
    return tuple(int(math.ceil(side / size_divisible) * size_divisible) for side in image_hw)


def padded_size_groups(images: Sequence[Tensor], size_divisible: int) -> list[list[int]]:
    """Indices of ``images`` grouped by the size each is zero-padded to alone, groups in order of first
    appearance, indices ascending within a group.

    Batch invariance (the paper tests one image at a time): zero padding changes the conv features
    near the padded border, so an image batched with a larger one would get other features, proposals
    and detections than alone. Images of one group get exactly the padding each gets alone (their
    common padded size is a multiple of any stride that is a multiple of ``size_divisible``)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(padded_size((int(image.shape[-2]), int(image.shape[-1])), size_divisible), []).append(index)
    return list(groups.values())


def run_by_padded_size(images: Sequence[Tensor], size_divisible: int, run: Callable[..., tuple[list, ...]],
                       image_scales: Sequence[float] | None = None) -> tuple[list, ...]:
    """``run(group images, their image_scales or None)`` on each group of :func:`padded_size_groups`,
    its per-image outputs put back in input order. ``run`` returns (list with one entry per image, ...);
    the result is the same tuple for all images; no images: ()."""
    merged: list[list] | None = None
    for group in padded_size_groups(images, size_divisible):
        scales = None if image_scales is None else [image_scales[i] for i in group]
        outputs = run([images[i] for i in group], scales)
        if merged is None:
            merged = [[None] * len(images) for _ in outputs]
        for per_image, slots in zip(outputs, merged):
            for index, value in zip(group, per_image):
                slots[index] = value
    return tuple(merged) if merged is not None else ()


def evaluation_proposal_settings(rpn: RegionProposalNetwork,
                                 num_ranked: int) -> tuple[ProposalSettings, ProposalSettings]:
    """The RPN's test settings, and the same keeping the top ``num_ranked`` after NMS (Fig. 4)."""
    return rpn.test_proposals, dataclasses.replace(rpn.test_proposals, post_nms_top_n=int(num_ranked))


class FasterRCNN(nn.Module):
    """Faster R-CNN: one network whose shared conv layers feed the RPN and the detector.

    Images enter as float tensors in [0, 1]; the model normalises them with ImageNet
    statistics (what torchvision's pretrained backbones expect). Boxes are (x1, y1, x2, y2)
    in input-image pixels.

    ``channels_last``: the shared conv layers run on an NHWC (channels-last) batch when it is
    not slower than NCHW; the numbers are the same up to float rounding. False gives the plain
    NCHW path everywhere. The rule, measured on AVX-512 and (emulated) AVX2 code paths
    (BENCHMARKS.md, "The channels-last shared conv"):

    * forward only (eval mode, or a frozen conv such as the 4-step recipe's steps 3-4):
      channels-last, oneDNN's NHWC convolutions are faster on both (VGG-16 conv 0.76x / 0.93x NCHW);
    * a backward through the conv on the CPU (``nchw_backward_on_cpu``): NCHW, the NHWC
      backward is 1.42x slower on AVX2 and no faster on AVX-512; on a GPU, channels-last.
      The leading layers no gradient reaches (VGG-16's conv1_1 .. pool2, fixed by §3.1.3) still
      run forward only: channels-last, then the batch turns NCHW at the first trained layer
      (:meth:`_forward_only_prefix`; VGG-16 600x1000: 846 -> 507 ms for those layers);
    * never while a BatchNorm of the shared layers trains: PyTorch's channels-last BatchNorm
      backward sums in float32 (the NCHW one in float64), and its nearly cancelling sums then
      lose ~1% of the gradient.

    Inference (``forward`` without targets, ``propose``) is batch-invariant: images are run in
    groups of one padded size (:func:`padded_size_groups`), so an image's proposals and detections
    do not depend on which images of other sizes share its batch (bit for bit on the CPU,
    tests/test_batch_invariance.py). Images of one padded size run as one batch, and oneDNN may pick
    another conv kernel for another batch size: the same up to float rounding (scores within ~1e-7;
    small net, 96 x 128, batch of 2 against 1 alone: 3e-8).
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
        self.nchw_backward_on_cpu = True  # False: channels-last also for the conv's backward on the CPU

    @property
    def num_classes(self) -> int:
        return self.roi_head.num_classes

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        normalised = [(img - self.pixel_mean[0]) / self.pixel_std[0] for img in images]
        return batch_images(normalised, self.size_divisible)

    def _conv_channels_last(self) -> bool:
        """Whether the shared conv runs channels-last now (the rule of the class doc)."""
        if not self.channels_last or not self.training:
            return self.channels_last
        if has_training_batchnorm(self.backbone):
            return False
        backward_runs = torch.is_grad_enabled() and any(p.requires_grad for p in self.backbone.parameters())
        return not (backward_runs and self.nchw_backward_on_cpu and self.pixel_mean.device.type == "cpu")

    def _forward_only_prefix(self) -> int:
        """How many leading layers of the shared conv (a Sequential) run forward only while the
        rest trains NCHW on the CPU: those before the first layer with a trainable parameter
        (the images need no gradient). 0 where the class rule gives one format for all layers. A layer
        with a trainable parameter is always found: with none, no backward runs, and the class rule
        (the first test) gives channels-last for all layers."""
        if (not self.channels_last or self._conv_channels_last() or has_training_batchnorm(self.backbone)
                or not isinstance(self.backbone, nn.Sequential)):
            return 0
        count = 0
        for layer in self.backbone:
            if any(p.requires_grad for p in layer.parameters()):
                break
            count += 1
        return count

    def features(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Shared conv layers: -> (feature map [B, C, H/16, W/16], image sizes)."""
        batch, image_sizes = self.preprocess(images)
        prefix = self._forward_only_prefix()  # 0 unless the shared conv trains NCHW on the CPU
        if prefix:  # the fixed leading layers channels-last, the trained ones NCHW (class doc)
            batch = self.backbone[:prefix](batch.contiguous(memory_format=torch.channels_last))
            return self.backbone[prefix:](batch.contiguous()), image_sizes
        if self._conv_channels_last():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.backbone(batch), image_sizes

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                image_scales: list[float] | None = None):
        """Training (targets given): the RPN and detector losses are summed. Approximate joint
        training (§3.2 ii): proposals are treated as fixed (no gradient w.r.t. their
        coordinates). With a box-warping RoI head (``roi_head.warp_boxes``) the proposals keep
        their graph back to the RPN's regression outputs and the shared conv: non-approximate
        joint training (§3.2 iii). Returns a dict of losses with ``total``.
        Inference: list of {boxes [D, 4], scores [D], labels [D]} per image, batch-invariant.

        ``image_scales``: each image's resize factor (network-input px per original px), for the
        proposal layer's minimum size in original pixels; None: 1 (images not rescaled)."""
        if targets is None:
            (detections,) = run_by_padded_size(images, self.size_divisible, self._detect_same_size, image_scales)
            return detections
        feature_map, image_sizes = self.features(images)
        gt_boxes = [t["boxes"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals, _, rpn_losses = self.rpn(feature_map, image_sizes, gt_boxes, image_scales=image_scales,
                                            keep_box_graph=self.roi_head.warp_boxes)
        _, det_losses = self.roi_head(feature_map, proposals, image_sizes, gt_boxes, gt_labels)
        losses = {**rpn_losses, **det_losses}
        losses["total"] = rpn_losses["rpn"] + det_losses["det"]
        return losses

    def _detect_same_size(self, images: list[Tensor], image_scales) -> tuple[list[dict[str, Tensor]]]:
        """Detections for images of one padded size (one batch, no extra padding)."""
        feature_map, image_sizes = self.features(images)
        proposals, _, _ = self.rpn(feature_map, image_sizes, image_scales=image_scales)
        detections, _ = self.roi_head(feature_map, proposals, image_sizes)
        return (detections,)

    def _propose_same_size(self, images: list[Tensor], image_scales) -> tuple[list[Tensor], list[Tensor]]:
        feature_map, image_sizes = self.features(images)
        proposals, scores, _ = self.rpn(feature_map, image_sizes, image_scales=image_scales)
        return proposals, scores

    @torch.no_grad()
    def propose(self, images: list[Tensor],
                image_scales: list[float] | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """RPN proposals (the test settings in eval mode) for a list of images, batch-invariant
        (``image_scales``: see :meth:`forward`) -> (boxes per image [N_i, 4], scores per image [N_i])."""
        proposals, scores = run_by_padded_size(images, self.size_divisible, self._propose_same_size, image_scales)
        return proposals, scores

    @torch.no_grad()
    def detect_and_rank(self, images: list[Tensor], num_ranked: int,
                        image_scales: list[float] | None = None) -> tuple[list[dict[str, Tensor]], list[Tensor]]:
        """Evaluation in one pass of the shared conv layers (eval mode): the detections (test
        settings, as ``forward``) and the RPN's top ``num_ranked`` proposals (Fig. 4's recall),
        batch-invariant. -> (detections per image, ranked proposals per image [<= num_ranked, 4])."""
        run = functools.partial(self._detect_and_rank_same_size, num_ranked=int(num_ranked))
        detections, ranked = run_by_padded_size(images, self.size_divisible, run, image_scales)
        return detections, ranked

    def _detect_and_rank_same_size(self, images: list[Tensor], image_scales, num_ranked: int):
        feature_map, image_sizes = self.features(images)
        settings = evaluation_proposal_settings(self.rpn, num_ranked)
        (proposals, _), (ranked, _) = self.rpn.proposals_at(feature_map, image_sizes, settings, image_scales)
        detections, _ = self.roi_head(feature_map, proposals, image_sizes)
        return detections, ranked


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

    def propose(self, images: list[Tensor], image_scales: list[float] | None = None):
        return self.rpn_net.propose(images, image_scales)

    def forward(self, images: list[Tensor], image_scales: list[float] | None = None):
        """Detections per image, batch-invariant like :meth:`FasterRCNN.forward`."""
        (detections,) = run_by_padded_size(images, self.det_net.size_divisible, self._detect_same_size, image_scales)
        return detections

    @torch.no_grad()
    def detect_and_rank(self, images: list[Tensor], num_ranked: int,
                        image_scales: list[float] | None = None) -> tuple[list[dict[str, Tensor]], list[Tensor]]:
        """As :meth:`FasterRCNN.detect_and_rank`: one pass of each network's conv layers."""
        run = functools.partial(self._detect_and_rank_same_size, num_ranked=int(num_ranked))
        detections, ranked = run_by_padded_size(images, self.det_net.size_divisible, run, image_scales)
        return detections, ranked

    def _detect_and_rank_same_size(self, images: list[Tensor], image_scales, num_ranked: int):
        rpn_features, image_sizes = self.rpn_net.features(images)
        settings = evaluation_proposal_settings(self.rpn, num_ranked)
        (proposals, _), (ranked, _) = self.rpn.proposals_at(rpn_features, image_sizes, settings, image_scales)
        feature_map, image_sizes = self.det_net.features(images)
        detections, _ = self.det_net.roi_head(feature_map, proposals, image_sizes)
        return detections, ranked

    def _detect_same_size(self, images: list[Tensor], image_scales) -> tuple[list[dict[str, Tensor]]]:
        proposals, _ = self.rpn_net.propose(images, image_scales)
        feature_map, image_sizes = self.det_net.features(images)
        detections, _ = self.det_net.roi_head(feature_map, proposals, image_sizes)
        return (detections,)
