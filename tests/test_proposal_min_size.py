"""The proposal layer's minimum size is in original-image pixels (the authors' proposal layer:
``min_size * im_scale``) wherever proposals are made: proposal files, evaluation, joint training."""

import pytest
import torch

from frcnn.data.datamodule import build_shapes_datamodule
from frcnn.data.synthetic import ShapesDataset
from frcnn.data.transforms import DetectionTransform
from frcnn.engine.proposal_files import propose_images
from frcnn.engine.recipes import model_config
from frcnn.evaluation.evaluate import evaluate_split
from frcnn.lit.joint import JointModule
from frcnn.modeling.build import build_model
from frcnn.modeling.rpn import ProposalSettings

CLASSES = list(ShapesDataset.class_names)


def small_model(compose_cfg, tmp_path):
    cfg = compose_cfg([], tmp_path)
    torch.manual_seed(0)
    return cfg, build_model(model_config(cfg), num_classes=len(CLASSES))


class ProposalLayerReached(Exception):
    pass


def spy_on_image_scales(model, stop: bool = False):
    """Record the image_scales every proposal-layer call receives (``stop``: then end the step)."""
    seen, original = [], model.rpn.propose

    def spy(*args, **kwargs):
        seen.append(list(args[5]) if len(args) > 5 and args[5] is not None else kwargs.get("image_scales"))
        if stop:
            raise ProposalLayerReached
        return original(*args, **kwargs)

    model.rpn.propose = spy
    return seen


def test_proposal_file_boxes_are_at_least_min_size_in_original_pixels(compose_cfg, tmp_path):
    _, model = small_model(compose_cfg, tmp_path)
    dataset = ShapesDataset("train", num_images=3, image_size=(64, 96))
    dataset.eval_transform = DetectionTransform(scales=(128,), max_size=1000, train=False)  # scaled 2x
    settings = ProposalSettings(pre_nms_top_n=-1, post_nms_top_n=2000, min_size_px=16)
    for boxes, _ in propose_images(model, dataset, [0, 1, 2], settings).values():  # original pixels
        assert boxes.shape[0] > 0
        assert (boxes[:, 2:] - boxes[:, :2]).min() >= 16 - 1e-3  # 16 px of the 64 x 96 image, 32 on the input


def test_evaluation_and_joint_training_pass_each_images_resize_factor(compose_cfg, tmp_path):
    cfg, model = small_model(compose_cfg, tmp_path)
    data = build_shapes_datamodule(num_train=2, num_val=2, image_size=(64, 96), scales=(96,), batch_size=2,
                                   val_batch_size=2)  # 64 x 96 -> 96 x 144: factor 1.5
    data.setup("fit")
    seen = spy_on_image_scales(model)
    evaluate_split(model, data.val_dataloader(), CLASSES, top_ns=(10,), coco=False)
    assert seen == [[1.5, 1.5], [1.5, 1.5]]  # detections, then the recall's proposals
    module = JointModule(model_config(cfg), dict(cfg["optim"]), [10], CLASSES)
    seen = spy_on_image_scales(module.model, stop=True)  # the rest of the step needs a Trainer
    with pytest.raises(ProposalLayerReached):
        module.training_step(next(iter(data.train_dataloader())), 0)
    assert seen == [[1.5, 1.5]]
