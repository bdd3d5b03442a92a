"""frcnn.modeling.rpn where the suite left mutants alive (scripts/mutation_test.sh): the loss of a batch of two
pictures on a non-square feature map against the two pictures' own losses (eq. 1's N_cls and N_reg over the
batch), the cross-boundary rule (§3.3) switched on and off, rpn_loss's defaults and normalisers below 1, and
proposals that are constants unless the box graph is asked for (§3.2 ii / iii)."""

import math

import pytest
import torch

from frcnn.modeling.rpn import ProposalSettings, RegionProposalNetwork, rpn_loss

# One 32 x 48 picture, stride 16: a 2 x 3 feature map, anchors of sides 16 and 8 (k = 2): 12 anchors.
HW, FEATURE_HW = (32, 48), (2, 3)
GTS = [torch.tensor([[2.0, 0.0, 18.0, 16.0]]), torch.tensor([[16.0, 16.0, 32.0, 32.0], [30.0, 0.0, 46.0, 15.0]])]


def make_rpn(**overrides) -> RegionProposalNetwork:
    settings = dict(in_channels=1, anchor_scales_px=[16, 8], anchor_ratios=[1.0], stride=16, fg_iou_thresh=0.7,
                    bg_iou_thresh=0.3, batch_size_per_image=64, positive_fraction=0.5, reg_lambda=10.0,
                    reg_normalizer="anchor_locations", smooth_l1_beta=1.0, ignore_cross_boundary=True)
    return RegionProposalNetwork(**{**settings, **overrides})


@pytest.mark.parametrize("reg_normalizer", ["anchor_locations", "minibatch"])
def test_a_batch_loss_is_the_pictures_sums_over_the_batch_normalisers(reg_normalizer):
    """batch_size_per_image 64 > 12 anchors: every labelled anchor is sampled, no randomness. Each picture's
    loss alone is its sum / its own N; the batch's is both sums / the batch's N: N_cls = all sampled anchors,
    N_reg = 2 x 3 locations x 2 pictures (or the sampled anchors for 'minibatch')."""
    rpn = make_rpn(reg_normalizer=reg_normalizer)
    anchors = rpn.anchor_generator(FEATURE_HW)  # [12, 4]
    g = torch.Generator().manual_seed(0)
    logits, deltas = torch.randn(2, 12, generator=g), torch.randn(2, 12, 4, generator=g) * 0.3
    counts, sums_cls, sums_reg = [], [], []
    for i in range(2):  # each picture's sums: rpn_loss over all its labelled anchors, normalised by 1
        labels, targets = rpn.assign_targets(anchors, GTS[i : i + 1], [HW])
        labels, targets = labels[0], targets[0]
        pos, neg = torch.nonzero(labels == 1).flatten(), torch.nonzero(labels == 0).flatten()
        counts.append(len(pos) + len(neg))
        loss_cls, loss_reg = rpn_loss(logits[i], deltas[i], labels, targets, pos, neg, reg_normalizer_count=1.0)
        sums_cls.append(loss_cls * counts[i])
        sums_reg.append(loss_reg)
    assert counts[0] != counts[1] or sums_cls[0] != sums_cls[1]  # the two pictures differ
    batch = rpn.loss(logits, deltas, anchors, GTS, [HW, HW], FEATURE_HW)
    n_reg = 2 * 3 * 2 if reg_normalizer == "anchor_locations" else sum(counts)
    assert batch["rpn_cls"].item() == pytest.approx(float(sum(sums_cls)) / sum(counts), rel=1e-5)
    assert batch["rpn_reg"].item() == pytest.approx(float(sum(sums_reg)) / n_reg, rel=1e-5)
    assert batch["rpn"].item() == pytest.approx(batch["rpn_cls"].item() + 10.0 * batch["rpn_reg"].item(), rel=1e-6)


def test_sampled_indices_of_the_second_picture_point_into_its_own_anchors():
    rpn = make_rpn()
    labels = torch.full((2, 12), -1)
    labels[0, 3], labels[0, 5], labels[1, 4], labels[1, 7] = 1, 0, 1, 0
    positives, negatives = rpn.sample(labels)
    assert sorted(positives.tolist()) == [3, 12 + 4] and sorted(negatives.tolist()) == [5, 12 + 7]


def test_cross_boundary_anchors_are_ignored_only_when_asked():
    """Anchors of side 32 at stride 16 centred 8 px from the border cross it. With ignore_cross_boundary they
    are neither positive nor negative (§3.3), and the gt's best anchor is the best inside one; without, they
    are labelled like any other."""
    anchors = torch.tensor([[-8.0, -8.0, 24.0, 24.0], [0.0, 0.0, 16.0, 16.0], [24.0, 8.0, 56.0, 40.0]])
    gt = [torch.tensor([[-8.0, -8.0, 24.0, 24.0]])]  # a gt on the crossing anchor: IoU 1, 0.25, 0
    labels, _ = make_rpn(ignore_cross_boundary=True).assign_targets(anchors, gt, [HW])
    assert labels.tolist() == [[-1, 1, -1]]
    labels, _ = make_rpn(ignore_cross_boundary=False).assign_targets(anchors, gt, [HW])
    assert labels.tolist() == [[1, 0, 0]]


def test_rpn_loss_default_beta_and_normalisers_below_one():
    """One sampled positive anchor (z = 0: log 2) with a delta error of 0.5: smooth L1 with the default beta 1
    is 0.5 x 0.5^2 = 0.125. N_cls = 1 sample; N_reg is at least 1 (0.5 counts as 1)."""
    logits, labels = torch.tensor([0.0]), torch.tensor([1])
    deltas, targets = torch.tensor([[0.5, 0.0, 0.0, 0.0]]), torch.zeros(1, 4)
    loss_cls, loss_reg = rpn_loss(logits, deltas, labels, targets, torch.tensor([0]), torch.tensor([], dtype=torch.long),
                                  reg_normalizer_count=1.0)
    assert loss_cls.item() == pytest.approx(math.log(2.0)) and loss_reg.item() == pytest.approx(0.125)
    _, loss_reg = rpn_loss(logits, deltas, labels, targets, torch.tensor([0]), torch.tensor([], dtype=torch.long),
                           reg_normalizer_count=0.5)
    assert loss_reg.item() == pytest.approx(0.125)


def test_proposals_are_constants_unless_the_box_graph_is_kept():
    rpn = make_rpn().train()
    features = torch.randn(1, 1, *FEATURE_HW, requires_grad=True)
    proposals, scores, _ = rpn(features, [HW])
    assert not proposals[0].requires_grad and not scores[0].requires_grad  # approximate joint training (§3.2 ii)
    proposals, scores, _ = rpn(features, [HW], keep_box_graph=True)
    assert proposals[0].requires_grad and not scores[0].requires_grad  # non-approximate (§3.2 iii): boxes only
    anchors = rpn.anchor_generator(FEATURE_HW)
    deltas = torch.zeros(1, 12, 4, requires_grad=True)
    settings = ProposalSettings(pre_nms_top_n=-1, post_nms_top_n=5, min_size_px=0.0)
    proposals, _ = rpn.propose(anchors, torch.zeros(1, 12), deltas, [HW], settings)
    assert len(proposals[0]) > 0 and not proposals[0].requires_grad  # propose's default: constants
    proposals, _ = rpn.propose(anchors, torch.zeros(1, 12), deltas, [HW], settings, keep_box_graph=True)
    assert proposals[0].requires_grad


def test_random_ranking_draws_on_the_logits_device():
    """Table 2's "w/o cls" ranking draws its random scores on the device of the logits (a model on a GPU
    ranks on the GPU), not on torch's default device: with the default device made "meta", proposals of
    CPU inputs are still computed on the CPU."""
    rpn = make_rpn()
    anchors = rpn.anchor_generator(FEATURE_HW)
    settings = ProposalSettings(pre_nms_top_n=-1, post_nms_top_n=5, min_size_px=0.0, ranking="random")
    logits, deltas = torch.randn(1, 12), torch.zeros(1, 12, 4)
    with torch.device("meta"):
        boxes, scores, picked = rpn.select_anchors(anchors, logits, deltas, [HW], settings)
    assert scores.device.type == "cpu" and picked[0].device.type == "cpu" and len(picked[0]) == 5
    assert ((scores >= 0.5) & (scores < 0.7311)).all()  # sigmoid of uniform [0, 1) draws


def test_image_scales_of_the_wrong_length_are_refused_with_the_counts():
    """One resize factor per picture: 1 factor for a batch of 2 is refused, the message naming both counts."""
    rpn = make_rpn()
    anchors = rpn.anchor_generator(FEATURE_HW)
    settings = ProposalSettings(pre_nms_top_n=-1, post_nms_top_n=5)
    with pytest.raises(ValueError, match="image_scales holds 1 factors for a batch of 2 images"):
        rpn.select_anchors(anchors, torch.zeros(2, 12), torch.zeros(2, 12, 4), [HW, HW], settings, image_scales=[1.0])


def test_select_anchors_gives_constant_boxes_by_default():
    """select_anchors, like propose, keeps no graph from the deltas unless asked (approximate joint training)."""
    rpn = make_rpn()
    anchors = rpn.anchor_generator(FEATURE_HW)
    deltas = torch.zeros(1, 12, 4, requires_grad=True)
    settings = ProposalSettings(pre_nms_top_n=-1, post_nms_top_n=5, min_size_px=0.0)
    boxes, _, _ = rpn.select_anchors(anchors, torch.zeros(1, 12), deltas, [HW], settings)
    assert not boxes.requires_grad
    boxes, _, _ = rpn.select_anchors(anchors, torch.zeros(1, 12), deltas, [HW], settings, keep_box_graph=True)
    assert boxes.requires_grad


def test_proposal_settings_refuse_no_proposals_and_name_the_value():
    """At least one proposal after NMS (1 is allowed, 0 is not); an unknown ranking is refused naming the choices."""
    assert ProposalSettings(pre_nms_top_n=6000, post_nms_top_n=1).post_nms_top_n == 1
    with pytest.raises(ValueError, match="post_nms_top_n must be > 0, got 0"):
        ProposalSettings(pre_nms_top_n=6000, post_nms_top_n=0)
    with pytest.raises(ValueError, match=r"proposal ranking='score'; allowed: \('cls', 'random'\)"):
        ProposalSettings(pre_nms_top_n=6000, post_nms_top_n=300, ranking="score")


@pytest.mark.parametrize("pre_nms_top_n, expected", [(0, 12), (-1, 12), (1, 1), (3, 3), (50, 12)])
def test_the_pre_nms_cut(pre_nms_top_n, expected):
    """pre_nms_top_n <= 0 means no cut before NMS (all 12 anchors' boxes go on); N > 0 keeps the N best
    (at most all 12). Without NMS the post-NMS N (20) keeps them all, best first."""
    rpn = make_rpn()
    anchors = rpn.anchor_generator(FEATURE_HW)
    logits = torch.arange(12.0)[None]  # anchor 11 scores best
    settings = ProposalSettings(pre_nms_top_n=pre_nms_top_n, post_nms_top_n=20, min_size_px=0.0, use_nms=False)
    _, _, picked = rpn.select_anchors(anchors, logits, torch.zeros(1, 12, 4), [HW], settings)
    assert picked[0].tolist() == list(range(11, 11 - expected, -1))


def test_proposals_without_nms_are_indexed_on_the_scores_device():
    """The no-NMS ablation (Table 2) takes the top N by rank with an index made on the candidates' device,
    not torch's default device: with the default made "meta", CPU inputs still give CPU proposals."""
    rpn = make_rpn()
    anchors = rpn.anchor_generator(FEATURE_HW)
    logits, deltas = torch.arange(12.0)[None], torch.zeros(1, 12, 4)
    settings = ProposalSettings(pre_nms_top_n=-1, post_nms_top_n=4, min_size_px=0.0, use_nms=False)
    with torch.device("meta"):
        _, _, picked = rpn.select_anchors(anchors, logits, deltas, [HW], settings)
    assert picked[0].device.type == "cpu" and picked[0].tolist() == [11, 10, 9, 8]


def test_the_defaults_are_the_paper_s():
    """§3.1 / §3.1.2 / §3.1.3 / §3.3 as the defaults: anchors 128, 256, 512 px at ratios 1:2, 1:1, 2:1 on a
    stride of 16, a 3 x 3 window as wide as its input, IoU 0.7 / 0.3, 256 anchors per image at most half
    positive, λ = 10 over the anchor locations, smooth L1 with beta 1, cross-boundary anchors ignored in
    training, proposals 12000 -> 2000 (training) and 6000 -> 300 (test), NMS 0.7."""
    rpn = RegionProposalNetwork(in_channels=3)
    generator = rpn.anchor_generator
    assert generator.scales_px == (128.0, 256.0, 512.0) and generator.ratios == (0.5, 1.0, 2.0)
    assert generator.stride == 16
    assert rpn.head.conv.out_channels == 3 and rpn.head.cls_logits.out_channels == 9
    assert (rpn.fg_iou_thresh, rpn.bg_iou_thresh) == (0.7, 0.3)
    assert (rpn.batch_size_per_image, rpn.positive_fraction) == (256, 0.5)
    assert (rpn.reg_lambda, rpn.reg_normalizer, rpn.smooth_l1_beta) == (10.0, "anchor_locations", 1.0)
    assert rpn.ignore_cross_boundary is True
    assert (rpn.train_proposals.pre_nms_top_n, rpn.train_proposals.post_nms_top_n) == (12000, 2000)
    assert (rpn.test_proposals.pre_nms_top_n, rpn.test_proposals.post_nms_top_n) == (6000, 300)
    assert rpn.test_proposals.nms_thresh == 0.7 and rpn.test_proposals.min_size_px == 16.0


def test_given_proposal_settings_are_used():
    train, test = ProposalSettings(100, 10), ProposalSettings(50, 5)
    rpn = make_rpn(train_proposals=train, test_proposals=test)
    assert rpn.train_proposals is train and rpn.test_proposals is test


def test_the_head_layers_and_their_initialisation():
    """A 3 x 3 window (padding 1: one position per feature location) of mid_channels, k logits and 4k deltas
    per location from 1 x 1 layers, all weights N(0, 0.01) and biases 0 (§3.1.3); anchors on the given stride."""
    torch.manual_seed(0)
    rpn = RegionProposalNetwork(in_channels=64, mid_channels=32, anchor_scales_px=[16, 32], anchor_ratios=[1.0], stride=8)
    assert rpn.anchor_generator.stride == 8
    head = rpn.head
    assert head.conv.in_channels == 64 and head.conv.out_channels == 32
    assert head.conv.kernel_size == (3, 3) and head.conv.padding == (1, 1)
    assert head.cls_logits.kernel_size == (1, 1) and head.cls_logits.out_channels == 2
    assert head.bbox_deltas.kernel_size == (1, 1) and head.bbox_deltas.out_channels == 8
    for layer in (head.conv, head.cls_logits, head.bbox_deltas):
        assert 0.008 < layer.weight.std().item() < 0.012 and (layer.bias == 0).all()
    logits, deltas = head(torch.randn(2, 64, 5, 7))
    assert logits.shape == (2, 5 * 7 * 2) and deltas.shape == (2, 5 * 7 * 2, 4)


def test_rpn_settings_are_checked_at_their_edges():
    """λ >= 0 (0 and 0.5 allowed), 0 <= bg IoU <= fg IoU <= 1 (the equalities allowed), a named normaliser;
    each refusal names the setting and value."""
    for allowed in (dict(reg_lambda=0.0), dict(reg_lambda=0.5), dict(bg_iou_thresh=0.0),
                    dict(bg_iou_thresh=0.5, fg_iou_thresh=0.5), dict(fg_iou_thresh=1.0), dict(reg_normalizer="minibatch")):
        make_rpn(**allowed)
    with pytest.raises(ValueError, match="rpn.lambda must be >= 0, got -1.0"):
        make_rpn(reg_lambda=-1.0)
    with pytest.raises(ValueError, match=r"need 0 <= rpn.bg_iou \(0.3\) <= rpn.fg_iou \(1.5\) <= 1"):
        make_rpn(fg_iou_thresh=1.5)
    with pytest.raises(ValueError, match=r"rpn.reg_normalizer='batch'; allowed: \('anchor_locations', 'minibatch'\)"):
        make_rpn(reg_normalizer="batch")
