"""frcnn.modeling.anchors, frcnn.modeling.boxes and frcnn.modeling.sampling where the suite left mutants alive
(scripts/mutation_test.sh): the labelling thresholds at their exact values (§3.1.2: positive above 0.7,
negative below 0.3) and as defaults, a ground truth no anchor touches, no ground truth with invalid anchors,
the border allowance of the cross-boundary rule, anchors made where the reference anchors are (the meta
device stands in for a GPU), the box parameterisation on batched [..., 4] boxes and mixed dtypes, the
balanced sampler's own generator."""

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from frcnn.modeling.anchors import AnchorGenerator, grid_anchors, inside_image, label_anchors, reference_anchors
from frcnn.modeling.boxes import decode_boxes, encode_boxes
from frcnn.modeling.sampling import sample_balanced

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0]])


def test_iou_exactly_at_the_thresholds_is_neither_positive_nor_negative():
    """Paper §3.1.2: positive for IoU higher than 0.7, negative for IoU lower than 0.3. Anchors of IoU 0.7 and
    0.3 exactly (70 and 30 of 100 px) are ignored; the first anchor (IoU 1) is the gt's best."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 7.0], [0.0, 0.0, 10.0, 3.0],
                            [0.0, 0.0, 10.0, 2.9], [0.0, 0.0, 10.0, 7.1]])
    labels, matched = label_anchors(anchors, GT, 0.7, 0.3)
    assert labels.tolist() == [1, -1, -1, 0, 1] and matched.tolist() == [0] * 5


def test_label_anchors_defaults_are_the_papers_thresholds():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 10.0, 5.0],
                            [0.0, 0.0, 10.0, 2.0]])
    assert label_anchors(anchors, GT)[0].tolist() == [1, 1, -1, 0]  # IoU 1, 0.8, 0.5, 0.2


def test_a_ground_truth_no_anchor_overlaps_makes_no_positive():
    """The best-anchor rule (i) needs an IoU above 0: a gt far from every anchor labels none positive."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    far = torch.tensor([[100.0, 100.0, 110.0, 110.0]])
    assert label_anchors(anchors, far)[0].tolist() == [0, 0]


def test_without_ground_truth_valid_anchors_are_negative_and_the_rest_ignored():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    labels, matched = label_anchors(anchors, torch.zeros(0, 4), valid=torch.tensor([True, False, True]))
    assert labels.tolist() == [0, -1, 0] and labels.dtype == torch.int64
    assert matched.tolist() == [0, 0, 0] and matched.dtype == torch.int64


def test_inside_image_checks_each_side_with_the_border_allowance():
    """(H, W) = (30, 20). Each anchor crosses one side by 1 px (3 px for the last four): out without an
    allowance; with 5 px allowed all are in; the first is inside either way."""
    anchors = torch.tensor([[0.0, 0.0, 20.0, 30.0], [-1.0, 0.0, 10.0, 10.0], [0.0, -1.0, 10.0, 10.0],
                            [5.0, 5.0, 21.0, 10.0], [5.0, 5.0, 10.0, 31.0], [-3.0, 0.0, 10.0, 10.0],
                            [0.0, -3.0, 10.0, 10.0], [5.0, 5.0, 23.0, 10.0], [5.0, 5.0, 10.0, 33.0]])
    assert inside_image(anchors, (30, 20)).tolist() == [True] + [False] * 8
    assert inside_image(anchors, (30, 20), allowed_border_px=5.0).tolist() == [True] * 9
    assert inside_image(anchors, (30, 20), allowed_border_px=2.0).tolist() == [True] * 5 + [False] * 4


def test_anchors_are_made_on_the_reference_anchors_device():
    """The meta device (shapes only) stands in for a GPU: every tensor must be created beside the inputs."""
    reference = reference_anchors((32, 64), (0.5, 1.0)).to("meta")
    anchors = grid_anchors(reference, (3, 5), stride=16)
    assert anchors.device.type == "meta" and anchors.shape == (3 * 5 * 4, 4) and anchors.dtype == torch.float32
    labels, matched = label_anchors(torch.zeros(6, 4, device="meta"), torch.zeros(0, 4, device="meta"))
    assert labels.device.type == "meta" and matched.device.type == "meta"


def test_cached_anchors_follow_the_generator_to_another_device():
    generator = AnchorGenerator((32,), (1.0,), stride=16)
    assert generator((2, 3)).device.type == "cpu"
    assert generator.to("meta")((2, 3)).device.type == "meta"  # not the CPU anchors cached for (2, 3)


def test_grid_anchors_are_location_major_rows_then_columns():
    """A 2 x 3 grid of one 8-px anchor at stride 10: centres (5, 5), (15, 5), (25, 5), (5, 15), ..."""
    anchors = grid_anchors(reference_anchors((8,), (1.0,)), (2, 3), stride=10)
    expected = [[x - 4, y - 4, x + 4, y + 4] for y in (5, 15) for x in (5, 15, 25)]
    assert anchors.tolist() == expected


@pytest.mark.parametrize("h, w", [(1, 4), (4, 1)])
def test_grid_anchors_of_a_single_row_or_column(h, w):
    anchors = grid_anchors(reference_anchors((8,), (1.0,)), (h, w), stride=10)
    centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).tolist()
    assert centres == [[10 * j + 5.0, 10 * i + 5.0] for i in range(h) for j in range(w)]


def _boxes(generator, *shape):
    xy = torch.rand(*shape, 2, generator=generator) * 100
    return torch.cat((xy, xy + torch.rand(*shape, 2, generator=generator) * 50 + 1), dim=-1)


def test_encode_and_decode_work_on_any_leading_dimensions():
    """[B, N, 4] boxes give the targets / boxes of each [N, 4] slice, in the same layout."""
    g = torch.Generator().manual_seed(0)
    gts, refs = _boxes(g, 2, 3), _boxes(g, 2, 3)  # [2, 3, 4]
    targets = encode_boxes(gts, refs, (10.0, 10.0, 5.0, 5.0))
    assert targets.shape == (2, 3, 4)
    for b in range(2):
        assert torch.allclose(targets[b], encode_boxes(gts[b], refs[b], (10.0, 10.0, 5.0, 5.0)))
    decoded = decode_boxes(targets, refs, (10.0, 10.0, 5.0, 5.0))
    assert decoded.shape == (2, 3, 4)
    for b in range(2):
        assert torch.allclose(decoded[b], decode_boxes(targets[b], refs[b], (10.0, 10.0, 5.0, 5.0)))
    assert torch.allclose(decoded, gts, atol=1e-4)


def test_decode_follows_the_deltas_dtype():
    """float64 reference boxes (e.g. proposals read back) with float32 deltas decode in float32."""
    refs = torch.tensor([[10.0, 10.0, 50.0, 30.0]], dtype=torch.float64)
    boxes = decode_boxes(torch.zeros(1, 4), refs)
    assert boxes.dtype == torch.float32 and boxes.tolist() == [[10.0, 10.0, 50.0, 30.0]]


def test_the_given_generator_alone_decides_the_sample():
    """Two draws from equally seeded generators are the same whatever the global RNG did in between, and
    they are a balanced sample: 16 of the 40 positives (fraction 0.25 of 64), 48 of the 60 negatives."""
    labels = torch.tensor([1] * 40 + [0] * 60 + [-1] * 20)[torch.randperm(120, generator=torch.Generator().manual_seed(1))]
    draws = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        draws.append(sample_balanced(labels, 64, 0.25, generator=torch.Generator().manual_seed(7)))
    (pos_a, neg_a), (pos_b, neg_b) = draws
    assert torch.equal(pos_a, pos_b) and torch.equal(neg_a, neg_b)
    assert len(pos_a) == 16 and len(neg_a) == 48 and (labels[pos_a] == 1).all() and (labels[neg_a] == 0).all()
    other = sample_balanced(labels, 64, 0.25, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other[0], pos_a) and not torch.equal(other[1], neg_a)  # the seed does matter


@pytest.mark.parametrize("scales, ratios", [((32, 64), (1, 2)), ((32.0, 64.0), (1.0, 2.0)),
                                            (np.array([32.0, 64.0]), np.array([1.0, 2.0]))])
def test_reference_anchors_are_float32_whatever_the_numbers_are_given_as(scales, ratios):
    reference = reference_anchors(scales, ratios)
    assert reference.dtype == torch.float32
    assert torch.allclose(reference, reference_anchors((32.0, 64.0), (1.0, 2.0)))


def test_anchor_sizes_must_be_positive_and_may_be_one_pixel():
    assert reference_anchors((1,), (1.0,)).tolist() == [[-0.5, -0.5, 0.5, 0.5]]
    for scales, ratios in (((0,), (1.0,)), ((8,), (0.0,)), ((8, -1), (1.0,))):
        with pytest.raises(ValueError, match=r"^anchor scales and ratios must be > 0, got scales="):
            reference_anchors(scales, ratios)
    with pytest.raises(ValueError, match=r"^rpn\.anchor_scales and rpn\.anchor_ratios must each hold at least "
                                         r"one value$"):
        reference_anchors((), (1.0,))


def test_anchor_generator_defaults_and_its_reference_is_not_saved():
    """The paper's 9 anchors at stride 16 (first centre (8, 8)); the reference anchors are rebuilt from the
    configuration, not stored in a checkpoint."""
    generator = AnchorGenerator()
    assert generator.stride == 16 and generator.num_anchors_per_location == 9
    anchors = generator((1, 1))
    assert torch.allclose((anchors[:, :2] + anchors[:, 2:]) / 2, torch.full((9, 2), 8.0))
    assert "reference" not in generator.state_dict()


def test_the_sample_is_drawn_on_the_labels_device():
    """Both permutations are drawn where the labels are (on a GPU: by its generator, without a round trip
    through host memory). Recorded with a torch function mode, since a CPU run cannot see the difference."""
    devices = []

    class RecordRandperm(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.randperm:
                devices.append((kwargs or {}).get("device"))
            return func(*args, **(kwargs or {}))

    labels = torch.tensor([1, 0, 0, 1, -1, 0])
    with RecordRandperm():
        sample_balanced(labels, 4, 0.5)
    assert devices == [labels.device, labels.device]
