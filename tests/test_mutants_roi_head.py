"""frcnn.modeling.roi_head where the suite left mutants alive (scripts/mutation_test.sh): the post-processing
of Fast R-CNN §3.1 / py-faster-rcnn test.py (background column dropped, per-class boxes clipped to their own
picture, score threshold strict, tiny boxes dropped, per-class NMS at 0.3, top N per picture), the label
thresholds of Fast R-CNN §2.3 at their edges, and the target normalisations (fixed 1 / std, empirical)."""

import math

import pytest
import torch
from torch import nn

from torchvision.ops import batched_nms

from frcnn.modeling import roi_head
from frcnn.modeling.roi_head import RoIHead, label_rois

C = 3  # classes without background: logits [R, 4], deltas [R, 16]


def make_head(**overrides) -> RoIHead:
    return RoIHead(nn.Flatten(), representation_size=4, num_classes=C, **overrides)


def one_hot_logits(classes: list[int], strength: float = 3.0) -> torch.Tensor:
    """Logits with `strength` on the given class and 0 elsewhere: that class's probability e^3 / (3 + e^3)
    = 0.8700, each other's 1 / (3 + e^3) = 0.0433 (under the 0.05 threshold)."""
    logits = torch.zeros(len(classes), C + 1)
    logits[torch.arange(len(classes)), torch.tensor(classes)] = strength
    return logits


P_TOP = math.exp(3.0) / (3 + math.exp(3.0))


def test_detections_keep_each_picture_s_rois_labels_and_clip_to_its_own_size():
    """Zero deltas: each class's box is the RoI itself. Picture 0 (50 x 60) has RoIs 0-2, picture 1 (100 x 100)
    RoI 3 (the split follows the RoI counts). The background column (0) is never a detection; labels are the
    class indices 1..C; a box crossing picture 0's right border (x 60) is clipped there, the same box in the
    larger picture 1 is not; a RoI wholly right of picture 0 clips to width 0 and is dropped."""
    head = make_head().eval()
    rois = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 5.0, 80.0, 25.0], [70.0, 5.0, 90.0, 25.0]]),
            torch.tensor([[40.0, 5.0, 80.0, 25.0]])]
    logits = one_hot_logits([2, 1, 3, 3])
    dets = head.postprocess(logits, torch.zeros(4, 4 * (C + 1)), rois, [(50, 60), (100, 100)])
    assert len(dets) == 2
    assert dets[0]["boxes"].tolist() == [[10.0, 10.0, 30.0, 30.0], [40.0, 5.0, 60.0, 25.0]]
    assert dets[0]["labels"].tolist() == [2, 1]
    assert dets[0]["scores"].tolist() == pytest.approx([P_TOP, P_TOP], rel=1e-5)
    assert dets[1]["boxes"].tolist() == [[40.0, 5.0, 80.0, 25.0]] and dets[1]["labels"].tolist() == [3]
    assert dets[0]["labels"].dtype == torch.int64


def test_a_background_winner_gives_no_detection():
    """A RoI whose background logit wins (each class 0.0433 < 0.05) gives nothing."""
    dets = make_head().eval().postprocess(one_hot_logits([0]), torch.zeros(1, 16), [torch.tensor([[0.0, 0.0, 9, 9]])],
                                          [(20, 20)])
    assert dets[0]["boxes"].shape == (0, 4) and dets[0]["scores"].numel() == 0


def test_the_score_threshold_is_strict():
    """Equal logits give each of the 4 outputs probability exactly 1/4: a threshold of 0.25 keeps none
    (score > threshold, as py-faster-rcnn's `scores[:, j] > thresh`), 0.2499 keeps the 3 classes."""
    rois, deltas, logits = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])], torch.zeros(1, 16), torch.zeros(1, C + 1)
    assert make_head(score_thresh=0.25).postprocess(logits, deltas, rois, [(20, 20)])[0]["labels"].numel() == 0
    kept = make_head(score_thresh=0.2499).postprocess(logits, deltas, rois, [(20, 20)])[0]
    assert sorted(kept["labels"].tolist()) == [1, 2, 3] and kept["scores"].tolist() == [0.25] * 3


def test_the_default_score_threshold_is_0_05():
    """Fast R-CNN's test threshold 0.05: a class at probability 0.06 is kept, one at 0.04 is not."""
    probs = torch.tensor([[0.5, 0.06, 0.04, 0.4]])
    dets = make_head().postprocess(probs.log(), torch.zeros(1, 16), [torch.tensor([[0.0, 0.0, 10.0, 10.0]])],
                                   [(20, 20)])[0]
    assert sorted(dets["labels"].tolist()) == [1, 3]


def test_boxes_under_a_hundredth_of_a_pixel_are_dropped():
    """remove_small_boxes(1e-2): a box 0.5 px wide is kept, one 0.005 px wide is not."""
    rois = [torch.tensor([[10.0, 10.0, 10.5, 20.0], [30.0, 10.0, 30.005, 20.0]])]
    dets = make_head().postprocess(one_hot_logits([1, 2]), torch.zeros(2, 16), rois, [(50, 50)])[0]
    assert dets["labels"].tolist() == [1]


def test_nms_is_per_class_at_iou_0_3_and_keeps_the_top_n_by_score():
    """Class 1: a (best), c (IoU 0.35 with a: suppressed at 0.3), e (IoU 0.25 with a: kept; c, suppressed,
    suppresses nothing); class 2: the same box as a, kept (NMS per class). detections_per_image=2 keeps the
    two best of the three survivors, best first."""
    a, c, e = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 100.0 / 3.5], [0.0, 0.0, 10.0, 40.0]
    rois = [torch.tensor([a, c, e, a])]
    probs = torch.tensor([[0.06, 0.9, 0.02, 0.02], [0.12, 0.8, 0.04, 0.04], [0.22, 0.7, 0.04, 0.04],
                          [0.21, 0.02, 0.75, 0.02]])  # the classes not named above: under 0.05
    deltas = torch.zeros(4, 16)
    dets = make_head().postprocess(probs.log(), deltas, rois, [(50, 50)])[0]
    assert dets["labels"].tolist() == [1, 2, 1]
    assert dets["boxes"].tolist() == [a, a, e]
    assert dets["scores"].tolist() == pytest.approx([0.9, 0.75, 0.7], rel=1e-5)
    dets = make_head(detections_per_image=2).postprocess(probs.log(), deltas, rois, [(50, 50)])[0]
    assert dets["labels"].tolist() == [1, 2] and dets["scores"].tolist() == pytest.approx([0.9, 0.75], rel=1e-5)


def test_fixed_normalisation_decodes_deltas_divided_by_the_weights():
    """Fixed stds (0.1, 0.1, 0.2, 0.2): a predicted t_x of 1 moves the box by 0.1 x its width (eq. 2 with
    the target x 10); class 2's own deltas decode class 2's box."""
    head = make_head()
    deltas = torch.zeros(1, 16)
    deltas[0, 2 * 4] = 1.0  # class 2, t_x
    dets = head.postprocess(one_hot_logits([2]), deltas, [torch.tensor([[10.0, 10.0, 30.0, 30.0]])], [(50, 50)])[0]
    assert dets["boxes"].tolist() == [pytest.approx([12.0, 10.0, 32.0, 30.0], rel=1e-6)]


def empirical_head() -> RoIHead:
    head = make_head(target_normalization="empirical")
    means, stds = torch.zeros(C + 1, 4), torch.ones(C + 1, 4)
    means[2], stds[2] = torch.tensor([0.1, -0.05, 0.0, 0.0]), torch.tensor([0.5, 0.25, 1.0, 1.0])
    head.set_target_statistics(means, stds)
    return head


def test_empirical_normalisation_undoes_the_class_statistics():
    """Empirical: predicted t x std + mean of the class, then eq. 2 with unit weights: class 2 (mean t_x 0.1,
    std 0.5; mean t_y -0.05, std 0.25) predicting (1, 1, 0, 0) decodes t = (0.6, 0.2): a 20 px box moves
    12 px right and 4 px down; raw_deltas leaves fixed normalisation's deltas as they are."""
    head = empirical_head()
    deltas = torch.zeros(1, 16)
    deltas[0, 8:10] = 1.0
    raw = head.raw_deltas(deltas)
    assert raw[0, 8:12].tolist() == pytest.approx([0.6, 0.2, 0.0, 0.0]) and raw[0, :8].tolist() == [0.0] * 8
    dets = head.postprocess(one_hot_logits([2]), deltas, [torch.tensor([[10.0, 10.0, 30.0, 30.0]])], [(60, 60)])[0]
    assert dets["boxes"].tolist() == [pytest.approx([22.0, 14.0, 42.0, 34.0], rel=1e-6)]
    assert make_head().raw_deltas(deltas) is deltas


def test_empirical_targets_are_centred_and_scaled_by_the_class_statistics():
    """sample_rois with empirical statistics: a gt of class 2 over a proposal 2 px right of it has eq. 2
    t_x = -2 / 20 = -0.1; normalised (t - 0.1) / 0.5 = -0.4, t_y (0 + 0.05) / 0.25 = 0.2."""
    head = empirical_head()
    gt, prop = torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([[2.0, 0.0, 22.0, 20.0]])
    _, labels, targets = head.sample_rois([prop], [gt], [torch.tensor([2])])
    assert sorted(labels.tolist()) == [2, 2]  # the proposal (IoU 0.82) and the gt itself
    by_roi = {round(t[0].item(), 4): t.tolist() for t in targets}
    assert by_roi[-0.4] == pytest.approx([-0.4, 0.2, 0.0, 0.0], abs=1e-5)
    assert by_roi[-0.2] == pytest.approx([-0.2, 0.2, 0.0, 0.0], abs=1e-5)  # the gt: t = 0


@pytest.mark.parametrize("bad", ["shape", "std", "mean"])
def test_target_statistics_are_checked(bad):
    """The statistics must be [C+1, 4], every std > 0 and every mean finite; fixed normalisation takes none."""
    head = make_head(target_normalization="empirical")
    means, stds = torch.zeros(C + 1, 4), torch.ones(C + 1, 4)
    if bad == "shape":
        means, match = torch.zeros(C, 4), r"must be \[4, 4\] \(classes \+ background\), got means \[3, 4\], stds \[4, 4\]"
    elif bad == "std":
        stds[1, 2], match = 0.0, "every std must be > 0 and every mean finite"
    else:
        means[3, 0], match = float("inf"), "every std must be > 0 and every mean finite"
    with pytest.raises(ValueError, match=match):
        head.set_target_statistics(means, stds)
    assert head.target_means.abs().sum() == 0 and (head.target_stds == torch.tensor([0.1, 0.1, 0.2, 0.2])).all()
    with pytest.raises(ValueError, match="needs roi_head.target_normalization=empirical"):
        make_head().set_target_statistics(torch.zeros(C + 1, 4), torch.ones(C + 1, 4))


def test_label_thresholds_at_their_edges():
    """Fast R-CNN §2.3 with distinct thresholds (fg 0.6, background [0.1, 0.5)): IoU 0.6 is foreground,
    0.5 ignored (the background range is open at the top), exactly 0.1 background (closed at the bottom), 0.05
    ignored."""
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    props = torch.tensor([[0.0, 0.0, 6.0, 10.0], [0.0, 0.0, 5.0, 10.0], [0.0, 0.0, 1.0, 10.0], [0.0, 0.0, 0.5, 10.0]])
    sample_labels, classes, matched = label_rois(props, gt, torch.tensor([2]), 0.6, 0.5, 0.1)
    assert sample_labels.tolist() == [1, -1, 0, -1] and classes.tolist() == [2, 0, 0, 0]
    assert matched.tolist() == [0, 0, 0, 0]


def test_each_roi_takes_the_class_of_its_best_gt():
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    props = torch.tensor([[21.0, 20.0, 41.0, 40.0], [0.0, 0.0, 10.0, 11.0]])
    sample_labels, classes, matched = label_rois(props, gts, torch.tensor([3, 1]), 0.5, 0.5, 0.1)
    assert sample_labels.tolist() == [1, 1] and classes.tolist() == [1, 3] and matched.tolist() == [1, 0]


def test_a_picture_without_objects_has_only_background_rois():
    """No gt: every RoI is a negative (0) of class 0, int64 like the labels of a picture with objects."""
    sample_labels, classes, matched = label_rois(torch.rand(3, 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                                                 0.5, 0.5, 0.1)
    for t in (sample_labels, classes, matched):
        assert t.tolist() == [0, 0, 0] and t.dtype == torch.int64


def test_rois_per_image_is_the_minibatch_shared_and_at_least_one():
    """R / N from each of N pictures (integer division), at least 1; N = 0 counts as 1."""
    head = make_head(rois_per_minibatch=128)
    assert [head.rois_per_image(n) for n in (0, 1, 2, 3, 200)] == [128, 128, 64, 42, 1]
    assert make_head(rois_per_minibatch=1).rois_per_image(1) == 1


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="rois_per_minibatch must be >= 1, got 0"):
        make_head(rois_per_minibatch=0)
    make_head(rois_per_minibatch=1)
    with pytest.raises(ValueError, match=r"target_stds must be 4 positive numbers, got \[0.1, 0.1, 0.2\]"):
        make_head(target_stds=(0.1, 0.1, 0.2))
    with pytest.raises(ValueError, match="target_stds must be 4 positive numbers"):
        make_head(target_stds=(0.1, 0.1, 0.2, 0.0))
    with pytest.raises(ValueError, match=r"roi_head.pool_type='avg'; allowed: \('max', 'align'\)"):
        make_head(pool_type="avg")
    with pytest.raises(ValueError, match=r"target_normalization='none'; allowed: \('fixed', 'empirical'\)"):
        make_head(target_normalization="none")
    with pytest.raises(ValueError, match=r"need 0 <= roi_head.bg_iou_lo \(0.2\) <= roi_head.bg_iou_hi \(0.1\) "
                                         r"<= roi_head.fg_iou \(0.5\) <= 1"):
        make_head(bg_iou_lo=0.2, bg_iou_hi=0.1)
    make_head(bg_iou_lo=0.0, bg_iou_hi=1.0, fg_iou_thresh=1.0)  # the closed ends are allowed


def test_ground_truth_joins_the_proposals_only_when_asked():
    """add_gt_to_proposals=False: the RoIs are drawn from the proposals alone (a proposal far from the gt is
    the only, background, RoI); True: the gt box is a foreground RoI of its class too."""
    gt, prop = torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([[0.0, 10.0, 20.0, 40.0]])  # IoU 0.2
    rois, labels, _ = make_head(add_gt_to_proposals=False).sample_rois([prop], [gt], [torch.tensor([2])])
    assert rois[0].tolist() == prop.tolist() and labels.tolist() == [0]
    rois, labels, _ = make_head().sample_rois([prop], [gt], [torch.tensor([2])])
    assert sorted(map(tuple, rois[0].tolist())) == sorted(map(tuple, torch.cat((prop, gt)).tolist()))
    assert sorted(labels.tolist()) == [0, 2]


def test_rois_keep_the_proposals_dtype():
    """The gt boxes join the proposals in the proposals' dtype (half-precision proposals stay half)."""
    gt, prop = torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([[0.0, 10.0, 20.0, 40.0]], dtype=torch.float16)
    rois, labels, _ = make_head().sample_rois([prop], [gt], [torch.tensor([2])])
    assert rois[0].dtype == torch.float16 and sorted(labels.tolist()) == [0, 2]


def test_the_loss_of_one_roi_is_not_divided_further():
    """One sampled RoI: both terms are its own losses (R = 1). Logits (0, ln 3, 0, 0) for class 1: p = 1/2,
    log loss ln 2; class-1 deltas 0.5 off the target in t_x: smooth L1 0.125; det = their sum."""
    logits = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0]])
    deltas = torch.zeros(1, 16)
    deltas[0, 4] = 0.5
    losses = make_head().loss(logits, deltas, torch.tensor([1]), torch.zeros(1, 4))
    assert losses["det_cls"].item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert losses["det_reg"].item() == pytest.approx(0.125, rel=1e-6)
    assert losses["det"].item() == pytest.approx(math.log(2.0) + 0.125, rel=1e-6)


def nms_with_the_cpu_default(*args):
    with torch.device("cpu"):
        return batched_nms(*args)


def test_labels_and_detections_are_made_on_the_inputs_device(monkeypatch):
    """Tensors made inside label_rois and postprocess follow their inputs' device (a model on a GPU labels
    and detects on the GPU), not torch's default device: with the default device made "meta", CPU inputs
    still give CPU results."""
    rois, logits, deltas = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), one_hot_logits([2]), torch.zeros(1, 16)
    gt, classes, empty = torch.tensor([[0.0, 0.0, 10.0, 12.0]]), torch.tensor([3]), torch.zeros(0, 4)
    head = make_head()
    with torch.device("meta"):
        labelled = label_rois(rois, gt, classes, 0.5, 0.5, 0.1)
        unlabelled = label_rois(rois, empty, classes[:0], 0.5, 0.5, 0.1)
        # torchvision's batched_nms makes one tensor on the default device itself: it runs with the CPU as default
        monkeypatch.setattr(roi_head, "batched_nms", nms_with_the_cpu_default)
        dets = head.postprocess(logits, deltas, [rois], [(20, 20)])[0]
    assert [t.tolist() for t in labelled] == [[1], [3], [0]] and [t.tolist() for t in unlabelled] == [[0]] * 3
    assert all(t.device.type == "cpu" for t in (*labelled, *unlabelled, *dets.values()))
    assert dets["labels"].tolist() == [2]


def test_postprocess_warns_about_nothing():
    """The class probabilities are a softmax over the classes, named explicitly (torch warns when a softmax's
    dimension is left implicit)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dets = make_head().postprocess(one_hot_logits([1]), torch.zeros(1, 16), [torch.tensor([[0.0, 0, 9, 9]])],
                                       [(20, 20)])
    assert dets[0]["labels"].tolist() == [1]


def squares_along_x(height: int = 8, width: int = 10) -> torch.Tensor:
    """A [1, 1, H, W] feature map whose cell (y, x) holds x^2: bilinear samples between cells interpolate the
    squares linearly, and every row is the same."""
    return (torch.arange(width, dtype=torch.float32) ** 2).expand(height, width).reshape(1, 1, height, width).clone()


@pytest.mark.parametrize("pool_type, warp_boxes, bins", [
    # RoIAlign, aligned, 2 x 2 samples per bin: the RoI x 8..24 px at scale 1/4 spans cells 2..6, shifted half a
    # cell (1.5..5.5); bins of 2 cells sample x = 2, 3 and 4, 5: means (4 + 9) / 2, (16 + 25) / 2
    ("align", False, [6.5, 20.5]),
    # RoI max pooling (Fast R-CNN §2.1, torchvision's quantisation): cells round(2)..round(6), 5 wide, bins of 2.5:
    # columns 2..4 and 4..6, maxima 16 and 36
    ("max", False, [16.0, 36.0]),
    # RoI warping (§3.2 iii) samples as RoIAlign: the average with pool_type=align, the maximum with max
    ("align", True, [6.5, 20.5]),
    ("max", True, [9.0, 25.0]),
])
def test_pooled_values_by_hand(pool_type, warp_boxes, bins):
    head = make_head(roi_output_size=2, spatial_scale=0.25, pool_type=pool_type, warp_boxes=warp_boxes)
    pooled = head.pool(squares_along_x(), [torch.tensor([[8.0, 4.0, 24.0, 20.0]])])
    assert pooled.shape == (1, 1, 2, 2)
    assert pooled[0, 0].tolist() == [pytest.approx(bins), pytest.approx(bins)]


def test_roi_align_takes_two_samples_per_bin_whatever_the_bin_size():
    """Bins of 3 cells (RoI x 8..32 px at scale 1/4, shifted: 1.5..7.5): 2 samples each at x = 2.25, 3.75 and
    5.25, 6.75, interpolated squares 5.25, 14.25 and 27.75, 45.75; torchvision's adaptive default would take 3."""
    head = make_head(roi_output_size=2, spatial_scale=0.25, pool_type="align")
    pooled = head.pool(squares_along_x(), [torch.tensor([[8.0, 4.0, 32.0, 20.0]])])
    assert pooled[0, 0].tolist() == [pytest.approx([9.75, 36.75])] * 2


def test_output_layers_start_as_fast_rcnn_section_2_3_says():
    """Classifier weights N(0, 0.01), box regressor N(0, 0.001), biases 0 (Fast R-CNN §2.3): sample stds of a
    1024 x 21 layer within 5 % of the rule."""
    torch.manual_seed(0)
    predictor = roi_head.FastRCNNPredictor(1024, 21)
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert not predictor.cls_score.bias.any() and not predictor.bbox_pred.bias.any()


def test_head_defaults_and_iou_bounds():
    """100 detections per picture (the authors' max_per_image); an empty background range (lo = hi) is legal,
    an IoU above 1 is not."""
    assert make_head().detections_per_image == 100
    make_head(bg_iou_lo=0.5, bg_iou_hi=0.5, fg_iou_thresh=0.5)
    with pytest.raises(ValueError):
        make_head(fg_iou_thresh=1.5, bg_iou_hi=0.5)


def test_target_statistics_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"^set_target_statistics needs roi_head.target_normalization=empirical$"):
        make_head().set_target_statistics(torch.zeros(C + 1, 4), torch.ones(C + 1, 4))
    head = make_head(target_normalization="empirical")
    with pytest.raises(ValueError, match=r"^target statistics: every std must be > 0 and every mean finite$"):
        head.set_target_statistics(torch.zeros(C + 1, 4), torch.zeros(C + 1, 4))
