import torch

from frcnn.modeling.rpn import ProposalSettings, RegionProposalNetwork, RPNHead
from frcnn.modeling.sampling import sample_balanced


def make_rpn(**kwargs):
    defaults = dict(in_channels=8, anchor_scales_px=(32, 64), anchor_ratios=(0.5, 1.0, 2.0))
    defaults.update(kwargs)
    torch.manual_seed(0)
    return RegionProposalNetwork(**defaults)


def test_head_shapes_and_paper_initialisation():
    head = RPNHead(in_channels=512, num_anchors=9)
    logits, deltas = head(torch.randn(2, 512, 5, 7))
    assert logits.shape == (2, 5 * 7 * 9) and deltas.shape == (2, 5 * 7 * 9, 4)
    for layer in (head.conv, head.cls_logits, head.bbox_deltas):
        assert abs(layer.weight.std().item() - 0.01) < 0.002  # N(0, 0.01)
        assert torch.all(layer.bias == 0)


def test_head_output_order_matches_anchor_order():
    head = RPNHead(in_channels=1, num_anchors=2)
    features = torch.zeros(1, 1, 2, 3)
    with torch.no_grad():
        head.conv.weight.zero_(); head.conv.bias.fill_(1.0)
        head.cls_logits.weight.zero_(); head.cls_logits.bias.copy_(torch.tensor([10.0, 20.0]))
        head.bbox_deltas.weight.zero_(); head.bbox_deltas.bias.copy_(torch.arange(8.0))
    logits, deltas = head(features)
    # location-major then anchor: [a0, a1, a0, a1, ...]
    assert logits[0, :4].tolist() == [10.0, 20.0, 10.0, 20.0]
    assert deltas[0, 1].tolist() == [4.0, 5.0, 6.0, 7.0]


def test_sampling_caps_at_256_and_half_positive():
    labels = torch.cat((torch.ones(500, dtype=torch.long), torch.zeros(2000, dtype=torch.long)))
    pos, neg = sample_balanced(labels, 256, 0.5)
    assert pos.numel() == 128 and neg.numel() == 128
    few = torch.cat((torch.ones(10, dtype=torch.long), torch.zeros(2000, dtype=torch.long), -torch.ones(5, dtype=torch.long)))
    pos, neg = sample_balanced(few, 256, 0.5)
    assert pos.numel() == 10 and neg.numel() == 246  # padded with negatives
    assert (few[pos] == 1).all() and (few[neg] == 0).all()


def test_lambda_scales_only_the_regression_term():
    features = torch.randn(1, 8, 8, 8)
    gt = [torch.tensor([[20.0, 20.0, 70.0, 60.0]])]
    losses = {}
    for lam in (1.0, 10.0):
        rpn = make_rpn(reg_lambda=lam)
        rpn.train()
        torch.manual_seed(1)
        _, _, losses[lam] = rpn(features, [(128, 128)], gt)
    assert torch.isclose(losses[1.0]["rpn_cls"], losses[10.0]["rpn_cls"])
    assert torch.isclose(losses[1.0]["rpn_reg"], losses[10.0]["rpn_reg"])
    assert losses[1.0]["rpn_reg"] > 0
    assert torch.isclose(losses[10.0]["rpn"], losses[10.0]["rpn_cls"] + 10 * losses[10.0]["rpn_reg"])


def test_reg_normalizer_anchor_locations_divides_by_feature_positions():
    features = torch.randn(1, 8, 8, 8)
    gt = [torch.tensor([[20.0, 20.0, 70.0, 60.0]])]
    out = {}
    for normalizer in ("anchor_locations", "minibatch"):
        rpn = make_rpn(reg_normalizer=normalizer, ignore_cross_boundary=False)
        torch.manual_seed(1)
        out[normalizer] = rpn(features, [(128, 128)], gt)[2]["rpn_reg"]
    # same sampled set (same seed); 64 locations vs 256 sampled anchors
    assert torch.isclose(out["anchor_locations"] * 64, out["minibatch"] * 256, rtol=1e-4)


def test_image_without_objects_trains_with_all_negatives():
    rpn = make_rpn()
    features = torch.randn(1, 8, 8, 8, requires_grad=True)
    _, _, losses = rpn(features, [(128, 128)], [torch.zeros(0, 4)])
    assert losses["rpn_reg"] == 0 and losses["rpn_cls"] > 0
    losses["rpn"].backward()
    assert features.grad is not None


def test_proposals_are_clipped_sorted_nms_filtered_and_capped():
    rpn = make_rpn(test_proposals=ProposalSettings(pre_nms_top_n=100, post_nms_top_n=20, nms_thresh=0.7, min_size_px=4))
    rpn.eval()
    with torch.no_grad():
        rpn.head.bbox_deltas.weight.normal_(std=0.5)
        proposals, scores, losses = rpn(torch.randn(2, 8, 8, 8), [(128, 100), (90, 128)])
    assert losses == {}
    for boxes, image_scores, (h, w) in zip(proposals, scores, [(128, 100), (90, 128)]):
        assert 0 < boxes.shape[0] <= 20
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (image_scores[:-1] >= image_scores[1:]).all()
        assert ((boxes[:, 2] - boxes[:, 0]) >= 4).all()
        from torchvision.ops import box_iou
        iou = box_iou(boxes, boxes) - torch.eye(boxes.shape[0])
        assert iou.max() <= 0.7 + 1e-6


def _ablation_rpn(**settings):
    base = dict(pre_nms_top_n=-1, post_nms_top_n=30, nms_thresh=0.7, min_size_px=0)
    base.update(settings)
    rpn = make_rpn(ignore_cross_boundary=False, test_proposals=ProposalSettings(**base))
    rpn.eval()
    with torch.no_grad():
        rpn.head.bbox_deltas.weight.normal_(std=0.5)
    return rpn


def test_table2_ablation_without_regression_proposes_anchors():
    rpn = _ablation_rpn(use_regression=False)
    features = torch.randn(1, 8, 8, 8)
    proposals, _, _ = rpn(features, [(128, 128)])
    anchors = rpn.anchor_generator((8, 8)).clamp(0, 128)
    # every proposal is one of the (clipped) anchors
    diffs = (proposals[0][:, None, :] - anchors[None, :, :]).abs().sum(-1)
    assert diffs.min(dim=1).values.max() < 1e-4


def test_table2_ablation_without_nms_keeps_top_n_overlapping():
    from torchvision.ops import box_iou

    features = torch.randn(1, 8, 8, 8)
    proposals, scores, _ = _ablation_rpn(use_nms=False, nms_thresh=0.3)(features, [(128, 128)])
    assert proposals[0].shape[0] == 30
    assert (box_iou(proposals[0], proposals[0]) - torch.eye(30)).max() > 0.3  # NMS would have removed these
    assert (scores[0][:-1] >= scores[0][1:]).all()
    with_nms, _, _ = _ablation_rpn(nms_thresh=0.3)(features, [(128, 128)])
    n = with_nms[0].shape[0]
    assert (box_iou(with_nms[0], with_nms[0]) - torch.eye(n)).max() <= 0.3 + 1e-6


def test_table2_ablation_random_ranking_ignores_cls_scores():
    features = torch.randn(1, 8, 8, 8)
    torch.manual_seed(0)
    ranked, _, _ = _ablation_rpn()(features, [(128, 128)])
    torch.manual_seed(0)
    shuffled, _, _ = _ablation_rpn(ranking="random")(features, [(128, 128)])
    assert not torch.equal(ranked[0], shuffled[0])


def test_minimum_proposal_size_is_in_original_image_pixels():
    """The authors' proposal layer drops boxes under min_size x im_scale: 16 px of the original image
    is 25.6 px on a VOC image scaled 1.6x to 600 px."""
    rpn = make_rpn()
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [40.0, 0.0, 70.0, 30.0], [0.0, 50.0, 40.0, 90.0]])  # 20, 30, 40 px
    logits = torch.tensor([[3.0, 2.0, 1.0]]).repeat(2, 1)  # [B=2, A=3]
    deltas = torch.zeros(2, 3, 4)  # proposals = anchors
    settings = ProposalSettings(pre_nms_top_n=-1, post_nms_top_n=10, nms_thresh=0.7, min_size_px=16)
    sides = lambda boxes: (boxes[:, 2] - boxes[:, 0]).tolist()  # noqa: E731
    proposals, _ = rpn.propose(anchors, logits, deltas, [(100, 100)] * 2, settings, image_scales=[1.0, 1.6])
    assert sides(proposals[0]) == [20.0, 30.0, 40.0]  # not rescaled: 16 px
    assert sides(proposals[1]) == [30.0, 40.0]  # scaled 1.6x: 25.6 px on the network input
    unscaled, _ = rpn.propose(anchors, logits, deltas, [(100, 100)] * 2, settings)
    assert [sides(p) for p in unscaled] == [[20.0, 30.0, 40.0]] * 2  # None: factor 1
    shrunk, _ = rpn.propose(anchors, logits, deltas, [(100, 100)] * 2, settings, image_scales=[0.5, 2.5])
    assert [sides(p) for p in shrunk] == [[20.0, 30.0, 40.0], [40.0]]  # 8 px; 40 px


def test_small_boxes_are_dropped_before_the_pre_nms_cut():
    """The authors' order (py-faster-rcnn proposal_layer.py): decode, clip, min size, THEN sort and keep
    the pre-NMS N. The 3 best-scoring anchors are 8 px (under the 16 px minimum) and 3 big ones score
    lower: with pre_nms_top_n=3 all 3 big ones reach NMS (cutting first would leave none)."""
    rpn = make_rpn()
    small = torch.tensor([[0.0, 0.0, 8.0, 8.0], [20.0, 0.0, 28.0, 8.0], [40.0, 0.0, 48.0, 8.0]])
    big = torch.tensor([[0.0, 20.0, 30.0, 50.0], [40.0, 20.0, 70.0, 50.0], [80.0, 20.0, 110.0, 50.0]])
    anchors = torch.cat((big[:1], small, big[1:]))  # the small ones not first: the rank, not the index, decides
    logits = torch.tensor([[1.0, 5.0, 4.0, 3.0, 2.0, 0.5]])  # [B=1, A=6]
    settings = ProposalSettings(pre_nms_top_n=3, post_nms_top_n=10, nms_thresh=0.7, min_size_px=16)
    proposals, scores = rpn.propose(anchors, logits, torch.zeros(1, 6, 4), [(128, 128)], settings)
    assert proposals[0].tolist() == big[[1, 0, 2]].tolist()  # by score: 2.0, 1.0, 0.5
    torch.testing.assert_close(scores[0], torch.sigmoid(torch.tensor([2.0, 1.0, 0.5])))
    two, _ = rpn.propose(anchors, logits, torch.zeros(1, 6, 4), [(128, 128)],
                         ProposalSettings(pre_nms_top_n=2, post_nms_top_n=10, min_size_px=16))
    assert two[0].tolist() == big[[1, 0]].tolist()  # the cut counts only boxes of usable size
