"""FasterRCNN as a whole on CPU: joint loss, empty images, the box rule at the data boundary."""

import numpy as np
import pytest
import torch

from frcnn.data.checks import BadAnnotationError, clip_and_check_boxes
from frcnn.data.transforms import DetectionTransform
from frcnn.modeling.build import build_model
from frcnn.modeling.faster_rcnn import batch_images
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    cfg = compose_config([], tmp_path_factory.mktemp("m"))
    torch.manual_seed(0)
    return build_model({"backbone": cfg["backbone"], "rpn": cfg["rpn"], "roi_head": cfg["roi_head"]}, num_classes=5)


def test_batch_images_pads_to_stride_and_keeps_sizes():
    batch, sizes = batch_images([torch.ones(3, 50, 70), torch.ones(3, 64, 33)], 16)
    assert batch.shape == (2, 3, 64, 80) and sizes == [(50, 70), (64, 33)]
    assert batch[0, :, 50:, :].abs().sum() == 0 and batch[1, :, :, 33:].abs().sum() == 0


def test_joint_losses_sum_and_backpropagate(model):
    model.train()
    images = [torch.rand(3, 128, 160), torch.rand(3, 96, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]  # no objects
    losses = model(images, targets)
    assert torch.isclose(losses["total"], losses["rpn"] + losses["det"])
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_image_without_objects_trains_and_evaluates(model):
    model.train()
    losses = model([torch.rand(3, 128, 128)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert losses["rpn_reg"] == 0 and losses["det_reg"] == 0 and losses["total"] > 0
    model.eval()
    with torch.no_grad():
        detections = model([torch.rand(3, 128, 128)])
    assert detections[0]["boxes"].shape[1] == 4


def test_bf16_autocast_trains_and_keeps_boxes_in_float32(model):
    """trainer.precision=bf16-mixed: the convs and fc layers run in bfloat16, but the RPN / detector
    outputs, the decoded boxes and RoI pooling (no bf16 CPU kernel in torchvision) stay float32."""
    images = [torch.rand(3, 128, 160), torch.rand(3, 96, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[5.0, 5.0, 50.0, 40.0]]), "labels": torch.tensor([1])}]
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features, sizes = model.features(images)
        assert features.dtype == torch.bfloat16  # the autocast really ran the shared conv in bf16
        logits, deltas = model.rpn.head(features)
        assert logits.dtype == deltas.dtype == torch.float32
        losses = model(images, targets)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    losses["total"].backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        detections = model(images)
    assert all(d["boxes"].dtype == torch.float32 and d["scores"].dtype == torch.float32 for d in detections)
    model.zero_grad(set_to_none=True)


def test_out_of_image_box_is_clipped_zero_area_box_is_an_error():
    boxes, labels = clip_and_check_boxes(np.array([[-5, 10, 300, 50]]), np.array([1]), (100, 200), "img_7.jpg")
    assert boxes.tolist() == [[0, 10, 200, 50]] and labels.tolist() == [1]
    for bad in ([10, 10, 10, 40], [50, 10, 20, 40], [300, 10, 400, 40]):
        with pytest.raises(BadAnnotationError, match="img_7.jpg: box 0"):
            clip_and_check_boxes(np.array([bad]), np.array([1]), (100, 200), "img_7.jpg")
    # a degenerate proposal (label 0) is dropped, not an error
    boxes, labels = clip_and_check_boxes(np.array([[5, 5, 5, 9], [1, 1, 9, 9]]), np.array([0, 0]), (100, 200))
    assert boxes.tolist() == [[1, 1, 9, 9]]


def test_transform_applies_the_box_rule():
    transform = DetectionTransform(scales=(100,), max_size=1000, train=False)
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    _, boxes, _ = transform(image, np.array([[150.0, 10.0, 260.0, 50.0]]), np.array([1]))
    assert boxes.tolist() == [[150.0, 10.0, 200.0, 50.0]]
    with pytest.raises(BadAnnotationError, match="a.jpg"):
        transform(image, np.array([[10.0, 10.0, 10.0, 50.0]]), np.array([1]), source="a.jpg")
