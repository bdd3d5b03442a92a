"""Joint training's ``schedule.joint.batches_per_update`` (Caffe's iter_size; the authors' end2end solver
averages 2 passes of 1 image per SGD update): the update's gradient is the mean of the passes', each
pass sampling its own anchors and RoIs; max_steps counts updates; exact resume still holds."""

import pytest
import torch

from frcnn.config.checks import validate_config
from frcnn.engine import recipes
from frcnn.engine.recipes import model_config
from frcnn.errors import ConfigError
from frcnn.lit import callbacks
from frcnn.lit.joint import JointModule
from frcnn.modeling.faster_rcnn import FasterRCNN

IMAGES = [torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(3)),
          torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(4))]
TARGETS = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 10.0, 150.0, 70.0]]), "labels": torch.tensor([2, 1])},
           {"boxes": torch.tensor([[30.0, 15.0, 100.0, 80.0]]), "labels": torch.tensor([3])}]
JOINT = ["recipe=joint", "logger=none", "data.num_train=4", "data.num_val=2", "schedule.joint.images_per_batch=1",
         "++schedule.joint.batches_per_update=2", "schedule.joint.max_steps=3", "schedule.joint.lr_steps=[2]",
         "recipe.val_every_n_epochs=null", "recipe.checkpoint_every_n_steps=1"]


class Stopped(RuntimeError):
    """The interruption of the resume test (a crash between two updates)."""


def _module(compose_cfg, tmp_path, images_per_pass):
    cfg = compose_cfg(["recipe=joint"], tmp_path)
    torch.manual_seed(0)
    return JointModule(model_config(cfg), dict(cfg["optim"]), [100], ["a", "b", "c", "d", "e"],
                       images_per_pass=images_per_pass).train()


def _gradients(module, loss):
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def test_two_passes_of_one_image_average_the_per_image_gradients(compose_cfg, tmp_path):
    """Caffe's iter_size 2: grad of the update = (grad of image 1 alone + grad of image 2 alone) / 2,
    each image a mini-batch of its own (its own 256 anchors, its own 128 RoIs); not the 2-image pass."""
    module = _module(compose_cfg, tmp_path, images_per_pass=1)
    torch.manual_seed(7)
    update = module.update_losses(IMAGES, TARGETS)
    torch.manual_seed(7)  # the same draws, in the same order: pass 1 then pass 2
    alone = [module.model(IMAGES[i:i + 1], TARGETS[i:i + 1]) for i in range(2)]
    for name in update:
        torch.testing.assert_close(update[name], (alone[0][name] + alone[1][name]) / 2, rtol=0, atol=0)
    for got, want in zip(_gradients(module, update["total"]),
                         _gradients(module, (alone[0]["total"] + alone[1]["total"]) / 2)):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want)
    torch.manual_seed(7)
    one_pass = _module(compose_cfg, tmp_path, images_per_pass=None).update_losses(IMAGES, TARGETS)
    assert not torch.equal(one_pass["det"], update["det"])  # 64 RoIs from each image, one normalisation


def test_batches_per_update_is_a_joint_key(compose_cfg, tmp_path):
    validate_config(compose_cfg(JOINT, tmp_path))
    with pytest.raises(ConfigError, match=r"schedule\.joint\.batches_per_update"):
        validate_config(compose_cfg(JOINT + ["++schedule.joint.batches_per_update=0"], tmp_path))
    with pytest.raises(ConfigError, match=r"schedule\.alternating\.stage1_det\.batches_per_update: unknown key"):
        validate_config(compose_cfg(["+schedule.alternating.stage1_det.batches_per_update=2"], tmp_path))


@pytest.mark.slow
def test_resumed_run_with_two_passes_per_update_ends_equal_to_an_uninterrupted_one(compose_cfg, tmp_path, monkeypatch):
    """3 updates of 2 one-image passes (6 images); the interrupted run crashes before the third update
    (global step 2, checkpointed every update), resumes from last.ckpt and must end with the same weights
    and metrics as the uninterrupted run."""
    passes = []
    forward = FasterRCNN.forward

    def counting(self, images, targets=None, **kwargs):
        if targets is not None:
            passes.append(len(images))
        return forward(self, images, targets, **kwargs)

    monkeypatch.setattr(FasterRCNN, "forward", counting)
    reference = recipes.run_recipe(compose_cfg(JOINT, tmp_path / "reference"), tmp_path / "reference")
    assert passes == [1] * 6  # max_steps counts updates: 3 updates x 2 passes of 1 image
    assert (tmp_path / "reference" / "joint" / "DONE").read_text().strip() == "3"

    def stop_at(stage, step):
        if step == 2:
            raise Stopped(f"{stage} stopped before update {step}")

    monkeypatch.setattr(callbacks, "fault_point", stop_at)
    with pytest.raises(Stopped):
        recipes.run_recipe(compose_cfg(JOINT, tmp_path / "resumed"), tmp_path / "resumed")
    ckpt = torch.load(tmp_path / "resumed" / "joint" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    monkeypatch.setattr(callbacks, "fault_point", lambda stage, step: None)
    passes.clear()
    resumed = recipes.run_recipe(compose_cfg(JOINT, tmp_path / "resumed"), tmp_path / "resumed")
    assert passes == [1] * 2  # only update 3 was left
    final = {run: torch.load(tmp_path / run / "final" / "model.pt", map_location="cpu", weights_only=True)
             for run in ("reference", "resumed")}
    weights = {run: final[run]["state_dict"] for run in final}
    assert weights["reference"].keys() == weights["resumed"].keys()
    assert all(torch.equal(weights["reference"][k], weights["resumed"][k]) for k in weights["reference"])
    assert resumed["map_50"] == reference["map_50"]
