"""The fast paths (issue 6) give what the straightforward versions give, on random inputs.

* ``nms_top_n`` (NMS that stops at the post-NMS N) == ``torchvision.ops.nms(...)[:N]``, exactly, and
  so do the images of a batch resolved on parallel threads;
* the RPN proposal layer == decode every anchor, clip, min size, sort, cut, full NMS, cut (the authors' order);
* the cached anchor grid == anchors placed location by location in a Python loop;
* the channels-last shared conv == the NCHW one: features, RPN outputs, losses, detections;
* the fc layers in oneDNN == F.linear (MKL): detections, losses and gradients.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torchvision.ops import clip_boxes_to_image, nms, remove_small_boxes

from frcnn.layers.fast_paths import torch_layers_only
from frcnn.layers.nms import nms_top_n, nms_top_n_per_image
from frcnn.modeling.anchors import AnchorGenerator, reference_anchors
from frcnn.modeling.backbone import build_backbone, set_trainable
from frcnn.modeling.boxes import decode_boxes
from frcnn.modeling.faster_rcnn import FasterRCNN
from frcnn.modeling.roi_head import RoIHead
from frcnn.modeling.rpn import ProposalSettings, RegionProposalNetwork


def _random_boxes(gen: torch.Generator, num: int, extent: float = 600.0, quantise: float | None = None):
    xy = torch.rand(num, 2, generator=gen) * extent
    wh = 4 + torch.rand(num, 2, generator=gen) * extent / 3
    boxes = torch.cat((xy, xy + wh), dim=1)
    return (boxes / quantise).round() * quantise if quantise else boxes


@pytest.mark.parametrize("iou_thresh", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("top_n, chunk_size", [(1, None), (50, 16), (300, None), (300, 97), (2000, None)])
def test_nms_top_n_equals_full_nms_then_cut(iou_thresh, top_n, chunk_size):
    gen = torch.Generator().manual_seed(top_n + int(100 * iou_thresh))
    for trial in range(6):
        num = [0, 1, 700, 2500, 6000, 3000][trial]
        boxes = _random_boxes(gen, num, quantise=16.0 if trial == 5 else None)  # 5: exact duplicates
        scores = torch.rand(num, generator=gen)
        if trial % 2:  # many tied scores: the order among ties must match the kernel's
            scores = (scores * 8).round() / 8
        expected = nms(boxes, scores, iou_thresh)[:top_n]
        got = nms_top_n(boxes, scores, iou_thresh, top_n, chunk_size)
        assert torch.equal(got, expected), (num, trial)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_nms_per_image_on_threads_equals_one_image_at_a_time(workers):
    gen = torch.Generator().manual_seed(workers)
    candidates = [(_random_boxes(gen, num, extent=256.0), torch.rand(num, generator=gen)) for num in (2304, 0, 900, 2304, 17)]
    got = nms_top_n_per_image(candidates, 0.7, 2000, workers=workers)
    expected = [nms(boxes, scores, 0.7)[:2000] for boxes, scores in candidates]
    assert len(got) == len(expected) and all(torch.equal(g, e) for g, e in zip(got, expected))


def _reference_propose(anchors, logits, deltas, image_sizes, settings: ProposalSettings, stride=16):
    """The proposal layer written plainly, one image at a time, in the authors' order
    (py-faster-rcnn proposal_layer.py): the anchors of the image's own area (their window starts on it:
    the anchors the image alone has), decode them, clip, drop small boxes, sort by score, cut to the
    pre-NMS N, full NMS, cut to the post-NMS N."""
    proposals, scores = [], []
    for i, (height, width) in enumerate(image_sizes):
        window_start = (anchors[:, :2] + anchors[:, 2:]) / 2 - stride / 2  # [A, 2] (x, y)
        own = torch.where((window_start[:, 0] < width) & (window_start[:, 1] < height))[0]
        boxes = clip_boxes_to_image(decode_boxes(deltas[i][own], anchors[own]), (height, width))
        keep = remove_small_boxes(boxes, settings.min_size_px)
        boxes, image_logits = boxes[keep], logits[i][own][keep]
        order = image_logits.argsort(descending=True)[: settings.pre_nms_top_n]
        boxes, image_scores = boxes[order], torch.sigmoid(image_logits[order])
        keep = nms(boxes, image_scores, settings.nms_thresh)[: settings.post_nms_top_n]
        proposals.append(boxes[keep])
        scores.append(image_scores[keep])
    return proposals, scores


# (500, 400, 48 px): a third of the anchors are under 48 px, so cutting to the pre-NMS N before the
# size test (not the authors' order) leaves under 400 boxes after NMS; the authors' order keeps 400
@pytest.mark.parametrize("pre_n, post_n, min_size_px", [(6000, 300, 16), (12000, 2000, 16), (500, 100, 16),
                                                       (500, 400, 48)])
def test_proposal_layer_equals_plain_version(pre_n, post_n, min_size_px):
    gen = torch.Generator().manual_seed(pre_n)
    rpn = RegionProposalNetwork(8, anchor_scales_px=(32, 64, 128))
    image_sizes = [(600, 1000), (480, 992)]
    anchors = rpn.anchor_generator((38, 63))
    num = anchors.shape[0]
    # distinct logits (a tie would make topk's and argsort's orders differ, legitimately)
    logits = torch.stack([torch.randperm(num, generator=gen) for _ in range(2)]).float() * (8.0 / num) - 4.0
    deltas = torch.randn(2, num, 4, generator=gen) * 0.3
    settings = ProposalSettings(pre_n, post_n, nms_thresh=0.7, min_size_px=min_size_px)
    got_boxes, got_scores = rpn.propose(anchors, logits, deltas, image_sizes, settings)
    ref_boxes, ref_scores = _reference_propose(anchors, logits, deltas, image_sizes, settings)
    for got_b, got_s, ref_b, ref_s in zip(got_boxes, got_scores, ref_boxes, ref_scores):
        assert got_b.shape == ref_b.shape and got_b.shape[0] == post_n
        torch.testing.assert_close(got_b, ref_b)
        torch.testing.assert_close(got_s, ref_s)


def test_cached_anchor_grid_equals_loop_placement():
    scales, ratios, stride, (height, width) = (32, 64, 128), (0.5, 1.0, 2.0), 16, (5, 7)
    generator = AnchorGenerator(scales, ratios, stride)
    reference = reference_anchors(scales, ratios)
    expected = []
    for i in range(height):
        for j in range(width):
            centre = torch.tensor([(j + 0.5) * stride, (i + 0.5) * stride] * 2)
            expected.extend(centre + ref for ref in reference)
    first = generator((height, width))
    torch.testing.assert_close(first, torch.stack(expected))
    assert generator((height, width)) is first  # cached per feature size
    assert generator((height + 1, width)).shape[0] == (height + 1) * width * 9


def _small_model(channels_last: bool, pool_type: str = "max") -> FasterRCNN:
    torch.manual_seed(0)
    backbone = build_backbone("small")
    rpn = RegionProposalNetwork(backbone.out_channels, anchor_scales_px=(32, 64, 128),
                                train_proposals=ProposalSettings(12000, 2000, 0.7, 4),
                                test_proposals=ProposalSettings(6000, 300, 0.7, 4))
    head = RoIHead(backbone.head, backbone.representation_size, num_classes=5, pool_type=pool_type)
    # Spread the scores: with the N(0, 0.01) init all objectness scores are nearly tied, and
    # float rounding alone would reorder proposals (a different but equally valid sample).
    torch.nn.init.normal_(rpn.head.cls_logits.weight, std=1.0)
    torch.nn.init.normal_(head.predictor.cls_score.weight, std=1.0)
    return FasterRCNN(backbone, rpn, head, channels_last=channels_last)


def _inputs():
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 256, 256, generator=gen), torch.rand(3, 224, 256, generator=gen)]
    targets = [
        {"boxes": torch.tensor([[20.0, 30.0, 120.0, 110.0], [140.0, 150.0, 230.0, 250.0]]),
         "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[60.0, 40.0, 180.0, 200.0]]), "labels": torch.tensor([5])},
    ]
    return images, targets


@pytest.mark.parametrize("pool_type", ["max", "align"])
def test_channels_last_conv_gives_the_nchw_numbers(pool_type):
    """Same features, RPN outputs, losses, gradients and detections up to float rounding.

    Proposals are held fixed for the losses and detections: which of ~2300 near-equal
    candidates win a rank can change with rounding alone, which is no difference in the model.
    Likewise RoI max pooling routes a gradient to the arg-max cell, which rounding can move
    between two near-equal cells: gradients are pinned tightly with RoIAlign, loosely with max.
    """
    nchw = _small_model(channels_last=False, pool_type=pool_type)
    for module in nchw.backbone.modules():  # BatchNorm on running statistics (as VGG/ZF: no BN)
        if isinstance(module, torch.nn.BatchNorm2d):
            set_trainable(module, False)
    nhwc = copy.deepcopy(nchw)
    nhwc.channels_last = True
    nhwc.nchw_backward_on_cpu = False  # the NHWC backward too (GPU's rule), to compare its gradients
    images, targets = _inputs()
    gt_boxes, gt_labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]

    nchw.eval(), nhwc.eval()
    with torch.no_grad():
        feats_a, sizes = nchw.features(images)
        feats_b, _ = nhwc.features(images)
        assert feats_b.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(feats_b, feats_a, rtol=1e-4, atol=1e-4)
        logits_a, deltas_a = nchw.rpn.head(feats_a)
        logits_b, deltas_b = nhwc.rpn.head(feats_b)
        torch.testing.assert_close(logits_b, logits_a, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(deltas_b, deltas_a, rtol=1e-4, atol=1e-4)
        proposals, _, _ = nchw.rpn(feats_a, sizes)
        dets_a, _ = nchw.roi_head(feats_a, proposals, sizes)
        dets_b, _ = nhwc.roi_head(feats_b, proposals, sizes)
    for a, b in zip(dets_a, dets_b):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(b["boxes"], a["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-4, atol=1e-5)

    nchw.train(), nhwc.train()
    assert nhwc._conv_channels_last()
    losses = {}
    for name, model in (("nchw", nchw), ("nhwc", nhwc)):
        feats, sizes = model.features(images)
        torch.manual_seed(2)
        _, _, rpn_losses = model.rpn(feats, sizes, gt_boxes, with_proposals=False)
        torch.manual_seed(3)
        _, det_losses = model.roi_head(feats, proposals, sizes, gt_boxes, gt_labels)
        losses[name] = {**rpn_losses, **det_losses}
        (rpn_losses["rpn"] + det_losses["det"]).backward()
    for key, value in losses["nchw"].items():
        torch.testing.assert_close(losses["nhwc"][key], value, rtol=1e-4, atol=1e-5)
    grads_a = dict(nchw.named_parameters())
    for name, param in nhwc.named_parameters():  # sums over many terms: compare as vectors
        if not param.requires_grad:
            continue
        reference = grads_a[name].grad
        rel_err = (param.grad - reference).norm() / reference.norm().clamp(min=1e-12)
        assert rel_err < (1e-4 if pool_type == "align" else 3e-2), (name, float(rel_err))


def test_channels_last_is_off_while_a_batchnorm_trains():
    """PyTorch's channels-last BatchNorm backward sums in float32 and loses ~1% of the small
    net's (nearly cancelling) gradient; the NCHW one sums in float64. Training BN -> NCHW."""
    model = _small_model(channels_last=True)
    model.train()
    assert not model._conv_channels_last()
    images, _ = _inputs()
    assert model.features(images)[0].is_contiguous()
    model.eval()
    assert model._conv_channels_last()


def test_channels_last_only_where_it_is_not_slower_on_the_cpu():
    """CPU rule (BENCHMARKS.md): NHWC conv forward, NCHW wherever the conv's backward runs."""
    model = _small_model(channels_last=True)
    for module in model.backbone.modules():  # no training BatchNorm: VGG / ZF's case
        if isinstance(module, torch.nn.BatchNorm2d):
            set_trainable(module, False)
    images, _ = _inputs()
    model.train()
    assert not model._conv_channels_last()  # a trainable conv: its backward runs in NCHW
    assert model.features(images)[0].is_contiguous()
    with torch.no_grad():
        assert model._conv_channels_last()  # no backward: NHWC
    set_trainable(model.backbone, False)  # the 4-step recipe's steps 3-4: frozen shared conv
    assert model._conv_channels_last()
    assert model.features(images)[0].is_contiguous(memory_format=torch.channels_last)
    model.eval()
    assert model._conv_channels_last()


def test_onednn_fc_layers_give_the_f_linear_numbers():
    """The RoI head's fc layers and predictor in oneDNN (frcnn.layers.onednn_linear) give the F.linear
    detections, losses and gradients up to float rounding, for the same proposals."""
    model = _small_model(channels_last=False)
    images, targets = _inputs()
    gt_boxes, gt_labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]
    model.eval()
    with torch.inference_mode():
        features, sizes = model.features(images)
        proposals, _, _ = model.rpn(features, sizes)
        onednn, _ = model.roi_head(features, proposals, sizes)
        with torch_layers_only():
            plain, _ = model.roi_head(features, proposals, sizes)
    assert sum(len(d["scores"]) for d in plain) > 0
    for a, b in zip(plain, onednn):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(b["boxes"], a["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-4, atol=1e-5)

    model.train()
    features, sizes = model.features(images)
    features = features.detach()
    results = {}
    for name, context in (("onednn", contextlib.nullcontext), ("plain", torch_layers_only)):
        model.zero_grad()
        torch.manual_seed(3)
        with context():
            _, losses = model.roi_head(features, proposals, sizes, gt_boxes, gt_labels)
            losses["det"].backward()
        results[name] = ({k: v.detach() for k, v in losses.items()},
                         {n: p.grad.clone() for n, p in model.roi_head.named_parameters() if p.grad is not None})
    (losses_a, grads_a), (losses_b, grads_b) = results["plain"], results["onednn"]
    for key, value in losses_a.items():
        torch.testing.assert_close(losses_b[key], value, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-6)


def test_fixed_leading_layers_run_channels_last_while_the_rest_trains_nchw():
    """VGG-16's conv1_1 .. pool2 (fixed, §3.1.3) run forward only even in training: channels-last
    there, NCHW from the first trained layer; same features and gradients as all-NCHW."""
    model = _small_model(channels_last=True)
    for module in model.backbone.modules():  # no training BatchNorm: VGG / ZF's case
        if isinstance(module, torch.nn.BatchNorm2d):
            set_trainable(module, False)
    set_trainable(model.backbone.stage1, False)
    set_trainable(model.backbone.stage2, False)
    plain = copy.deepcopy(model)
    plain.channels_last = False
    model.train(), plain.train()
    assert model._forward_only_prefix() == 2 and plain._forward_only_prefix() == 0
    formats = []
    hook = model.backbone.stage3.register_forward_pre_hook(
        lambda _, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    stage2_formats = []
    model.backbone.stage2.register_forward_hook(
        lambda _, args, out: stage2_formats.append(out.is_contiguous(memory_format=torch.channels_last)))
    images, _ = _inputs()
    features, _ = model.features(images)
    hook.remove()
    assert stage2_formats == [True] and formats == [False] and features.is_contiguous()
    reference, _ = plain.features(images)
    torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-4)
    features.square().mean().backward()
    reference.square().mean().backward()
    for (name, param), ref in zip(model.backbone.named_parameters(), plain.backbone.parameters()):
        assert (param.grad is None) == (ref.grad is None), name
        if param.grad is not None:
            torch.testing.assert_close(param.grad, ref.grad, rtol=1e-3, atol=1e-5)
    with torch.no_grad():
        assert model._forward_only_prefix() == 0  # no backward at all: the whole conv channels-last
    set_trainable(model.backbone.stage1, True)
    assert model._forward_only_prefix() == 0


def test_conv_roi_head_runs_channels_last_with_the_nchw_numbers():
    """A C4 head (the rest of a timm net per RoI) runs channels-last (BENCHMARKS.md: 0.64-0.88x NCHW): the same
    features and input gradient as NCHW; an fc head and a head whose BatchNorm trains stay as they are."""
    from torch import nn

    from frcnn.modeling.backbone import build_backbone
    from frcnn.modeling.roi_head import RoIHead

    torch.manual_seed(0)
    backbone = build_backbone("timm", weights=None, model="resnet18")
    roi_head = RoIHead(backbone.head, backbone.representation_size, 3, roi_output_size=14, spatial_scale=1 / 16)
    assert roi_head.conv_head
    seen = []
    hook = roi_head.head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    pooled = torch.randn(6, backbone.out_channels, 14, 14, requires_grad=True)
    fast = roi_head.region_features(pooled)
    (fast_grad,) = torch.autograd.grad(fast.square().sum(), pooled)
    plain = roi_head.head(pooled)  # the NCHW reference
    (plain_grad,) = torch.autograd.grad(plain.square().sum(), pooled)
    assert seen == [False, True]  # region_features handed the head a channels-last batch
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-3, atol=1e-4)
    hook.remove()
    trainable_bn = RoIHead(nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.Flatten(1)), 8 * 12 * 12, 3)
    trainable_bn.train()
    seen.clear()
    trainable_bn.head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    trainable_bn.region_features(torch.randn(2, 8, 14, 14))
    assert trainable_bn.conv_head and seen == [True]  # NCHW while its BatchNorm trains
    fc = RoIHead(nn.Sequential(nn.Flatten(1), nn.Linear(8 * 49, 16)), 16, 3)
    assert not fc.conv_head
