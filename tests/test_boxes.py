import torch
from torchvision.models.detection._utils import BoxCoder

from frcnn.modeling.boxes import DEFAULT_MAX_LOG_SCALE, decode_boxes, encode_boxes


def random_boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 500
    wh = torch.rand(n, 2, generator=generator) * 200 + 4
    return torch.cat((xy, xy + wh), dim=1)


def test_encode_matches_paper_equation_2():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), w 10, h 20
    gt = torch.tensor([[2.0, 4.0, 22.0, 24.0]])  # centre (12, 14), w 20, h 20
    t = encode_boxes(gt, anchor)[0]
    expected = torch.tensor([(12 - 5) / 10, (14 - 10) / 20, torch.log(torch.tensor(2.0)), 0.0])
    assert torch.allclose(t, expected)


def test_encode_decode_agree_with_torchvision_boxcoder():
    g = torch.Generator().manual_seed(0)
    anchors, gts = random_boxes(100, g), random_boxes(100, g)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        coder = BoxCoder(weights, bbox_xform_clip=DEFAULT_MAX_LOG_SCALE)
        ours = encode_boxes(gts, anchors, weights)
        theirs = coder.encode_single(gts, anchors)
        assert torch.allclose(ours, theirs, atol=1e-4)
        decoded = decode_boxes(ours, anchors, weights)
        assert torch.allclose(decoded, gts, atol=1e-3)
        # torchvision's decoder uses the same continuous convention
        assert torch.allclose(decoded, coder.decode_single(ours, anchors), atol=1e-3)


def test_decode_clamps_scale_so_exp_never_overflows():
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    huge = torch.tensor([[0.0, 0.0, 1e4, 1e4]])
    boxes = decode_boxes(huge, anchors)
    assert torch.isfinite(boxes).all()
    side = boxes[0, 2] - boxes[0, 0]
    assert torch.isclose(side, torch.tensor(1000.0), rtol=1e-4)  # 16 * exp(log(1000/16))


def test_decode_per_class_deltas_broadcast_over_reference_box():
    anchors = torch.tensor([[10.0, 10.0, 50.0, 30.0]])
    deltas = torch.zeros(1, 3 * 4)  # three classes, zero deltas -> the reference box each
    boxes = decode_boxes(deltas, anchors).reshape(1, 3, 4)
    assert torch.allclose(boxes, anchors[:, None, :].expand(1, 3, 4))
