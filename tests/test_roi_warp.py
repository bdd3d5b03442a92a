"""RoI warping (paper §3.2 iii): roi_align's sampling, gradients w.r.t. features and boxes."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

import frcnn.layers.roi_warp as roi_warp_module
from frcnn.layers.roi_warp import roi_warp

SCALE = 1.0 / 16


def _features_and_rois(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 10, 13, generator=generator, dtype=dtype)
    rois = [  # inside, partly outside (top-left), past the bottom-right border, under one cell
        torch.tensor([[3.0, 5.0, 100.0, 80.0], [-30.0, -20.0, 60.0, 50.0], [50.0, 40.0, 250.0, 200.0],
                      [10.5, 20.3, 11.0, 21.0]], dtype=dtype),
        torch.tensor([[5.0, 6.0, 140.0, 150.0]], dtype=dtype),
    ]
    return features, rois


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_average_warp_equals_roi_align(aligned, sampling_ratio):
    features, rois = _features_and_rois(torch.float32)
    warped = roi_warp(features, rois, 7, SCALE, sampling_ratio, aligned, "avg")
    expected = roi_align(features, rois, 7, SCALE, sampling_ratio, aligned)
    assert warped.shape == (5, 3, 7, 7)
    torch.testing.assert_close(warped, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("aligned", [True, False])
def test_max_warp_is_the_max_of_the_same_bilinear_samples(aligned):
    """2 x 2 samples per bin, max: roi_align on the (2*7)^2 sub-bin grid with one sample each, max-pooled 2 x 2."""
    features, rois = _features_and_rois(torch.float32)
    warped = roi_warp(features, rois, 7, SCALE, 2, aligned, "max")
    expected = F.max_pool2d(roi_align(features, rois, 14, SCALE, 1, aligned), 2)
    torch.testing.assert_close(warped, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("reduction", ["avg", "max"])
def test_gradcheck_features_and_boxes(reduction):
    features, rois = _features_and_rois()
    features = features[:, :1, :5, :6].clone().requires_grad_()  # small: gradcheck is O(inputs)
    boxes_a = torch.tensor([[3.3, 5.1, 70.2, 60.7], [-7.4, -9.2, 40.3, 33.1]], dtype=torch.float64, requires_grad=True)
    boxes_b = torch.tensor([[20.6, 10.2, 90.9, 85.3]], dtype=torch.float64, requires_grad=True)

    def warp(feature_map, first, second):
        return roi_warp(feature_map, [first, second], 3, SCALE, 2, True, reduction)

    assert torch.autograd.gradcheck(warp, (features, boxes_a, boxes_b), eps=1e-6, atol=1e-5)


def test_box_gradient_is_nonzero_and_zero_where_clamped():
    """An interior box gets a gradient on all four coordinates; a box far outside the map reads zeros
    and gets none; a coordinate clamped at the border (past the map by < 1 cell) gets none."""
    features = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    boxes = torch.tensor([[17.3, 21.9, 90.1, 70.4], [400.0, 400.0, 500.0, 480.0]], dtype=torch.float64,
                         requires_grad=True)
    roi_warp(features, [boxes], 4, SCALE, 2, True, "avg").pow(2).sum().backward()
    assert (boxes.grad[0] != 0).all() and (boxes.grad[1] == 0).all()
    # x from -0.875 to -0.125 cells after the aligned offset: every sample column clamps at column 0
    edge = torch.tensor([[-6.0, 20.0, 6.0, 80.0]], dtype=torch.float64, requires_grad=True)
    roi_warp(features, [edge], 4, SCALE, 2, True, "avg").sum().backward()
    assert edge.grad[0, 0] == 0 and edge.grad[0, 2] == 0 and edge.grad[0, 1] != 0


def test_bad_arguments_are_named():
    features, rois = _features_and_rois()
    with pytest.raises(ValueError, match="reduction='median'"):
        roi_warp(features, rois, reduction="median")
    with pytest.raises(ValueError, match="sampling_ratio must be >= 1"):
        roi_warp(features, rois, sampling_ratio=0)
    with pytest.raises(ValueError, match="1 RoI lists for a batch of 2"):
        roi_warp(features, rois[:1])


def test_chunks_and_empty_rois_give_the_same_result():
    features, rois = _features_and_rois()
    whole = roi_warp(features, rois, 5, SCALE)
    torch.testing.assert_close(roi_warp(features, rois, 5, SCALE, max_rois_per_call=1), whole, atol=0, rtol=0)
    empty = roi_warp(features, [rois[0][:0], rois[1][:0]], 5, SCALE)
    assert empty.shape == (0, 3, 5, 5)


@pytest.mark.parametrize("reduction", ["max", "avg"])
def test_feature_gradient_equals_roi_align_and_pooling_with_ties(reduction):
    """The feature gradient of the warp equals that of roi_align on the (2*5)^2 sub-bin grid followed by
    max_pool2d / avg_pool2d, on ReLU features whose zero regions make samples tie: a tied bin sends its
    gradient to its first arg-max, as max_pool2d does."""
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 4, 9, 12, generator=generator, dtype=torch.float64).relu()
    rois = [torch.tensor([[0.0, 0.0, 150.0, 120.0], [30.0, 20.0, 90.0, 140.0]], dtype=torch.float64),
            torch.tensor([[100.0, 10.0, 180.0, 60.0]], dtype=torch.float64)]
    upstream = torch.randn(3, 4, 5, 5, generator=generator, dtype=torch.float64)
    pool = F.max_pool2d if reduction == "max" else F.avg_pool2d

    def feature_grad(warp):
        leaf = features.clone().requires_grad_()
        (warp(leaf) * upstream).sum().backward()
        return leaf.grad

    warped = feature_grad(lambda f: roi_warp(f, rois, 5, SCALE, 2, True, reduction))
    expected = feature_grad(lambda f: pool(roi_align(f, rois, 10, SCALE, 1, True), 2))
    assert (roi_align(features, rois, 10, SCALE, 1, True) == 0).any()  # the ties the test is about
    torch.testing.assert_close(warped, expected, atol=1e-12, rtol=0)


def _warp_with_grads(features, rois, output_size):
    """[warped, d/d features, d/d boxes per image] of sum(warped^2)."""
    leaf, boxes = features.clone().requires_grad_(), [r.clone().requires_grad_() for r in rois]
    warped = roi_warp(leaf, boxes, output_size, SCALE)
    warped.pow(2).sum().backward()
    return [warped, leaf.grad, *(b.grad for b in boxes)]


def test_repeated_backward_is_bitwise_identical():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 8, 10, 13, generator=generator)
    rois = [torch.rand(40, 4, generator=generator).mul(100).sort(dim=1).values[:, [0, 2, 1, 3]] for _ in range(2)]
    first, second = _warp_with_grads(features, rois, 7), _warp_with_grads(features, rois, 7)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_byte_budget_chunks_give_the_same_values_and_gradients(monkeypatch):
    features, rois = _features_and_rois()
    whole = _warp_with_grads(features, rois, 5)
    monkeypatch.setattr(roi_warp_module, "SAMPLE_BYTES_PER_CALL", 1)  # one RoI per call
    chunked = _warp_with_grads(features, rois, 5)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
