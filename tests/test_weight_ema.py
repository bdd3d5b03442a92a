"""The weights' exponential moving average (``recipe.ema_decay``, frcnn.lit.averaging): the stage ends with the
average computed by hand from the trained weights of each step, validations score the average and a kept
best checkpoint holds what its validation scored, and a stage stopped mid-epoch resumes to the same average
and trained weights as the uninterrupted run. Real recipe on generated pictures (tests/test_keep_best.py's
setup); only the validation scores are scripted where a best that is not the last is needed."""

import pytest
import torch

from frcnn.config.schema import check_schema
from frcnn.engine import recipes
from frcnn.errors import ConfigError
from frcnn.lit import validation
from frcnn.lit.averaging import WeightEMA
from tests.test_keep_best import joint, same, state, stop_before

DECAY = 0.5  # a short average, so that 4-8 steps move it far from the last step's weights


class TrainedWeights(WeightEMA):
    """WeightEMA that also records the module's trained weights after every optimizer step and the weights
    each validation scores (a copy of the model's state: the EMA callback itself does the averaging)."""

    def __init__(self, decay):
        super().__init__(decay)
        self.trained, self.scored = {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.trained[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def on_validation_epoch_start(self, trainer, pl_module):
        super().on_validation_epoch_start(trainer, pl_module)
        self.scored[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


@pytest.fixture
def recorder(monkeypatch):
    made = []

    def callbacks_with_recorder(recipe_cfg):
        made.append(TrainedWeights(float(recipe_cfg["ema_decay"])))
        return made[-1:]

    monkeypatch.setattr(recipes, "weight_averaging_callbacks", callbacks_with_recorder)
    return made


def ema_by_hand(trained, last_step):
    """e_1 = w_1, e_k = d e_(k-1) + (1 - d) w_k (torch.optim.swa_utils' EMA; its first update copies)."""
    average = {k: v.double() for k, v in trained[1].items()}
    for step in range(2, last_step + 1):
        average = {k: DECAY * average[k] + (1 - DECAY) * trained[step][k].double() for k in average}
    return average


def close(weights, reference):
    """Float tensors equal to float32 rounding; integer buffers (BatchNorm's counters) are not averaged."""
    assert weights.keys() == reference.keys()
    return all(torch.allclose(weights[k].double(), reference[k], rtol=1e-5, atol=1e-6)
               for k in weights if weights[k].is_floating_point())


def test_the_stage_ends_with_the_average_of_its_steps(recorder, compose_cfg, tmp_path):
    """6 steps, no validation: model.pt (and final/model.pt) is the EMA of the 6 steps' weights, not step 6's."""
    cfg = compose_cfg(joint(6, f"recipe.ema_decay={DECAY}", "recipe.val_every_n_epochs=null"), tmp_path)
    recipes.run_recipe(cfg, tmp_path)
    trained = recorder[0].trained
    assert sorted(trained) == [1, 2, 3, 4, 5, 6]
    final = state(tmp_path / "final" / "model.pt")
    assert close(final, ema_by_hand(trained, 6))
    moved = [k for k in final if final[k].is_floating_point() and not torch.equal(final[k], trained[6][k])]
    assert len(moved) > 10  # the trained layers' weights differ from the last step's


def test_validations_score_the_average_and_the_best_checkpoint_holds_it(recorder, compose_cfg, tmp_path,
                                                                        monkeypatch):
    """Validations at steps 4, 8 and 12 (best at 4): each scores the average of its step, and the stage ends
    with step 4's average (best.ckpt, final/model.pt), not step 4's trained weights."""
    scores = {4: 0.5, 8: 0.2, 12: 0.3}
    original = validation.ValidationMAP.on_validation_epoch_end

    def scripted(self):
        original(self)  # the real evaluation runs; the scripted score decides which step is best
        self.log("val/map_50", scores[self.trainer.global_step])

    monkeypatch.setattr(validation.ValidationMAP, "on_validation_epoch_end", scripted)
    cfg = compose_cfg(joint(12, f"recipe.ema_decay={DECAY}", "recipe.keep_best=map_50"), tmp_path)
    metrics = recipes.run_recipe(cfg, tmp_path)
    ema = recorder[0]
    assert sorted(ema.scored) == [4, 8, 12]
    for step, weights in ema.scored.items():
        assert close(weights, ema_by_hand(ema.trained, step))
    assert metrics["model_selection"]["best_step"] == 4
    best = state(tmp_path / "joint" / "checkpoints" / "best.ckpt")
    assert close(best, ema_by_hand(ema.trained, 4)) and not same(best, ema.trained[4])
    assert same(state(tmp_path / "final" / "model.pt"), best)


def test_a_stage_stopped_mid_epoch_resumes_to_the_same_average(recorder, compose_cfg, tmp_path, monkeypatch):
    """Stopped before step 7 (last.ckpt of step 4, written after that step's validation with the average in
    place): the rerun restores the average and the trained weights and ends bit for bit as the
    uninterrupted run."""
    extra = (f"recipe.ema_decay={DECAY}", "recipe.keep_best=map_50", "recipe.checkpoint_every_n_steps=100")
    reference = tmp_path / "reference"
    recipes.run_recipe(compose_cfg(joint(10, *extra), reference), reference)
    run_dir = tmp_path / "stopped"
    cfg = compose_cfg(joint(10, *extra), run_dir)
    stop_before(monkeypatch, cfg, run_dir, 7)
    recipes.run_recipe(cfg, run_dir)
    assert same(state(run_dir / "final" / "model.pt"), state(reference / "final" / "model.pt"))
    last = "joint/checkpoints/last.ckpt"
    assert same(state(run_dir / last, "current_model_state"), state(reference / last, "current_model_state"))


def test_ema_decay_is_checked(compose_cfg, tmp_path):
    check_schema(compose_cfg(["recipe=alternating", "recipe.ema_decay=0.999"], tmp_path))
    for value in (0, 1, 1.5, -0.1):
        with pytest.raises(ConfigError) as err:
            check_schema(compose_cfg(["recipe=joint", f"recipe.ema_decay={value}"], tmp_path))
        assert f"recipe.ema_decay={value}" in str(err.value) and "(0, 1)" in str(err.value)
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(1.0)
