"""Fast R-CNN detector on RoI-pooled shared features (paper §3.2; Fast R-CNN §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes, roi_align, roi_pool

from frcnn.layers.onednn_linear import OneDNNLinear
from frcnn.layers.precision import full_precision
from frcnn.layers.roi_warp import roi_warp
from frcnn.modeling.backbone.base import has_training_batchnorm
from frcnn.modeling.boxes import decode_boxes, encode_boxes
from frcnn.modeling.sampling import IGNORE, NEGATIVE, POSITIVE, sample_balanced

POOL_TYPES = ("max", "align")
TARGET_NORMALIZATIONS = ("fixed", "empirical")
WARP_SAMPLING_RATIO = 2  # roi_warp: 2 x 2 bilinear samples per output bin


class FastRCNNPredictor(nn.Module):
    """C+1-way classifier and per-class box regressor (4 outputs per class, background included
    so index arithmetic stays simple). Init: cls N(0, 0.01), reg N(0, 0.001) (Fast R-CNN §2.3)."""

    def __init__(self, representation_size: int, num_classes_with_bg: int):
        super().__init__()
        self.cls_score = OneDNNLinear(representation_size, num_classes_with_bg)
        self.bbox_pred = OneDNNLinear(representation_size, num_classes_with_bg * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:  # [R, D] -> [R, C+1], [R, (C+1)*4]
        # scores and boxes are decoded in float32 (frcnn.layers.precision)
        return full_precision(self.cls_score(features)), full_precision(self.bbox_pred(features))


def label_rois(
    proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, fg_iou_thresh: float, bg_iou_hi: float, bg_iou_lo: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Fast R-CNN RoI labels: foreground if IoU >= 0.5 with a ground truth, background if
    IoU in [0.1, 0.5); others ignored. An image without objects has only background RoIs.

    Returns (sample labels {1, 0, -1} [R], class labels [R] (0 = background), matched gt idx [R]).
    """
    num = proposals.shape[0]
    if gt_boxes.numel() == 0:
        zeros = torch.zeros(num, dtype=torch.int64, device=proposals.device)
        return zeros.clone(), zeros.clone(), zeros
    iou = box_iou(gt_boxes, proposals)  # [G, R]
    max_iou, matched = iou.max(dim=0)
    sample_labels = torch.full((num,), IGNORE, dtype=torch.int64, device=proposals.device)
    sample_labels[(max_iou >= bg_iou_lo) & (max_iou < bg_iou_hi)] = NEGATIVE
    sample_labels[max_iou >= fg_iou_thresh] = POSITIVE
    class_labels = torch.where(sample_labels == POSITIVE, gt_labels[matched], torch.zeros_like(matched))
    return sample_labels, class_labels, matched


class RoIHead(nn.Module):
    """RoI pooling + per-RoI head + predictor, with RoI sampling, loss and post-processing.

    ``warp_boxes``: pool with :func:`frcnn.layers.roi_warp.roi_warp` (bilinear samples, 2 x 2 per bin,
    reduced by max for pool_type "max", by average for "align"), which is differentiable w.r.t.
    the RoI coordinates: the non-approximate joint training of §3.2 iii. The same pooling is
    used at test time, so the head sees the features it was trained on.
    """

    def __init__(
        self,
        head: nn.Module,
        representation_size: int,
        num_classes: int,
        roi_output_size: int = 7,
        spatial_scale: float = 1.0 / 16,
        pool_type: str = "max",
        rois_per_minibatch: int = 128,
        positive_fraction: float = 0.25,
        fg_iou_thresh: float = 0.5,
        bg_iou_hi: float = 0.5,
        bg_iou_lo: float = 0.1,
        target_stds=(0.1, 0.1, 0.2, 0.2),
        add_gt_to_proposals: bool = True,
        smooth_l1_beta: float = 1.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.3,
        detections_per_image: int = 100,
        warp_boxes: bool = False,
        target_normalization: str = "fixed",
    ):
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise ValueError(f"roi_head.pool_type={pool_type!r}; allowed: {POOL_TYPES}")
        if not 0 <= bg_iou_lo <= bg_iou_hi <= fg_iou_thresh <= 1:
            raise ValueError(
                f"need 0 <= roi_head.bg_iou_lo ({bg_iou_lo}) <= roi_head.bg_iou_hi ({bg_iou_hi}) "
                f"<= roi_head.fg_iou ({fg_iou_thresh}) <= 1"
            )
        if rois_per_minibatch < 1:
            raise ValueError(f"roi_head.rois_per_minibatch must be >= 1, got {rois_per_minibatch}")
        if len(target_stds) != 4 or min(target_stds) <= 0:
            raise ValueError(f"roi_head.target_stds must be 4 positive numbers, got {list(target_stds)}")
        if target_normalization not in TARGET_NORMALIZATIONS:
            raise ValueError(f"roi_head.target_normalization={target_normalization!r}; allowed: {TARGET_NORMALIZATIONS}")
        self.head = head
        self.conv_head = any(isinstance(m, nn.Conv2d) for m in head.modules())  # C4: layers of the classification net
        self.predictor = FastRCNNPredictor(representation_size, num_classes + 1)
        self.num_classes = num_classes
        self.roi_output_size = roi_output_size
        self.spatial_scale = spatial_scale
        self.pool_type = pool_type
        self.rois_per_minibatch = rois_per_minibatch
        self.positive_fraction = positive_fraction
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_hi = bg_iou_hi
        self.bg_iou_lo = bg_iou_lo
        self.target_normalization = target_normalization
        if target_normalization == "fixed":  # one mean (0) and std for every class: weights 1 / std
            self.box_weights = tuple(1.0 / s for s in target_stds)
        else:  # per-class statistics of the training RoIs' targets (set_target_statistics), in the state dict
            self.box_weights = (1.0, 1.0, 1.0, 1.0)
            self.register_buffer("target_means", torch.zeros(num_classes + 1, 4))  # [C+1, 4]
            self.register_buffer("target_stds", torch.tensor([list(target_stds)] * (num_classes + 1)))  # [C+1, 4]
        self.add_gt_to_proposals = add_gt_to_proposals
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.warp_boxes = warp_boxes

    def pool(self, features: Tensor, rois: list[Tensor]) -> Tensor:
        """RoI max pooling (Fast R-CNN §2.1) or RoIAlign, or RoI warping with ``warp_boxes``: -> [R, C, P, P].

        Under mixed precision (``trainer.precision=bf16-mixed`` / ``16-mixed``) the conv features
        arrive in bfloat16 / float16; torchvision's CPU RoI kernels have no bfloat16 version, so
        pooling runs in float32 (the fc layers after it run in the autocast dtype again). The RoIs
        are float32 already: the RPN's outputs leave it in float32 (:mod:`frcnn.layers.precision`)."""
        features = full_precision(features)
        if self.warp_boxes:
            reduction = "max" if self.pool_type == "max" else "avg"
            return roi_warp(features, rois, self.roi_output_size, self.spatial_scale, WARP_SAMPLING_RATIO,
                            aligned=True, reduction=reduction)
        if self.pool_type == "max":
            return roi_pool(features, rois, self.roi_output_size, self.spatial_scale)
        return roi_align(features, rois, self.roi_output_size, self.spatial_scale, sampling_ratio=2, aligned=True)

    def region_features(self, pooled: Tensor) -> Tensor:
        """The per-RoI head on pooled regions [R, C, P, P] -> [R, representation_size].

        A head of convolutions (C4: ResNet's layer4, the rest of a timm net) runs channels-last: oneDNN's NHWC
        kernels take 0.64-0.88x the NCHW time there, forward and forward + backward, AVX-512 and AVX2 (BENCHMARKS.md,
        "EfficientNet-Lite0"); not while a BatchNorm of the head trains (its NHWC backward sums in float32, see
        :class:`frcnn.modeling.faster_rcnn.FasterRCNN`). The values are the same up to float rounding."""
        if self.conv_head and not has_training_batchnorm(self.head):
            pooled = pooled.contiguous(memory_format=torch.channels_last)
        return self.head(pooled)

    def rois_per_image(self, num_images: int) -> int:
        """Fast R-CNN §2.3: R = 128 RoIs per mini-batch of N = 2 images, i.e. R / N = 64 from each
        image (the authors' code: ``BATCH_SIZE / num_images``). A batch with fewer images (the last,
        smaller batch of an epoch) takes more from each, so every step sees R RoIs."""
        return max(1, self.rois_per_minibatch // max(num_images, 1))

    def sample_rois(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Mini-batch of R RoIs, R / N from each of the N images, 25% foreground (Fast R-CNN
        §2.3); ground-truth boxes join the proposals (as in the paper's reference code).

        Proposals that carry a graph (non-approximate joint training) keep it on the returned
        RoIs; labels and regression targets are computed from their values, without gradient.
        Returns (rois per image, class labels [R_total], regression targets [R_total, 4]).
        """
        per_image = self.rois_per_image(len(proposals))
        rois, labels, targets = [], [], []
        for props, boxes, classes in zip(proposals, gt_boxes, gt_labels):
            if self.add_gt_to_proposals and boxes.numel():
                props = torch.cat((props, boxes.to(props.dtype)))
            prop_values = props.detach()
            sample_labels, class_labels, matched = label_rois(
                prop_values, boxes, classes, self.fg_iou_thresh, self.bg_iou_hi, self.bg_iou_lo
            )
            pos, neg = sample_balanced(sample_labels, per_image, self.positive_fraction)
            keep = torch.cat((pos, neg))
            image_rois = props[keep]
            rois.append(image_rois)
            labels.append(class_labels[keep])
            if boxes.numel():
                targets.append(encode_boxes(boxes[matched[keep]], prop_values[keep], self.box_weights))
            else:
                targets.append(torch.zeros_like(prop_values[keep]))
        labels, targets = torch.cat(labels), torch.cat(targets)
        if self.target_normalization == "empirical":  # (t - mean of the class) / std of the class
            targets = (targets - self.target_means[labels]) / self.target_stds[labels]
        return rois, labels, targets

    def set_target_statistics(self, means: Tensor, stds: Tensor) -> None:
        """The per-class means and stds [C+1, 4] of the regression targets (eq. 2 deltas, unit weights) that
        ``target_normalization='empirical'`` normalises by: the authors' alt-opt Fast R-CNN stages
        (py-faster-rcnn lib/roi_data_layer/roidb.py ``add_bbox_regression_targets``), computed over the
        training RoIs by :func:`frcnn.engine.target_stats.regression_target_statistics`."""
        if self.target_normalization != "empirical":
            raise ValueError("set_target_statistics needs roi_head.target_normalization=empirical")
        if means.shape != self.target_means.shape or stds.shape != self.target_stds.shape:
            raise ValueError(f"target statistics must be [{self.num_classes + 1}, 4] (classes + background), "
                             f"got means {list(means.shape)}, stds {list(stds.shape)}")
        if not bool((stds > 0).all()) or not bool(torch.isfinite(means).all()):
            raise ValueError("target statistics: every std must be > 0 and every mean finite")
        self.target_means.copy_(means)
        self.target_stds.copy_(stds)

    def raw_deltas(self, box_deltas: Tensor) -> Tensor:
        """Predicted [R, (C+1)*4] -> eq. 2 deltas in the units :func:`decode_boxes` takes with ``box_weights``:
        unchanged for fixed normalisation; x std + mean of each class for empirical (what the authors
        fold into bbox_pred's weights when they snapshot: W std, b std + mean, lib/fast_rcnn/train.py)."""
        if self.target_normalization == "fixed":
            return box_deltas
        return (box_deltas.unflatten(1, (-1, 4)) * self.target_stds + self.target_means).flatten(1)

    def loss(self, class_logits: Tensor, box_deltas: Tensor, labels: Tensor, regression_targets: Tensor) -> dict[str, Tensor]:
        """Fast R-CNN multi-task loss: log loss over C+1 classes + [u >= 1] smooth-L1 of the
        true class's box, both averaged over the sampled RoIs (λ = 1)."""
        num_rois = max(labels.numel(), 1)
        loss_cls = F.cross_entropy(class_logits, labels, reduction="sum") / num_rois
        fg = torch.nonzero(labels > 0).flatten()
        deltas = box_deltas.unflatten(1, (-1, 4))[fg, labels[fg]]  # [F, 4]
        loss_reg = F.smooth_l1_loss(deltas, regression_targets[fg], beta=self.smooth_l1_beta, reduction="sum") / num_rois
        return {"det_cls": loss_cls, "det_reg": loss_reg, "det": loss_cls + loss_reg}

    def postprocess(
        self, class_logits: Tensor, box_deltas: Tensor, rois: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per-class boxes, score threshold, per-class NMS at 0.3, top 100 per image."""
        probs = F.softmax(class_logits, dim=-1)  # [R, C+1]
        counts = [r.shape[0] for r in rois]
        boxes_all = decode_boxes(self.raw_deltas(box_deltas), torch.cat(rois), self.box_weights)  # [R, (C+1)*4]
        detections = []
        for image_probs, image_boxes, image_hw in zip(probs.split(counts), boxes_all.split(counts), image_sizes):
            num = image_probs.shape[0]
            image_boxes = clip_boxes_to_image(image_boxes.unflatten(1, (-1, 4)), image_hw)[:, 1:]  # [R, C, 4]
            scores = image_probs[:, 1:]  # [R, C]
            labels = torch.arange(1, self.num_classes + 1, device=scores.device).expand(num, -1)
            image_boxes, scores, labels = image_boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
            keep = torch.nonzero(scores > self.score_thresh).flatten()
            image_boxes, scores, labels = image_boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(image_boxes, 1e-2)
            image_boxes, scores, labels = image_boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(image_boxes, scores, labels, self.nms_thresh)[: self.detections_per_image]
            detections.append({"boxes": image_boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return detections

    def forward(
        self,
        features: Tensor,
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        gt_boxes: list[Tensor] | None = None,
        gt_labels: list[Tensor] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training (gt given): sample RoIs and return losses. Otherwise: detections."""
        if gt_boxes is not None:
            rois, labels, targets = self.sample_rois(proposals, gt_boxes, gt_labels)
            class_logits, box_deltas = self.predictor(self.region_features(self.pool(features, rois)))
            return [], self.loss(class_logits, box_deltas, labels, targets)
        class_logits, box_deltas = self.predictor(self.region_features(self.pool(features, proposals)))
        return self.postprocess(class_logits, box_deltas, proposals, image_sizes), {}
