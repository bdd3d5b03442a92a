"""Non-approximate joint training (paper §3.2 iii): the detector's loss reaches the RPN's box
regression through the proposals; approximate joint training (the default) stays as it was."""

import json

import pytest
import torch
from torch import nn

from frcnn.engine.recipes import model_config, run_recipe
from frcnn.inference.detector_file import load_detector
from frcnn.modeling.build import build_model
from frcnn.modeling.roi_head import RoIHead
from tests.conftest import compose_config

IMAGES = [torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(3)),
          torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(4))]
TARGETS = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 10.0, 150.0, 70.0]]), "labels": torch.tensor([2, 1])},
           {"boxes": torch.tensor([[30.0, 15.0, 100.0, 80.0]]), "labels": torch.tensor([3])}]


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cfg")
    return {approximate: compose_config(["recipe=joint", f"recipe.approximate={str(approximate).lower()}"], run_dir)
            for approximate in (True, False)}


def _model(cfg):
    torch.manual_seed(0)
    return build_model(model_config(cfg), num_classes=5).train()


def test_approximate_is_the_default_and_adds_nothing_to_the_model_config(configs, tmp_path):
    assert compose_config(["recipe=joint"], tmp_path)["recipe"]["approximate"] is True
    assert "warp_boxes" not in model_config(configs[True])["roi_head"]
    assert model_config(configs[False])["roi_head"]["warp_boxes"] is True
    alternating = compose_config(["recipe=alternating"], tmp_path)
    assert "warp_boxes" not in model_config(alternating)["roi_head"]


@pytest.mark.parametrize("approximate", [True, False])
def test_detector_loss_trains_rpn_regression_only_without_approximation(configs, approximate):
    """Approximate (§3.2 ii): the RPN's reg layer gets exactly zero gradient from the detector's
    loss. Non-approximate (§3.2 iii): a non-zero one, through proposal coordinates. The objectness
    layer gets none in both (scores only rank proposals)."""
    model = _model(configs[approximate])
    torch.manual_seed(1)
    losses = model(IMAGES, TARGETS)
    reg_layer, cls_layer = model.rpn.head.bbox_deltas, model.rpn.head.cls_logits
    det_grads = torch.autograd.grad(losses["det"], [reg_layer.weight, cls_layer.weight], allow_unused=True,
                                    retain_graph=True)
    reg_grad, cls_grad = (torch.zeros(1) if g is None else g for g in det_grads)
    assert torch.count_nonzero(cls_grad) == 0
    if approximate:
        assert torch.count_nonzero(reg_grad) == 0
    else:
        assert torch.count_nonzero(reg_grad) > 0 and torch.isfinite(reg_grad).all()
    # the RPN's own loss and the total still backpropagate everywhere
    losses["total"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_box_gradient_of_the_detector_loss_matches_finite_differences():
    """d(classification loss)/d(proposal x1, y1, x2, y2) through RoI warping: equal to central
    differences (float64), non-zero for a box whose pooled features depend on its position."""
    torch.manual_seed(0)
    channels, size = 4, 3
    head = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 16), nn.Tanh()).double()
    roi_head = RoIHead(head, 16, num_classes=2, roi_output_size=size, pool_type="align", rois_per_minibatch=512, bg_iou_lo=0.0,
                       warp_boxes=True).double()
    nn.init.normal_(roi_head.predictor.cls_score.weight, std=0.5)
    features = torch.randn(1, channels, 12, 12, dtype=torch.float64)
    gt_boxes, gt_labels = [torch.tensor([[40.0, 30.0, 120.0, 110.0]], dtype=torch.float64)], [torch.tensor([1])]
    proposal = torch.tensor([[37.3, 26.8, 115.1, 121.7]], dtype=torch.float64, requires_grad=True)
    background = torch.tensor([[130.2, 140.9, 180.4, 185.6]], dtype=torch.float64)

    def cls_loss(box):
        torch.manual_seed(5)  # same sampled order each call (all RoIs are kept)
        _, losses = roi_head(features, [torch.cat((box, background))], [(192, 192)], gt_boxes, gt_labels)
        return losses["det_cls"]

    (analytic,) = torch.autograd.grad(cls_loss(proposal), proposal)
    eps = 1e-5
    numeric = torch.zeros(4, dtype=torch.float64)
    for k in range(4):
        step = torch.zeros_like(proposal)
        step[0, k] = eps
        numeric[k] = (cls_loss(proposal.detach() + step) - cls_loss(proposal.detach() - step)) / (2 * eps)
    torch.testing.assert_close(analytic[0], numeric, atol=1e-7, rtol=1e-5)
    assert (analytic != 0).all()


@pytest.mark.slow
def test_nonapproximate_training_beats_the_untrained_model(tmp_path):
    tiny = ["recipe=joint", "recipe.approximate=false", "data.num_train=32", "data.num_val=16", "logger=none",
            "schedule.joint.images_per_batch=4", "recipe.val_every_n_epochs=null"]
    untrained = run_recipe(compose_config(tiny + ["schedule.joint.max_steps=1"], tmp_path / "untrained"),
                           tmp_path / "untrained")
    cfg = compose_config(tiny + ["schedule.joint.max_steps=40", "schedule.joint.lr_steps=[32]"], tmp_path / "run")
    metrics = run_recipe(cfg, tmp_path / "run")
    # measured (seed 0, built-in weights, 40 steps, 16 validation images): 0.180 (AVX-512) and 0.185 (AVX2)
    # against 0.002 untrained; the same run without the detector's box regression (its loss x 0) scores
    # 0.125, so the floor sits between the two (seeds 1 and 2 give 0.295 and 0.090 on 16 images: the
    # floor holds for seed 0 only, the seed this test pins)
    assert untrained["map_50"] < 0.02
    assert metrics["map_50"] >= 0.15
    # the saved detector remembers its RoI warping and reloads with it
    saved = torch.load(tmp_path / "run" / "final" / "model.pt", weights_only=True)
    assert saved["model_cfg"]["roi_head"]["warp_boxes"] is True
    model, _ = load_detector(tmp_path / "run" / "final" / "model.pt")
    assert model.roi_head.warp_boxes
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["map_50"] == metrics["map_50"]
