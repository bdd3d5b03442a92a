"""The paper's losses against numbers worked out by hand (issue 34, item 2).

RPN, paper eq. 1:  L = (1 / N_cls) sum_i L_cls(p_i, p*_i) + lambda (1 / N_reg) sum_i p*_i L_reg(t_i, t*_i)
with L_cls the log loss over object / not object, N_cls the mini-batch size (the sampled anchors),
L_reg the smooth-L1 of Fast R-CNN and N_reg the number of anchor locations (``reg_normalizer:
anchor_locations``, the paper) or the mini-batch size (``minibatch``).

Fast R-CNN (Fast R-CNN eq. 1):  L = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v), lambda = 1, with t^u the
deltas of the TRUE class u only; as the authors' Caffe layers do, both terms are averaged over the R sampled
RoIs (SoftmaxWithLoss: mean over R; SmoothL1Loss: sum / R, background rows included in R but giving 0).

Binary log loss of a logit z:  label 1: log(1 + e^-z);  label 0: log(1 + e^z).
Smooth L1 (beta):  |x| < beta: 0.5 x^2 / beta;  else |x| - 0.5 beta.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from frcnn.modeling.roi_head import RoIHead
from frcnn.modeling.rpn import RegionProposalNetwork, rpn_loss

LN2, LN3 = math.log(2.0), math.log(3.0)
LOG_4_3 = math.log(4.0 / 3.0)  # = 0.2876821: log(1 + e^-z) at z = ln 3, log(1 + e^z) at z = -ln 3
JUNK = 9.0  # deltas / targets of rows that must not enter a loss


# ------------------------------------------------------------------------------------------------ RPN
def test_rpn_loss_terms_on_given_samples():
    """rpn_loss on 4 anchors: positive 2, negatives 0 and 3 sampled, anchor 1 not sampled.

    L_cls: anchor 2 (label 1, z = ln 3): log(1 + 1/3) = log(4/3) = 0.2876821
           anchor 0 (label 0, z = 0):    log 2 = 0.6931472
           anchor 3 (label 0, z = -ln 3): log(1 + 1/3) = 0.2876821
           sum 1.2685114 / N_cls = 3 (the sampled anchors, not the 4)  -> 0.4228371
    L_reg: anchor 2 only (p* = 1): deltas - targets = (0.5, 0, -2, 0), beta 1:
           0.5 * 0.25 + 0 + (2 - 0.5) + 0 = 1.625;  / N_reg = 5  -> 0.325
    """
    logits = torch.tensor([0.0, 100.0, LN3, -LN3])  # anchor 1's 100 would add ~100 if it were counted
    labels = torch.tensor([0, 0, 1, 0])
    targets = torch.tensor([[JUNK] * 4, [JUNK] * 4, [0.25, 0.0, 0.5, 0.0], [JUNK] * 4])
    deltas = torch.tensor([[0.0] * 4, [0.0] * 4, [0.75, 0.0, -1.5, 0.0], [0.0] * 4])
    loss_cls, loss_reg = rpn_loss(logits, deltas, labels, targets, torch.tensor([2]), torch.tensor([0, 3]),
                                  reg_normalizer_count=5.0, smooth_l1_beta=1.0)
    assert loss_cls.item() == pytest.approx((LOG_4_3 + LN2 + LOG_4_3) / 3)
    assert loss_cls.item() == pytest.approx(0.4228371, abs=1e-6)
    assert loss_reg.item() == pytest.approx(0.325)


# One 32 x 32 image, stride 16 (a 2 x 2 feature map), anchors of sides 16 and 8 (k = 2 per location):
#   location (0, 0), centre (8, 8):  0: [0, 0, 16, 16]    1: [4, 4, 12, 12]
#   location (0, 1), centre (24, 8): 2: [16, 0, 32, 16]   3: [20, 4, 28, 12]
#   location (1, 0), centre (8, 24): 4: [0, 16, 16, 32]   5: [4, 20, 12, 28]
#   location (1, 1), centre (24, 24): 6: [16, 16, 32, 32]  7: [20, 20, 28, 28]
# Ground truth [2, 0, 18, 16]: IoU with anchor 0 = 14*16 / (256 + 256 - 224) = 224 / 288 = 0.78 > 0.7: positive;
# anchor 1: 64 / 256 = 0.25, anchor 2: 32 / 480 = 0.07, the rest 0: all < 0.3, negative. 1 positive, 7 negatives;
# batch_size 8, positive_fraction 0.5: every anchor is sampled (N_cls = 8).
# Target of anchor 0 (eq. 2): t_x = (10 - 8) / 16 = 0.125, t_y = 0, t_w = log(16 / 16) = 0, t_h = 0.
ANCHORS = torch.tensor([[0, 0, 16, 16], [4, 4, 12, 12], [16, 0, 32, 16], [20, 4, 28, 12],
                        [0, 16, 16, 32], [4, 20, 12, 28], [16, 16, 32, 32], [20, 20, 28, 28]], dtype=torch.float32)
GT = torch.tensor([[2.0, 0.0, 18.0, 16.0]])
# logits: anchor 0 (positive) ln 3 -> log(4/3); anchor 1 (negative) 0 -> log 2; anchors 2-7 (negative) -ln 3 -> log(4/3)
RPN_LOGITS = torch.tensor([[LN3, 0.0, -LN3, -LN3, -LN3, -LN3, -LN3, -LN3]])
# sum = 7 log(4/3) + log 2 = 2.0137747 + 0.6931472 = 2.7069219;  L_cls = / 8 = 0.3383652
RPN_L_CLS = (7 * LOG_4_3 + LN2) / 8
# anchor 0's deltas (0.625, 0, 0, -2) - target (0.125, 0, 0, 0) = (0.5, 0, 0, -2); every negative has junk deltas
RPN_DELTAS = torch.tensor([[[0.625, 0.0, 0.0, -2.0]] + [[JUNK] * 4] * 7])


def make_rpn(reg_lambda: float, reg_normalizer: str, beta: float) -> RegionProposalNetwork:
    rpn = RegionProposalNetwork(in_channels=1, anchor_scales_px=[16, 8], anchor_ratios=[1.0], stride=16,
                                fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=8, positive_fraction=0.5,
                                reg_lambda=reg_lambda, reg_normalizer=reg_normalizer, smooth_l1_beta=beta,
                                ignore_cross_boundary=True)
    assert torch.equal(rpn.anchor_generator((2, 2)), ANCHORS)
    return rpn


@pytest.mark.parametrize("reg_lambda, reg_normalizer, beta, l_reg", [
    # smooth L1, beta 1: 0.5 * 0.5^2 + (2 - 0.5) = 0.125 + 1.5 = 1.625;  N_reg = 2 x 2 locations = 4 -> 0.40625
    (10.0, "anchor_locations", 1.0, 1.625 / 4),
    (3.0, "anchor_locations", 1.0, 0.40625),
    # N_reg = the 8 sampled anchors -> 1.625 / 8 = 0.203125
    (3.0, "minibatch", 1.0, 0.203125),
    # beta 4: both |x| < 4: 0.5 * 0.25 / 4 + 0.5 * 4 / 4 = 0.03125 + 0.5 = 0.53125;  / 4 locations = 0.1328125
    (0.5, "anchor_locations", 4.0, 0.1328125),
])
def test_rpn_loss_is_equation_1(reg_lambda, reg_normalizer, beta, l_reg):
    """L = L_cls / N_cls + lambda L_reg / N_reg, e.g. lambda 3, anchor locations:
    0.3383652 + 3 * 0.40625 = 1.5571152; lambda 10: 0.3383652 + 4.0625 = 4.4008652."""
    torch.manual_seed(0)
    rpn = make_rpn(reg_lambda, reg_normalizer, beta)
    losses = rpn.loss(RPN_LOGITS, RPN_DELTAS, ANCHORS, [GT], [(32, 32)], (2, 2))
    assert losses["rpn_cls"].item() == pytest.approx(0.3383652, abs=1e-6)
    assert losses["rpn_cls"].item() == pytest.approx(RPN_L_CLS)
    assert losses["rpn_reg"].item() == pytest.approx(l_reg)
    assert losses["rpn"].item() == pytest.approx(RPN_L_CLS + reg_lambda * l_reg)


def test_rpn_total_for_lambda_3_by_hand():
    rpn = make_rpn(3.0, "anchor_locations", 1.0)
    assert rpn.loss(RPN_LOGITS, RPN_DELTAS, ANCHORS, [GT], [(32, 32)], (2, 2))["rpn"].item() == \
        pytest.approx(1.5571152, abs=1e-6)


# ------------------------------------------------------------------------------------------------ Fast R-CNN
# 3 RoIs of 2 classes (+ background): true classes u = 2, 0 (background), 1.
# Softmax log loss:
#   RoI 0, u = 2, logits (0, 0, ln 2):  p_2 = 2 / (1 + 1 + 2) = 1/2  -> log 2
#   RoI 1, u = 0, logits (ln 3, 0, 0):  p_0 = 3 / 5                -> log(5/3)
#   RoI 2, u = 1, logits (0, 0, 0):     p_1 = 1/3                  -> log 3
#   sum = log(2 * 5/3 * 3) = log 10 = 2.3025851;  / R = 3 -> 0.7675284
# Box loss on t^u (deltas laid out [background, class 1, class 2] x 4 per RoI), beta 1:
#   RoI 0: class-2 deltas (1, 0, 0, 0) - v (0.5, 0, 0, 0) = (0.5, 0, 0, 0) -> 0.125
#          (its class-1 deltas equal v: a loss on class 1's deltas would give 0 here)
#   RoI 1: background, [u >= 1] = 0 -> nothing (junk deltas and target)
#   RoI 2: class-1 deltas (0, 0, -3, 0) - v (0, 0, 0, 0) -> 3 - 0.5 = 2.5
#   sum 2.625;  / R = 3 (all sampled RoIs, as the authors' SmoothL1Loss / num) -> 0.875
# L = 0.7675284 + 1 * 0.875 = 1.6425284
DET_LOGITS = torch.tensor([[0.0, 0.0, LN2], [LN3, 0.0, 0.0], [0.0, 0.0, 0.0]])
DET_LABELS = torch.tensor([2, 0, 1])
DET_DELTAS = torch.tensor([
    [JUNK, JUNK, JUNK, JUNK, 0.5, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
    [JUNK] * 12,
    [JUNK, JUNK, JUNK, JUNK, 0.0, 0.0, -3.0, 0.0, 0.0, 0.0, 0.0, 0.0],
])
DET_TARGETS = torch.tensor([[0.5, 0.0, 0.0, 0.0], [JUNK] * 4, [0.0, 0.0, 0.0, 0.0]])


def make_roi_head(beta: float = 1.0) -> RoIHead:
    return RoIHead(head=nn.Identity(), representation_size=4, num_classes=2, smooth_l1_beta=beta)


def test_fast_rcnn_loss_uses_the_true_class_deltas_averaged_over_the_rois():
    losses = make_roi_head().loss(DET_LOGITS, DET_DELTAS, DET_LABELS, DET_TARGETS)
    assert losses["det_cls"].item() == pytest.approx(math.log(10.0) / 3)
    assert losses["det_cls"].item() == pytest.approx(0.7675284, abs=1e-6)
    assert losses["det_reg"].item() == pytest.approx(0.875)
    assert losses["det"].item() == pytest.approx(1.6425284, abs=1e-6)  # lambda = 1


def test_fast_rcnn_box_loss_follows_the_class_of_each_roi():
    """Swapping the two foreground RoIs' classes (and their rows) changes which 4 deltas count:
    RoI 0 now u = 1 with class-1 deltas (0.5, 0, 0, 0) against v (0, 0, 0, 0): 0.125;
    RoI 2 now u = 2 with class-2 deltas (0, 0, 3, 0) against v (0, 0, 0, 0): 2.5; class-1 deltas there are junk.
    sum 2.625 / 3 = 0.875; a loss on class 1's deltas for every RoI would see RoI 2's junk (9 - 0.5 per coordinate)."""
    deltas = torch.tensor([
        [JUNK, JUNK, JUNK, JUNK, 0.5, 0.0, 0.0, 0.0, JUNK, JUNK, JUNK, JUNK],
        [JUNK] * 12,
        [JUNK, JUNK, JUNK, JUNK, JUNK, JUNK, JUNK, JUNK, 0.0, 0.0, 3.0, 0.0],
    ])
    labels = torch.tensor([1, 0, 2])
    targets = torch.tensor([[0.0, 0.0, 0.0, 0.0], [JUNK] * 4, [0.0, 0.0, 0.0, 0.0]])
    losses = make_roi_head().loss(DET_LOGITS, deltas, labels, targets)
    assert losses["det_reg"].item() == pytest.approx(0.875)


def test_fast_rcnn_smooth_l1_beta():
    """beta 4: RoI 0: 0.5 * 0.25 / 4 = 0.03125; RoI 2: 0.5 * 9 / 4 = 1.125; sum 1.15625 / 3 = 0.3854167."""
    losses = make_roi_head(beta=4.0).loss(DET_LOGITS, DET_DELTAS, DET_LABELS, DET_TARGETS)
    assert losses["det_reg"].item() == pytest.approx(1.15625 / 3)


def test_fast_rcnn_loss_with_only_background_rois_has_no_box_term():
    """All u = 0: no box term. L_cls with every label 0:
    RoI 0 logits (0, 0, ln 2): p_0 = 1/4 -> log 4; RoI 1: log(5/3); RoI 2: log 3; sum log 20 / 3."""
    losses = make_roi_head().loss(DET_LOGITS, DET_DELTAS, torch.zeros(3, dtype=torch.int64), DET_TARGETS)
    assert losses["det_reg"].item() == 0.0
    assert losses["det_cls"].item() == pytest.approx(math.log(20.0) / 3)
