"""The best validation checkpoint and early stopping (``recipe.keep_best``, ``recipe.early_stop_patience``;
issue 35 item 1): the stage that validates ends with its best checkpoint's weights (final/model.pt, whose
evaluation then scores what that validation scored; metrics.json names the step and says the score is
optimistic), early stopping ends it after ``patience`` validations without improvement, and a run stopped
mid-stage and rerun keeps the best-so-far and the early-stopping count, ending as the uninterrupted run.

Validation scores are scripted by step where the test needs a best that is not the last (a detector
trained for a few steps on 8 pictures scores what it scores), everything else is the real recipe: Lightning's
ModelCheckpoint / EarlyStopping, checkpoints and the resume of frcnn.engine.resume.
"""

import csv
import json

import pytest
import torch

from frcnn.config.schema import check_schema
from frcnn.engine import recipes
from frcnn.errors import ConfigError
from frcnn.lit import callbacks, validation
from tests.conftest import REPO_ROOT

SMALL = ["logger=none", "data.image_size=[128,128]", "data.scales=[128]", "data.num_val=4", "rpn.batch_size=32",
         "roi_head.rois_per_minibatch=16", "trainer.enable_progress_bar=false"]
STEPS_PER_EPOCH = 4  # 8 pictures, 2 per step; validation after every epoch


def joint(steps, *extra):
    return ["recipe=joint", "data.num_train=8", "schedule.joint.images_per_batch=2", f"schedule.joint.max_steps={steps}",
            f"schedule.joint.lr_steps=[{steps - 2}]", "recipe.val_every_n_epochs=1", *SMALL, *extra]


class Stopped(RuntimeError):
    pass


def crash_before(monkeypatch, step):
    def fault_point(stage, at_step):
        if at_step == step:
            raise Stopped(f"stopped before step {step}")

    monkeypatch.setattr(callbacks, "fault_point", fault_point)


def stop_before(monkeypatch, cfg, run_dir, step):
    """Runs the recipe until it is stopped before ``step`` (last.ckpt as it was then); the next run is not."""
    crash_before(monkeypatch, step)
    with pytest.raises(Stopped):
        recipes.run_recipe(cfg, run_dir)
    monkeypatch.setattr(callbacks, "fault_point", lambda stage, step: None)


def scripted_scores(monkeypatch, scores):
    """Validation logs ``scores[global step]`` as val/map_50 (and val/map_voc07); returns the steps validated."""
    validated = []

    def on_validation_epoch_end(self):
        self._evaluator().reset()
        validated.append(self.trainer.global_step)
        self.log("val/map_50", scores[self.trainer.global_step])
        self.log("val/map_voc07", scores[self.trainer.global_step])

    monkeypatch.setattr(validation.ValidationMAP, "on_validation_epoch_end", on_validation_epoch_end)
    return validated


def state(path, key="state_dict"):
    """Model weights of a detector file or a Lightning checkpoint (its "model." prefix removed)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("model."): v for k, v in payload[key].items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_keep_best_makes_the_final_detector_the_best_validation_checkpoint(compose_cfg, tmp_path):
    """Real validation: final/model.pt holds best.ckpt's weights, the final evaluation (same split) scores what
    the best validation scored, metrics.json names its step and says why the score is optimistic; a rerun
    after the stage finished (metrics.json lost) reports the same selection from <stage>/best.json."""
    cfg = compose_cfg(joint(12, "recipe.keep_best=map_50", "logger=csv"), tmp_path)
    metrics = recipes.run_recipe(cfg, tmp_path)
    with open(tmp_path / "csv" / "joint" / "metrics.csv") as f:
        scores = [float(row["val/map_50"]) for row in csv.DictReader(f) if row.get("val/map_50")]
    assert len(scores) == 3
    best = scores.index(max(scores))  # the first of equal scores stays
    selection = metrics["model_selection"]
    assert selection["best_step"] == (best + 1) * STEPS_PER_EPOCH and selection["last_step"] == 12
    assert selection["best_score"] == pytest.approx(max(scores)) == pytest.approx(metrics["map_50"], abs=1e-6)
    assert "optimistic" in selection["note"] and f"step {selection['best_step']}" in selection["note"]
    final = state(tmp_path / "final" / "model.pt")
    assert same(final, state(tmp_path / "joint" / "checkpoints" / "best.ckpt"))
    assert same(final, torch.load(tmp_path / "joint" / "model.pt", weights_only=True))
    (tmp_path / "metrics.json").unlink()
    assert recipes.run_recipe(cfg, tmp_path)["model_selection"] == selection


@pytest.fixture
def best_then_worse(monkeypatch):
    return scripted_scores(monkeypatch, {4: 0.5, 8: 0.2, 12: 0.3, 16: 0.6})


def test_a_run_stopped_mid_stage_keeps_the_best_so_far(best_then_worse, compose_cfg, tmp_path, monkeypatch):
    """Best at step 4 (0.5), then 0.2 and 0.3. Stopped before step 6 with last.ckpt of step 4, which Lightning
    writes before that step's validation: the rerun resumes after it and must still know 0.5, or it keeps
    step 12 (0.3). It ends with step 4's weights, as the uninterrupted run, and trains to the same step 12."""
    extra = ("recipe.keep_best=map_50", "recipe.checkpoint_every_n_steps=4")
    reference = tmp_path / "reference"
    recipes.run_recipe(compose_cfg(joint(12, *extra), reference), reference)
    assert best_then_worse == [4, 8, 12]
    run_dir = tmp_path / "stopped"
    cfg = compose_cfg(joint(12, *extra), run_dir)
    stop_before(monkeypatch, cfg, run_dir, 6)
    best_then_worse.clear()
    metrics = recipes.run_recipe(cfg, run_dir)
    assert best_then_worse == [8, 12]  # step 4's validation is not run again
    assert metrics["model_selection"]["best_step"] == 4 and metrics["model_selection"]["best_score"] == 0.5
    assert same(state(run_dir / "final" / "model.pt"), state(reference / "final" / "model.pt"))
    last = run_dir / "joint" / "checkpoints" / "last.ckpt"
    assert same(state(last), state(reference / "joint" / "checkpoints" / "last.ckpt"))  # the same training
    assert not same(state(last), state(run_dir / "final" / "model.pt"))


@pytest.mark.parametrize("last_score, kept", [(0.6, 10), (0.3, 4)])
def test_a_stage_ending_between_validations_validates_its_last_step(last_score, kept, compose_cfg, tmp_path,
                                                                   monkeypatch):
    """10 steps, 4 an epoch: validations at steps 4 and 8 during training, and the last step (10) once after it.
    It is kept when it scores better than step 4's 0.5 (the stage's own weights), else step 4's checkpoint."""
    validated = scripted_scores(monkeypatch, {4: 0.5, 8: 0.2, 10: last_score})
    metrics = recipes.run_recipe(compose_cfg(joint(10, "recipe.keep_best=map_50"), tmp_path), tmp_path)
    assert validated == [4, 8, 10]
    selection = metrics["model_selection"]
    assert selection["best_step"] == kept and selection["best_score"] == pytest.approx(max(last_score, 0.5))
    best_checkpoint = state(tmp_path / "joint" / "checkpoints" / "best.ckpt")  # step 4's, the best during training
    assert same(state(tmp_path / "final" / "model.pt"), best_checkpoint) == (kept == 4)


def test_early_stopping_ends_the_stage_and_counts_across_a_resume(best_then_worse, compose_cfg, tmp_path,
                                                                  monkeypatch):
    """Patience 2: 0.5 at step 4, then 0.2 and 0.3 (no improvement twice): the stage ends at step 12 of 16,
    uninterrupted or stopped before step 10 and rerun (its count of 1 restored: lost, 0.3 would count as an
    improvement and the stage run to 16)."""
    extra = ("recipe.keep_best=map_50", "recipe.early_stop_patience=2", "recipe.checkpoint_every_n_steps=100")
    reference = tmp_path / "reference"
    metrics = recipes.run_recipe(compose_cfg(joint(16, *extra), reference), reference)
    assert best_then_worse == [4, 8, 12] and (reference / "joint" / "DONE").read_text().strip() == "12"
    assert metrics["model_selection"]["stopped_early"] and metrics["model_selection"]["best_step"] == 4
    run_dir = tmp_path / "stopped"
    cfg = compose_cfg(joint(16, *extra), run_dir)
    stop_before(monkeypatch, cfg, run_dir, 10)
    best_then_worse.clear()
    assert recipes.run_recipe(cfg, run_dir)["model_selection"] == metrics["model_selection"]
    assert best_then_worse == [12] and (run_dir / "joint" / "DONE").read_text().strip() == "12"
    assert same(state(run_dir / "final" / "model.pt"), state(reference / "final" / "model.pt"))


def test_selection_keys_are_checked(compose_cfg, tmp_path):
    check_schema(compose_cfg(["recipe=joint", "recipe.keep_best=map_voc07", "recipe.early_stop_patience=3"], tmp_path))
    for overrides, message in (
        (["recipe=joint", "recipe.keep_best=map75"], "recipe.keep_best='map75' is not allowed; allowed: map_50, "
                                                     "map_voc07"),
        (["recipe=joint", "recipe.early_stop_patience=0"], "recipe.early_stop_patience=0 is out of range: must be >= 1"),
        (["recipe=joint", "recipe.early_stop_patience=2.5"], "recipe.early_stop_patience: expected an integer"),
        (["recipe=joint", "recipe.keep_best=map_50", "recipe.val_every_n_epochs=null"],
         "recipe.keep_best=map_50 needs validations during training to choose from, but recipe.val_every_n_epochs "
         "is null"),
        (["recipe=alternating", "recipe.early_stop_patience=2"], "recipe.val_every_n_epochs is null"),
        (["recipe=alternating", "recipe.keep_best=map_50", "recipe.val_every_n_epochs=1", "recipe.unshared=true"],
         "which recipe.unshared=true does not run"),
    ):
        with pytest.raises(ConfigError) as err:
            check_schema(compose_cfg(overrides, tmp_path))
        assert message in str(err.value)


PAPER_PRESETS = sorted(f"paper/{p.stem}" for p in (REPO_ROOT / "conf" / "experiment" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_presets_keep_fixed_schedules(preset, compose_cfg, tmp_path):
    """The paper selects no checkpoint and stops no stage early."""
    recipe = compose_cfg([f"experiment={preset}"], tmp_path)["recipe"]
    assert recipe["keep_best"] is None and recipe["early_stop_patience"] is None


def test_the_own_data_preset_keeps_the_best_validation(compose_cfg, tmp_path):
    """experiment=cpu_own_data keeps the best of its validations every 5 epochs (docs/CPU_PRESET.md), with either
    recipe; early stopping stays off."""
    for recipe in ("joint", "alternating"):
        cfg = compose_cfg(["experiment=cpu_own_data", f"recipe={recipe}"], tmp_path)
        check_schema(cfg)
        assert cfg["recipe"]["keep_best"] == "map_50" and cfg["recipe"]["val_every_n_epochs"] == 5
        assert cfg["recipe"]["early_stop_patience"] is None
