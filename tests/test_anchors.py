import math

import torch
from torchvision.ops import box_area

from frcnn.modeling.anchors import AnchorGenerator, grid_anchors, inside_image, label_anchors, reference_anchors


def test_paper_default_gives_nine_anchors_with_stated_areas_and_ratios():
    ref = reference_anchors((128, 256, 512), (0.5, 1.0, 2.0))
    assert ref.shape == (9, 4)  # k = 9
    areas = box_area(ref)
    expected_areas = torch.tensor([128.0**2, 256.0**2, 512.0**2]).repeat(3)
    assert torch.allclose(areas, expected_areas, rtol=1e-5)
    widths, heights = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    assert torch.allclose(heights / widths, torch.tensor([0.5] * 3 + [1.0] * 3 + [2.0] * 3), rtol=1e-5)
    assert torch.allclose(ref[:, :2] + ref[:, 2:], torch.zeros(9, 2), atol=1e-4)  # centred at 0


def test_grid_places_anchors_at_stride_16_centres():
    ref = reference_anchors((32,), (1.0,))
    anchors = grid_anchors(ref, (2, 3), stride=16)
    assert anchors.shape == (6, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    expected = torch.tensor([[8, 8], [24, 8], [40, 8], [8, 24], [24, 24], [40, 24]], dtype=torch.float32)
    assert torch.allclose(centres, expected)


def test_generator_caches_per_feature_size():
    gen = AnchorGenerator((64,), (0.5, 1.0), stride=16)
    a = gen((4, 5))
    assert gen((4, 5)) is a
    assert gen((5, 4)).shape == (40, 4)
    assert a.shape == (4 * 5 * 2, 4)


def test_inside_image_excludes_cross_boundary_anchors():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [-1.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 30.1]])
    assert inside_image(anchors, (30, 20)).tolist() == [True, False, False]


def test_label_anchors_paper_rules():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 11.0],      # IoU 0.909 with gt0 -> positive
        [0.0, 0.0, 10.0, 20.0],      # IoU 0.5 -> ignored
        [50.0, 50.0, 60.0, 60.0],    # IoU 0 -> negative
        [100.0, 100.0, 120.0, 125.0],  # IoU 0.2 with gt1, but best for gt1 -> positive
        [100.0, 100.0, 130.0, 130.0],  # IoU 0.11 -> negative
    ])
    labels, matched = label_anchors(anchors, gt, 0.7, 0.3)
    assert labels.tolist() == [1, -1, 0, 1, 0]
    assert matched[0] == 0 and matched[3] == 1


def test_label_anchors_ties_for_best_are_all_positive_and_invalid_ignored():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 20.0, 10.0], [-5.0, 0.0, 10.0, 10.0]])
    valid = torch.tensor([True, True, False])
    labels, _ = label_anchors(anchors, gt, 0.7, 0.3, valid)
    assert labels.tolist() == [1, 1, -1]


def test_label_anchors_without_ground_truth_are_all_negative():
    anchors = torch.rand(10, 2).repeat(1, 2) + torch.tensor([0, 0, 5.0, 5.0])
    labels, _ = label_anchors(anchors, torch.zeros(0, 4))
    assert (labels == 0).all()


def test_reference_anchors_rejects_empty_or_non_positive():
    for scales, ratios in [((), (1.0,)), ((32,), ()), ((32,), (0.0,)), ((-1,), (1.0,))]:
        try:
            reference_anchors(scales, ratios)
        except ValueError as exc:
            assert "anchor" in str(exc)
        else:
            raise AssertionError("expected ValueError")
    assert math.isclose(float(box_area(reference_anchors((10,), (4.0,)))[0]), 100.0, rel_tol=1e-5)
