"""Region Proposal Network (paper §3.1): head, anchor targets, loss (eq. 1), proposal layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn.layers.nms import nms_top_n_per_image
from frcnn.layers.precision import full_precision
from frcnn.modeling.anchors import AnchorGenerator, centred_on_own_area, inside_image, label_anchors
from frcnn.modeling.boxes import decode_boxes, encode_boxes
from frcnn.modeling.sampling import sample_balanced

REG_NORMALIZERS = ("anchor_locations", "minibatch")
PROPOSAL_RANKINGS = ("cls", "random")


class RPNHead(nn.Module):
    """The n x n sliding window (3 x 3 conv, ReLU) and sibling 1 x 1 cls / reg layers (§3.1).

    k objectness scores (logistic, the paper's "k scores" variant) and 4k box deltas per
    location. New layers start from N(0, 0.01) with zero bias (§3.1.3).
    """

    def __init__(self, in_channels: int, num_anchors: int, mid_channels: int | None = None):
        super().__init__()
        mid_channels = mid_channels or in_channels
        self.conv = nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(mid_channels, num_anchors, kernel_size=1)
        self.bbox_deltas = nn.Conv2d(mid_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.cls_logits, self.bbox_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features [B, C, H, W] -> (objectness logits [B, H*W*k], deltas [B, H*W*k, 4]),
        ordered like :func:`frcnn.modeling.anchors.grid_anchors` (location-major, then anchor)."""
        hidden = F.relu(self.conv(features))
        logits = self.cls_logits(hidden)  # [B, k, H, W]
        deltas = self.bbox_deltas(hidden)  # [B, 4k, H, W]
        batch, k, height, width = logits.shape
        logits = logits.permute(0, 2, 3, 1).reshape(batch, -1)
        deltas = deltas.view(batch, k, 4, height, width).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)
        return full_precision(logits), full_precision(deltas)  # decoding, NMS and the loss in float32


def clip_to_images(boxes: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
    """``torchvision.ops.clip_boxes_to_image`` for a batch whose images differ in size: x into
    [0, width_i], y into [0, height_i] of image i (same clamp, so the same floats and gradient).
    boxes [B, N, 4], image_sizes [(height, width)] * B -> [B, N, 4]."""
    limits = boxes.new_tensor([[w, h, w, h] for h, w in image_sizes])[:, None, :]  # [B, 1, 4]
    return torch.clamp(boxes, min=torch.zeros_like(limits), max=limits)


@dataclass
class ProposalSettings:
    """Proposal layer settings for one mode (train or test)."""

    pre_nms_top_n: int  # <= 0: no pre-NMS cut
    post_nms_top_n: int
    nms_thresh: float = 0.7
    min_size_px: float = 16.0  # in original-image pixels: x the image's resize factor on the network input
    # test-time ablations of the paper's Table 2 (all off by default)
    ranking: str = "cls"  # "cls": by objectness | "random": cls scores not used, random order
    use_regression: bool = True  # False: the anchors themselves are the proposals
    use_nms: bool = True  # False: no NMS, top-N by rank

    def __post_init__(self):
        if self.ranking not in PROPOSAL_RANKINGS:
            raise ValueError(f"proposal ranking={self.ranking!r}; allowed: {PROPOSAL_RANKINGS}")
        if self.post_nms_top_n <= 0:
            raise ValueError(f"post_nms_top_n must be > 0, got {self.post_nms_top_n}")


def rpn_loss(
    objectness_logits: Tensor,
    deltas: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    sampled_pos: Tensor,
    sampled_neg: Tensor,
    reg_normalizer_count: float,
    smooth_l1_beta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The two terms of the paper's eq. 1, each already normalised.

    L_cls / N_cls: log loss over the sampled anchors, N_cls = number sampled (256 per image).
    L_reg / N_reg: smooth-L1 over positive anchors only (p*_i = 1), divided by N_reg. The
    caller weights the second by λ. Flattened over the batch:
    objectness_logits [N], deltas [N, 4], labels [N], regression_targets [N, 4].
    """
    sampled = torch.cat((sampled_pos, sampled_neg))
    num_cls = max(sampled.numel(), 1)
    loss_cls = F.binary_cross_entropy_with_logits(
        objectness_logits[sampled], labels[sampled].to(objectness_logits.dtype), reduction="sum"
    ) / num_cls
    loss_reg = F.smooth_l1_loss(
        deltas[sampled_pos], regression_targets[sampled_pos], beta=smooth_l1_beta, reduction="sum"
    ) / max(reg_normalizer_count, 1.0)
    return loss_cls, loss_reg


class RegionProposalNetwork(nn.Module):
    """RPN: anchors + head + training targets + loss + proposal layer (plain PyTorch)."""

    def __init__(
        self,
        in_channels: int,
        anchor_scales_px=(128, 256, 512),
        anchor_ratios=(0.5, 1.0, 2.0),
        stride: int = 16,
        mid_channels: int | None = None,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        reg_lambda: float = 10.0,
        reg_normalizer: str = "anchor_locations",
        smooth_l1_beta: float = 1.0,
        ignore_cross_boundary: bool = True,
        train_proposals: ProposalSettings | None = None,
        test_proposals: ProposalSettings | None = None,
    ):
        super().__init__()
        if reg_normalizer not in REG_NORMALIZERS:
            raise ValueError(f"rpn.reg_normalizer={reg_normalizer!r}; allowed: {REG_NORMALIZERS}")
        if reg_lambda < 0:
            raise ValueError(f"rpn.lambda must be >= 0, got {reg_lambda}")
        if not 0 <= bg_iou_thresh <= fg_iou_thresh <= 1:
            raise ValueError(f"need 0 <= rpn.bg_iou ({bg_iou_thresh}) <= rpn.fg_iou ({fg_iou_thresh}) <= 1")
        self.anchor_generator = AnchorGenerator(anchor_scales_px, anchor_ratios, stride)
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors_per_location, mid_channels)
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.reg_lambda = reg_lambda
        self.reg_normalizer = reg_normalizer
        self.smooth_l1_beta = smooth_l1_beta
        self.ignore_cross_boundary = ignore_cross_boundary
        self.train_proposals = train_proposals or ProposalSettings(12000, 2000)
        self.test_proposals = test_proposals or ProposalSettings(6000, 300)

    # -- training targets -------------------------------------------------------------
    def assign_targets(
        self, anchors: Tensor, gt_boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Per-image anchor labels (§3.1.2, boundary rule §3.3) and regression targets (eq. 2).

        Returns labels [B, A] in {1, 0, -1} and regression_targets [B, A, 4].
        """
        labels_per_image, targets_per_image = [], []
        for boxes, image_hw in zip(gt_boxes, image_sizes):
            valid = inside_image(anchors, image_hw) if self.ignore_cross_boundary else None
            labels, matched = label_anchors(anchors, boxes, self.fg_iou_thresh, self.bg_iou_thresh, valid)
            if boxes.numel():
                targets = encode_boxes(boxes[matched], anchors)
            else:
                targets = torch.zeros_like(anchors)
            labels_per_image.append(labels)
            targets_per_image.append(targets)
        return torch.stack(labels_per_image), torch.stack(targets_per_image)

    def sample(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Sample 256 anchors per image (§3.1.3); indices into the flattened [B*A] labels."""
        num_anchors = labels.shape[1]
        positives, negatives = [], []
        for i, image_labels in enumerate(labels):
            pos, neg = sample_balanced(image_labels, self.batch_size_per_image, self.positive_fraction)
            positives.append(pos + i * num_anchors)
            negatives.append(neg + i * num_anchors)
        return torch.cat(positives), torch.cat(negatives)

    def loss(self, logits: Tensor, deltas: Tensor, anchors: Tensor, gt_boxes, image_sizes, feature_hw) -> dict[str, Tensor]:
        """Paper eq. 1: L = L_cls / N_cls + λ L_reg / N_reg.

        N_reg is the number of anchor locations (feature-map positions, ~2400 for a
        600 x 1000 image) with ``reg_normalizer='anchor_locations'`` (the paper's choice, so
        λ = 10 balances the terms), or the mini-batch size with ``'minibatch'``.
        Returns the two normalised terms and their λ-weighted sum.
        """
        with torch.no_grad():
            labels, targets = self.assign_targets(anchors, gt_boxes, image_sizes)
            pos, neg = self.sample(labels)
        batch = labels.shape[0]
        if self.reg_normalizer == "anchor_locations":
            reg_count = float(feature_hw[0] * feature_hw[1] * batch)
        else:
            reg_count = float(pos.numel() + neg.numel())
        loss_cls, loss_reg = rpn_loss(
            logits.reshape(-1), deltas.reshape(-1, 4), labels.reshape(-1), targets.reshape(-1, 4),
            pos, neg, reg_count, self.smooth_l1_beta,
        )
        return {"rpn_cls": loss_cls, "rpn_reg": loss_reg, "rpn": loss_cls + self.reg_lambda * loss_reg}

    # -- proposal layer ---------------------------------------------------------------
    def propose(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor, image_sizes: list[tuple[int, int]], settings: ProposalSettings,
        image_scales: list[float] | None = None,
        keep_box_graph: bool = False,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Proposal layer (§3.1, §3.3) in the authors' order (py-faster-rcnn ``proposal_layer.py``):
        decode every anchor, clip to the image, drop boxes under the minimum size, sort by score, keep
        the top pre-NMS N, NMS at 0.7, keep the top post-NMS N. Filtering before the cut means the
        pre-NMS N boxes that reach NMS are all of usable size (cutting first lets fewer through when
        high-scoring boxes are small).

        The minimum size is in *original-image* pixels, as in the authors' proposal layer
        (``min_size * im_scale``): a box of image i is dropped when its width or height on the
        network input is under ``settings.min_size_px * image_scales[i]`` (16 px of a VOC image
        scaled 1.6x to 600 px is 25.6 px). ``image_scales``: network-input px per original px,
        one per image (None: 1, images not rescaled).

        Proposals from the picture, not its padding: in a batch of pictures of different sizes
        (zero-padded to a common size), the anchors centred over the padding a larger picture adds
        do not compete for picture i's proposals (:func:`frcnn.modeling.anchors.centred_on_own_area`:
        those of its own area padded alone to a multiple of the stride). The authors run one picture
        per pass and never have them; decoded and clipped they would rank by scores the RPN loss never
        trained (they cross the border, §3.3). A picture alone (and every inference pass, which runs
        pictures of one padded size together) has no such anchors: its proposals are unchanged. What
        remains different from running the picture alone: the features near its right and bottom
        border see the batch's padding through the convolutions (the layers' outputs over the padding
        are not the zeros the picture alone is padded with), so its border anchors' scores and deltas
        differ a little.

        The whole batch is decoded, clipped and size-tested at once; boxes under the minimum size
        (or of anchors over the padding) rank last (score -inf) in one top-k over [B, A] and are then
        left out. NMS stops once it has kept the post-NMS N (:func:`frcnn.layers.nms.nms_top_n`, same
        boxes as full NMS + cut), the images of the batch on parallel threads on the CPU.
        anchors [A, 4], logits [B, A], deltas [B, A, 4] -> per image (boxes [<=N, 4], scores [<=N]
        sorted desc).

        The boxes are constants (approximate joint training, §3.2 ii) unless ``keep_box_graph``:
        then they stay functions of ``deltas`` (non-approximate joint training, §3.2 iii): the
        selections (min size, top-k, NMS) pick boxes without gradient, decoding and clipping
        pass it (see :mod:`frcnn.layers.roi_warp` for the rule). Scores are always constants.
        """
        boxes, scores, picked = self.select_anchors(anchors, logits, deltas, image_sizes, settings, image_scales,
                                                    keep_box_graph)
        proposals = [image_boxes[index] for image_boxes, index in zip(boxes, picked)]
        proposal_scores = [image_scores[index] for image_scores, index in zip(scores, picked)]
        return proposals, proposal_scores

    def select_anchors(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor, image_sizes: list[tuple[int, int]],
        settings: ProposalSettings, image_scales: list[float] | None = None, keep_box_graph: bool = False,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The selection of :meth:`propose` (its rules), by anchor: -> (decoded, clipped boxes [B, A, 4],
        scores [B, A], per image the indices of the anchors whose boxes are its proposals [N_i], best first).
        """
        logits = logits.detach()
        if not keep_box_graph:
            deltas = deltas.detach()
        if settings.ranking == "random":  # Table 2 "w/o cls": rank by a random permutation
            logits = torch.rand(logits.shape, device=logits.device)
        if not settings.use_regression:  # Table 2 "w/o reg": proposals are the anchors
            deltas = torch.zeros_like(deltas)
        scales = [1.0] * len(image_sizes) if image_scales is None else [float(f) for f in image_scales]
        if len(scales) != len(image_sizes):
            raise ValueError(f"image_scales holds {len(scales)} factors for a batch of {len(image_sizes)} images")
        batch, num_anchors = logits.shape
        boxes = clip_to_images(decode_boxes(deltas, anchors), image_sizes)  # [B, A, 4]
        min_side_px = logits.new_tensor([settings.min_size_px * scale for scale in scales])[:, None]  # [B, 1]
        sides = boxes.detach()
        big_enough = ((sides[..., 2] - sides[..., 0]) >= min_side_px) & ((sides[..., 3] - sides[..., 1]) >= min_side_px)
        eligible = big_enough & centred_on_own_area(anchors, image_sizes, self.anchor_generator.stride)  # [B, A]
        top_n = num_anchors if settings.pre_nms_top_n <= 0 else min(settings.pre_nms_top_n, num_anchors)
        _, top_idx = logits.masked_fill(~eligible, float("-inf")).topk(top_n, dim=1)  # [B, K]
        top_eligible = eligible.gather(1, top_idx)  # [B, K]: a prefix of each row (the -inf rank last)
        scores = torch.sigmoid(logits)
        candidates = [top_idx[i][top_eligible[i]] for i in range(batch)]  # per image: anchors by decreasing score
        if settings.use_nms:  # NMS selects on the box values; the graph (if any) stays on `boxes`
            keeps = nms_top_n_per_image([(sides[i][kept], scores[i][kept]) for i, kept in enumerate(candidates)],
                                        settings.nms_thresh, settings.post_nms_top_n)
        else:  # already sorted by score (topk)
            keeps = [torch.arange(min(kept.numel(), settings.post_nms_top_n), device=kept.device)
                     for kept in candidates]
        return boxes, scores, [kept[keep] for kept, keep in zip(candidates, keeps)]

    def proposals_at(self, features: Tensor, image_sizes: list[tuple[int, int]], settings: Sequence[ProposalSettings],
                     image_scales: list[float] | None = None) -> list[tuple[list[Tensor], list[Tensor]]]:
        """The proposal layer once per entry of ``settings`` on one pass of the RPN head (e.g. the
        test-time 300 for the detector and the top 2000 for Fig. 4's recall, one conv pass).
        ``image_scales``: see :meth:`propose`.
        features [B, C, H, W] -> per settings: (proposals per image [N_i, 4], their scores [N_i])."""
        anchors = self.anchor_generator((features.shape[-2], features.shape[-1]))  # [A, 4]
        logits, deltas = self.head(features)
        return [self.propose(anchors, logits, deltas, image_sizes, one, image_scales) for one in settings]

    def forward(
        self, features: Tensor, image_sizes: list[tuple[int, int]], gt_boxes: list[Tensor] | None = None,
        with_proposals: bool = True, image_scales: list[float] | None = None, keep_box_graph: bool = False,
    ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        """features [B, C, H, W] -> (proposals, their scores, losses (empty unless gt_boxes)).

        ``with_proposals=False`` skips the proposal layer (an RPN-only training step needs
        only the loss). ``image_scales``: each image's resize factor (see :meth:`propose`);
        ``keep_box_graph``: proposals differentiable w.r.t. the RPN's box regression
        (non-approximate joint training, :meth:`propose`)."""
        feature_hw = (features.shape[-2], features.shape[-1])
        anchors = self.anchor_generator(feature_hw)  # [A, 4]
        logits, deltas = self.head(features)
        settings = self.train_proposals if self.training else self.test_proposals
        proposals, scores = [], []
        if with_proposals:
            proposals, scores = self.propose(anchors, logits, deltas, image_sizes, settings, image_scales, keep_box_graph)
        losses = {}
        if gt_boxes is not None:
            losses = self.loss(logits, deltas, anchors, gt_boxes, image_sizes, feature_hw)
        return proposals, scores, losses
