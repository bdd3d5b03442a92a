import torch
from torch import nn

from frcnn.modeling.roi_head import RoIHead, label_rois


def make_head(num_classes=3, **kwargs):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(4 * 7 * 7, 16), nn.ReLU())
    return RoIHead(body, representation_size=16, num_classes=num_classes, **kwargs)


def test_label_rois_fast_rcnn_thresholds():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    props = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],   # IoU 1 -> fg
        [0.0, 0.0, 10.0, 20.0],   # 0.5 -> fg (>= 0.5)
        [0.0, 0.0, 10.0, 40.0],   # 0.25 -> bg
        [0.0, 0.0, 10.0, 200.0],  # 0.05 -> ignored (< 0.1)
    ])
    sample_labels, classes, _ = label_rois(props, gt, torch.tensor([2]), 0.5, 0.5, 0.1)
    assert sample_labels.tolist() == [1, 1, 0, -1]
    assert classes.tolist() == [2, 2, 0, 0]


def test_sampling_at_most_128_rois_quarter_foreground_gt_added():
    head = make_head()
    gt = torch.tensor([[10.0, 10.0, 60.0, 60.0]])
    jitter = torch.randn(400, 4) * 3
    proposals = gt.repeat(400, 1) + jitter  # many foreground candidates
    background = torch.tensor([[30.0, 30.0, 80.0, 80.0]]).repeat(400, 1) + torch.randn(400, 4)
    rois, labels, targets = head.sample_rois([torch.cat((proposals, background))], [gt], [torch.tensor([1])])
    assert rois[0].shape[0] == 128 and labels.numel() == 128
    assert (labels > 0).sum() == 32  # 25%
    # with no proposals at all, the ground truth itself becomes a foreground RoI
    rois, labels, targets = head.sample_rois([torch.zeros(0, 4)], [gt], [torch.tensor([3])])
    assert labels.tolist() == [3] and torch.allclose(targets, torch.zeros(1, 4), atol=1e-6)


def test_rois_are_counted_per_mini_batch_and_shared_by_its_images():
    """Fast R-CNN §2.3: R = 128 RoIs per mini-batch of N = 2 images, 64 (16 fg) from each; a
    batch of one image takes all 128 from it."""
    head = make_head()  # rois_per_minibatch = 128
    gts = [torch.tensor([[10.0, 10.0, 60.0, 60.0]]), torch.tensor([[40.0, 20.0, 120.0, 90.0]])]
    proposals = [torch.cat((gt.repeat(300, 1) + torch.randn(300, 4) * 2,  # foreground
                            (gt + 20).repeat(300, 1) + torch.randn(300, 4)))  # background: IoU .22 / .37
                 for gt in gts]
    labels = [torch.tensor([1]), torch.tensor([2])]
    rois, classes, _ = head.sample_rois(proposals, gts, labels)
    assert [r.shape[0] for r in rois] == [64, 64] and classes.numel() == 128
    assert (classes[:64] > 0).sum() == 16 and (classes[64:] > 0).sum() == 16
    rois, classes, _ = head.sample_rois(proposals[:1], gts[:1], labels[:1])
    assert rois[0].shape[0] == 128 and (classes > 0).sum() == 32
    assert make_head(rois_per_minibatch=512).rois_per_image(4) == 128  # experiment=cpu_shapes


def test_targets_are_normalised_by_stds():
    head = make_head()
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    prop = torch.tensor([[2.0, 0.0, 22.0, 20.0]])  # dx = -2/20 = -0.1 -> normalised -1.0
    _, labels, targets = head.sample_rois([prop], [gt], [torch.tensor([1])])
    fg = labels > 0
    assert torch.allclose(targets[fg][0], torch.tensor([-1.0, 0.0, 0.0, 0.0]), atol=1e-5) or \
        torch.allclose(targets[fg][1], torch.tensor([-1.0, 0.0, 0.0, 0.0]), atol=1e-5)


def test_loss_and_detections_shapes_and_limits():
    head = make_head(num_classes=3, detections_per_image=5, score_thresh=0.0)
    features = torch.randn(2, 4, 8, 8)
    proposals = [torch.tensor([[0.0, 0.0, 40.0, 40.0], [10.0, 10.0, 100.0, 90.0]]).repeat(20, 1) + torch.rand(40, 4),
                 torch.tensor([[5.0, 5.0, 50.0, 60.0]]).repeat(10, 1) + torch.rand(10, 4)]
    gt_boxes = [torch.tensor([[0.0, 0.0, 40.0, 40.0]]), torch.zeros(0, 4)]
    _, losses = head(features, proposals, [(128, 128)] * 2, gt_boxes, [torch.tensor([2]), torch.zeros(0, dtype=torch.long)])
    assert set(losses) == {"det_cls", "det_reg", "det"} and torch.isfinite(losses["det"])
    head.eval()
    detections, _ = head(features, proposals, [(128, 128), (64, 64)])
    for det, size in zip(detections, (128, 64)):
        assert det["boxes"].shape[0] <= 5
        assert (det["labels"] >= 1).all() and (det["labels"] <= 3).all()
        assert (det["boxes"] <= size).all() and (det["boxes"] >= 0).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
