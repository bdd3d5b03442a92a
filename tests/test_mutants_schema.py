"""frcnn.config.schema where the suite left mutants alive (scripts/mutation_test.sh).

The start-up check's own rules (a backbone's keys, a stage's length, the recipe's model selection, the
augment list) each with the whole message a user reads: the key, the value and the fix. Each case starts
from the default config, composed once, and changes only the keys it is about.
"""

from __future__ import annotations

import copy

import pytest

from frcnn.config.schema import check_schema
from frcnn.errors import ConfigError
from tests.conftest import compose_config
from tests.test_fuzz_config import set_dotted

TIMM_LIST = "timm, efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"  # modeling/backbone/build.py


@pytest.fixture(scope="module")
def default_cfg(tmp_path_factory):
    return compose_config([], tmp_path_factory.mktemp("run"))


def with_changes(cfg: dict, changes: dict) -> dict:
    """A copy of ``cfg`` with ``{"group.key": value}`` set."""
    cfg = copy.deepcopy(cfg)
    for dotted, value in changes.items():
        set_dotted(cfg, dotted, value)
    return cfg


def refusal(cfg: dict, changes: dict) -> str:
    with pytest.raises(ConfigError) as err:
        check_schema(with_changes(cfg, changes))
    return str(err.value)


def test_the_default_and_legal_combinations_pass(default_cfg):
    check_schema(default_cfg)
    for changes in (
        {"backbone.name": "timm", "backbone.weights": None, "backbone.model": "resnet18", "backbone.head": "fc",
         "backbone.output_stride": 8},
        {"backbone.name": "small", "backbone.weights": "builtin_voclike"},
        {"recipe.keep_best": "map_50", "recipe.early_stop_patience": 2, "recipe.val_every_n_epochs": 1},
        {"schedule.joint.max_steps": None, "schedule.joint.lr_steps": None, "schedule.joint.epochs": 2.5,
         "schedule.joint.lr_epochs": [2]},
    ):
        check_schema(with_changes(default_cfg, changes))


@pytest.mark.parametrize("weights", ["builtin", "builtin_voclike"])
def test_builtin_weights_on_another_backbone(default_cfg, weights):
    assert refusal(default_cfg, {"backbone.name": "vgg16", "backbone.weights": weights}) == (
        f"backbone.weights='{weights}' is only shipped for backbone small, not 'vgg16': use imagenet (vgg16, "
        "resnet50_c4, timm, efficientnet_lite0/1/2), a local state-dict path, or null")


def test_timm_without_a_model(default_cfg):
    for missing in (None, ""):
        assert refusal(default_cfg, {"backbone.name": "timm", "backbone.weights": None, "backbone.model": missing}) == (
            "backbone.model is missing: backbone=timm needs backbone.model=<timm model name>, "
            "e.g. resnet50, tf_efficientnet_lite0, convnext_tiny")


def test_timm_only_keys_on_another_backbone(default_cfg):
    assert refusal(default_cfg, {"backbone.name": "small", "backbone.head": "fc"}) == (
        f"backbone.head='fc' is only read by the timm backbones ({TIMM_LIST}), not backbone=small")
    assert refusal(default_cfg, {"backbone.name": "zf", "backbone.weights": None, "backbone.output_stride": 8}) == (
        f"backbone.output_stride=8 is only read by the timm backbones ({TIMM_LIST}): backbone=zf has stride 16")
    assert refusal(default_cfg, {"backbone.name": "vgg16", "backbone.weights": None, "backbone.model": "resnet18"}) == (
        "backbone.model='resnet18' is only read by backbone=timm, not backbone=vgg16")


def test_a_stage_in_both_steps_and_epochs_or_neither(default_cfg):
    assert refusal(default_cfg, {"schedule.joint.max_steps": 200, "schedule.joint.epochs": 2.0}) == (
        "schedule.joint: give its length either in steps (max_steps, lr_steps) or in epochs (epochs, lr_epochs), "
        "not both (max_steps=200, epochs=2.0): set one of them to null, e.g. schedule.joint.epochs=null")
    assert refusal(default_cfg, {"schedule.joint.max_steps": None, "schedule.joint.epochs": None}) == (
        "schedule.joint: give its length either in steps (max_steps, lr_steps) or in epochs (epochs, lr_epochs), "
        "not neither (max_steps=None, epochs=None): set one of them")


def test_a_stage_without_its_lr_schedule(default_cfg):
    assert refusal(default_cfg, {"schedule.joint.lr_steps": None}) == (
        "schedule.joint.lr_steps: missing; expected a list (may be empty) beside max_steps")
    assert refusal(default_cfg, {"schedule.joint.max_steps": None, "schedule.joint.lr_steps": None,
                                 "schedule.joint.epochs": 3.0}) == (
        "schedule.joint.lr_epochs: missing; expected a list (may be empty) beside epochs")


def test_model_selection_without_validations(default_cfg):
    no_val = {"recipe.val_every_n_epochs": None}
    assert refusal(default_cfg, {**no_val, "recipe.keep_best": "map_voc07"}) == (
        "recipe.keep_best=map_voc07 needs validations during training to choose from, but "
        "recipe.val_every_n_epochs is null (none): set recipe.val_every_n_epochs=N (validate every N epochs) "
        "or leave it null")
    assert refusal(default_cfg, {**no_val, "recipe.early_stop_patience": 3}).startswith(
        "recipe.early_stop_patience=3 needs validations")
    assert refusal(default_cfg, {**no_val, "recipe.keep_best": "map_50", "recipe.early_stop_patience": 3}).startswith(
        "recipe.keep_best=map_50 and recipe.early_stop_patience=3 need validations")


def test_model_selection_with_unshared(tmp_path):
    cfg = compose_config(["recipe=alternating", "recipe.unshared=true", "recipe.val_every_n_epochs=1"], tmp_path)
    check_schema(cfg)
    assert refusal(cfg, {"recipe.keep_best": "map_50"}) == (
        "recipe.keep_best=map_50 needs the stage that validates (stage2_det), which recipe.unshared=true does not "
        "run: leave it null with unshared")


def test_registry_choices_name_their_options(default_cfg):
    assert refusal(default_cfg, {"data.sampler": "balanced"}) == (
        "data.sampler='balanced' is not allowed; allowed: uniform, repeat_factor")
    assert refusal(default_cfg, {"recipe.keep_best": "map75", "recipe.val_every_n_epochs": 1}) == (
        "recipe.keep_best='map75' is not allowed; allowed: map_50, map_voc07; did you mean 'map_50'?")


def test_the_augment_list(default_cfg):
    assert refusal(default_cfg, {"data.augment.transforms": "HorizontalFlip"}) == (
        "data.augment.transforms: expected a list of {_target_: albumentations.<Class>, <argument>: <value>, ...}, "
        "got 'HorizontalFlip'")
    assert refusal(default_cfg, {"data.augment.transforms": [{"_target_": "albumentations.NoSuchFlip"}]}).startswith(
        "data.augment.transforms[0]._target_='albumentations.NoSuchFlip': not an albumentations transform")
