"""The 4-step alternating recipe (paper §3.2) on tiny runs: weights, proposals, resume."""

import json
import warnings

import pytest
import torch

from frcnn.engine import recipes
from frcnn.engine.proposal_files import PROPOSAL_FILE_NAME, load_proposal_file
from frcnn.inference.detector_file import load_detector
from frcnn.lit.stages import StageModule

STEPS = [f"schedule.alternating.{s}.{k}" for s in ("stage1_rpn", "stage1_det", "stage2_rpn", "stage2_det")
         for k in ("max_steps=4", "lr_steps=[3]", "images_per_batch=2")]
TINY = ["recipe=alternating", "logger=none", "data.num_train=6", "data.num_val=4", "recipe.checkpoint_every_n_steps=2",
        "recipe.proposals.post_nms_top_n=50", "recipe.reinit_det_outputs=true",
        "+roi_head.target_normalization=empirical"] + STEPS  # the authors' alt-opt targets (the default run: fixed)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def part(state, prefix):
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from tests.conftest import compose_config

    run_dir = tmp_path_factory.mktemp("alt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = recipes.run_recipe(compose_config(TINY, run_dir), run_dir)
    return run_dir, metrics, [str(w.message) for w in caught]


@pytest.mark.slow
def test_stages_train_what_the_paper_says(finished_run):
    run_dir, metrics, _ = finished_run
    det1, rpn2, det2 = (weights(run_dir / s / "model.pt") for s in ("stage1_det", "stage2_rpn", "stage2_det"))
    rpn1 = weights(run_dir / "stage1_rpn" / "model.pt")
    # stage 1 detector starts from a fresh backbone: not the stage-1 RPN's conv
    assert not same(part(rpn1, "backbone."), part(det1, "backbone."))
    # stage 4: shared conv equal to the stage-3 detector's, exactly (frozen, BN stats included)
    assert same(part(rpn2, "backbone."), part(det1, "backbone."))
    assert not same(part(rpn2, "rpn."), part(rpn1, "rpn."))
    # stage 6: conv unchanged, RPN unchanged, Fast R-CNN head changed
    assert same(part(det2, "backbone."), part(rpn2, "backbone."))
    assert same(part(det2, "rpn."), part(rpn2, "rpn."))
    assert not same(part(det2, "roi_head."), part(rpn2, "roi_head."))
    # unified: stage-4 conv + RPN, stage-6 head, one checkpoint
    final = torch.load(run_dir / "final" / "model.pt", map_location="cpu", weights_only=False)["state_dict"]
    assert same(part(final, "backbone."), part(rpn2, "backbone."))
    assert same(part(final, "rpn."), part(rpn2, "rpn."))
    assert same(part(final, "roi_head."), part(det2, "roi_head."))
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["recipe"] == "alternating" and saved["num_images"] == 4
    model, names = load_detector(run_dir / "final" / "model.pt")
    assert len(names) == 5


@pytest.mark.slow
def test_each_detector_stage_normalises_targets_by_its_own_training_rois(finished_run):
    """roi_head.target_normalization=empirical: stage1_det holds the statistics of the stage-1 proposals'
    RoIs, stage2_det (and the final detector) those of the stage-2 proposals', recomputed per stage."""
    from frcnn.data.build import build_dataset
    from frcnn.engine.target_stats import ground_truth_per_image, regression_target_statistics
    from tests.conftest import compose_config

    run_dir, _, _ = finished_run
    cfg = compose_config(TINY, run_dir)
    train_set = build_dataset(cfg["data"], "train")
    final = torch.load(run_dir / "final" / "model.pt", map_location="cpu", weights_only=False)["state_dict"]
    found = {}
    for proposals, stage in (("stage1_proposals", "stage1_det"), ("stage2_proposals", "stage2_det")):
        boxes = load_proposal_file(run_dir / proposals / PROPOSAL_FILE_NAME, len(train_set))
        means, stds = regression_target_statistics(ground_truth_per_image(train_set), boxes, 5,
                                                   flip_prob=cfg["data"]["hflip_prob"])
        saved = weights(run_dir / stage / "model.pt")
        assert torch.equal(saved["roi_head.target_means"], means) and torch.equal(saved["roi_head.target_stds"], stds)
        found[stage] = means
    assert not torch.equal(found["stage1_det"], found["stage2_det"])
    assert torch.equal(final["roi_head.target_means"], found["stage2_det"])


@pytest.mark.slow
def test_frozen_stages_do_not_warn_about_eval_mode_modules(finished_run):
    """Steps 3-4 freeze the shared conv (its BatchNorms in eval mode, on purpose): Lightning's
    "Found N module(s) in eval mode at the start of training" is not shown to the user."""
    _, _, messages = finished_run
    assert not [m for m in messages if "in eval mode at the start of training" in m]
    assert messages, "no warning at all was recorded: the recording itself is broken"


def test_proposal_files_one_sorted_entry_per_image_inside_image(finished_run):
    run_dir, _, _ = finished_run
    for stage in ("stage1_proposals", "stage2_proposals"):
        proposals = load_proposal_file(run_dir / stage / PROPOSAL_FILE_NAME, num_images=6)
        assert len(proposals) == 6
        for boxes, scores in map(proposals.read, range(6)):
            assert 0 < boxes.shape[0] <= 50
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 256).all()  # shapes images are 256 x 256
            assert (scores[:-1] >= scores[1:]).all()


@pytest.mark.parametrize("reinit_outputs", [True, False])
def test_last_detector_step_starts_from_stage4_with_fresh_or_carried_output_layers(compose_cfg, tmp_path,
                                                                                   reinit_outputs):
    """recipe.reinit_det_outputs: stage2_det keeps its fresh cls_score / bbox_pred (the authors' code) and
    takes everything else (conv, RPN, fc layers) from stage 4; false: everything from stage 4."""
    from frcnn.modeling.build import build_model

    model_cfg = recipes.model_config(compose_cfg(TINY, tmp_path))
    torch.manual_seed(1)
    stage4_model = build_model(model_cfg, num_classes=5)
    stage4 = {k: v.clone() for k, v in stage4_model.state_dict().items()}
    torch.manual_seed(2)
    detector = build_model(model_cfg, num_classes=5)
    fresh = {k: v.clone() for k, v in detector.state_dict().items()}
    recipes.start_last_detector(detector, stage4_model, reinit_outputs)
    outputs = part(fresh, "roi_head.predictor.")
    assert set(outputs) == {f"roi_head.predictor.{layer}.{p}" for layer in ("cls_score", "bbox_pred")
                            for p in ("weight", "bias")}
    for key, value in detector.state_dict().items():
        expected = fresh[key] if reinit_outputs and key in outputs else stage4[key]
        assert torch.equal(value, expected), key
    assert not same(part(stage4, "roi_head.predictor."), outputs)  # the two starts do differ


def test_frozen_parts_get_no_gradient_and_bn_stats_stay(compose_cfg, tmp_path):
    cfg = compose_cfg(TINY, tmp_path)
    module = StageModule("rpn", recipes.model_config(cfg), dict(cfg["optim"]), [10], ["a", "b"], freeze_shared=True)
    module.train()
    before = {k: v.clone() for k, v in module.model.backbone.state_dict().items()}
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("rpn.") for n in trainable)
    images = [torch.rand(3, 64, 64)]
    fmap, sizes = module.model.features(images)
    _, _, losses = module.model.rpn(fmap, sizes, [torch.tensor([[8.0, 8.0, 40.0, 40.0]])])
    losses["rpn"].backward()
    after = module.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_run_stopped_in_stage_3_resumes_there(compose_cfg, tmp_path, monkeypatch):
    cfg = compose_cfg(TINY, tmp_path)
    original = StageModule.training_step

    def crash_in_stage3(self, batch, batch_idx):
        if self.hparams.stage_name == "stage1_det" and self.global_step == 3:
            raise RuntimeError("simulated crash in stage 3")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(StageModule, "training_step", crash_in_stage3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        recipes.run_recipe(cfg, tmp_path)
    assert (tmp_path / "stage1_rpn" / "DONE").exists() and not (tmp_path / "stage1_det" / "DONE").exists()
    assert (tmp_path / "stage1_det" / "checkpoints" / "last.ckpt").exists()
    monkeypatch.setattr(StageModule, "training_step", original)

    resumed_from = {}
    real_fit = recipes.L.Trainer.fit

    def spy_fit(self, module, *args, ckpt_path=None, **kwargs):
        resumed_from[module.hparams.stage_name] = ckpt_path
        return real_fit(self, module, *args, ckpt_path=ckpt_path, **kwargs)

    monkeypatch.setattr(recipes.L.Trainer, "fit", spy_fit)
    metrics = recipes.run_recipe(cfg, tmp_path)
    assert "stage1_rpn" not in resumed_from and "stage1_proposals" not in metrics["stage_seconds"]
    assert resumed_from["stage1_det"] is not None and resumed_from["stage1_det"].endswith("last.ckpt")
    assert resumed_from["stage2_rpn"] is None
    assert (tmp_path / "stage1_det" / "DONE").read_text().strip() == "4"
    assert (tmp_path / "metrics.json").exists()
