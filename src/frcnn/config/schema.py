"""The schema of the composed training config: every key, its type and its allowed values.

Hydra composes ``conf/`` into one config; :func:`check_schema` then walks it against the
schema below before anything is built. A schema check of the composed dict (rather than
dataclasses registered as group schemas) keeps the group YAML files plain, lets the ``data``
group carry dataset-specific keys, and gives one message format for every problem:

    rpn.lamda: unknown key; did you mean rpn.lambda?
    rpn.batch_size: expected an integer, got 2.5 (float)
    rpn.fg_iou=1.5 is out of range: must be in [0, 1]
    backbone.name='alexnet' is not allowed; allowed: resnet50_c4, small, vgg16, zf

The rule types (Number, Choice, Node, ...) live in :mod:`frcnn.config.rules`. Choices that depend on
code (backbones, datasets, optimisers, ...) are read from the code that implements them, so
the schema never falls out of date with a registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from frcnn.config.rules import (AnyOf, Bool, Choice, Free, ListOf, Node, Number, OrAuto, OrNull, Rule, Text, Variant,
                                is_list)
from frcnn.errors import ConfigError


# ----------------------------------------------------------------------------------------------
# Registries read from the code that implements them (imported lazily: torch is heavy)
# ----------------------------------------------------------------------------------------------
def _backbones() -> list[str]:
    from frcnn.modeling.backbone import available_backbones

    return list(available_backbones())


def _timm_backbones() -> list[str]:
    from frcnn.modeling.backbone.build import TIMM_BACKBONES

    return list(TIMM_BACKBONES)


def _builtin_weight_backbones() -> list[str]:
    from frcnn.modeling.backbone import backbones_with_builtin_weights

    return list(backbones_with_builtin_weights())


def _datasets() -> list[str]:
    from frcnn.data.build import DATASET_NAMES

    return list(DATASET_NAMES)


def _optimizers() -> list[str]:
    from frcnn.lit.optim import OPTIMIZERS

    return list(OPTIMIZERS)


def _reg_normalizers() -> list[str]:
    from frcnn.modeling.rpn import REG_NORMALIZERS

    return list(REG_NORMALIZERS)


def _rankings() -> list[str]:
    from frcnn.modeling.rpn import PROPOSAL_RANKINGS

    return list(PROPOSAL_RANKINGS)


def _pool_types() -> list[str]:
    from frcnn.modeling.roi_head import POOL_TYPES

    return list(POOL_TYPES)


def _target_normalizations() -> list[str]:
    from frcnn.modeling.roi_head import TARGET_NORMALIZATIONS

    return list(TARGET_NORMALIZATIONS)


def _samplers() -> list[str]:
    from frcnn.data.sampler import SAMPLERS

    return list(SAMPLERS)


def _keep_best_metrics() -> list[str]:
    from frcnn.lit.selection import KEEP_BEST_METRICS

    return list(KEEP_BEST_METRICS)


def _nonfinite_policies() -> list[str]:
    from frcnn.lit.guards import NONFINITE_POLICIES

    return list(NONFINITE_POLICIES)


def _wandb_modes() -> list[str]:
    from frcnn.engine.loggers import WANDB_MODES

    return list(WANDB_MODES)


def _strategies() -> list[str]:
    from lightning.pytorch.strategies import StrategyRegistry  # Lightning is a dependency: no fallback list

    return ["auto", *sorted(StrategyRegistry.available_strategies())]


ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
PRECISIONS = ("64-true", "64", "32-true", "32", "16-true", "16", "bf16-true", "bf16", "16-mixed", "bf16-mixed",
              "transformer-engine", "transformer-engine-float16")

# ----------------------------------------------------------------------------------------------
# The schema, group by group (values: paper §3.1-§3.3 and Fast R-CNN §2; see conf/)
# ----------------------------------------------------------------------------------------------
PROB = Number(0.0, 1.0)
IOU = Number(0.0, 1.0)
POSITIVE = Number(0.0, low_open=True)
NON_NEGATIVE = Number(0.0)
COUNT = Number(1, integer=True)
TOP_N = Number(1, integer=True, also=(-1,))  # -1: no cut

class AugmentTransforms(Rule):
    """data.augment.transforms: albumentations transforms by ``_target_``, each instantiated now so that a wrong
    class or argument stops the run at start-up naming its entry (frcnn.data.augment)."""

    def describe(self) -> str:
        return "a list of {_target_: albumentations.<Class>, <argument>: <value>, ...}"

    def check(self, value: Any, key: str) -> None:
        from frcnn.data.augment import build_augmentations

        if not is_list(value):
            raise ConfigError(f"{key}: expected {self.describe()}, got {value!r}")
        build_augmentations(value, key)


AUGMENT = Node({"name": Text(), "transforms": AugmentTransforms()})

DATA = Node(
    {
        "name": Choice(_datasets, hint="choose with data=<name>"),
        "scales": ListOf(Number(1, integer=True), min_len=1),  # shorter side, px (paper: 600)
        "max_size": Number(1, integer=True),  # longer side cap, px (paper: 1000)
        "hflip_prob": PROB,
        "num_workers": OrAuto(Number(0, integer=True)),  # auto: frcnn.data.datamodule.resolve_num_workers
        "augment": AUGMENT,  # the augment group (conf/augment/)
        "val_fraction": Number(0.0, 1.0, low_open=True, high_open=True),  # automatic split's val share (data.split)
        "split_dir": Text(nullable=True),  # where the automatic split is kept (data_split.json; the run dir)
        "sampler": Choice(_samplers),  # uniform | repeat_factor (LVIS's repeat factors: frcnn.data.sampler)
        "repeat_thresh": Number(0.0, 1.0, low_open=True),  # repeat_factor's t: classes in fewer pictures are repeated
    },
    optional=frozenset({"augment", "sampler", "repeat_thresh", "val_fraction", "split_dir"}),
    open=True,  # dataset-specific keys (root, splits, classes, ...) are checked by the dataset builder
)


class BackboneNode(Node):
    """backbone.{name, weights, model}; ``weights: builtin`` / ``builtin_voclike`` (the package's own
    pre-trained weights) only for a backbone the package ships weights for (``small``); ``model`` (a timm
    architecture) for ``backbone=timm`` and only there."""

    def check(self, value: Any, key: str) -> None:
        from frcnn.modeling.backbone import BUILTIN_WEIGHT_NAMES

        super().check(value, key)
        weights = value.get("weights")
        if weights in BUILTIN_WEIGHT_NAMES and value["name"] not in _builtin_weight_backbones():
            raise ConfigError(
                f"{key}.weights={weights!r} is only shipped for backbone {', '.join(_builtin_weight_backbones())}, "
                f"not {value['name']!r}: use imagenet (vgg16, resnet50_c4, timm, efficientnet_lite0/1/2), a local "
                "state-dict path, or null"
            )
        if value["name"] == "timm" and not value.get("model"):
            raise ConfigError(f"{key}.model is missing: backbone=timm needs {key}.model=<timm model name>, "
                              "e.g. resnet50, tf_efficientnet_lite0, convnext_tiny")
        if value.get("head") is not None and value["name"] not in _timm_backbones():
            raise ConfigError(f"{key}.head={value['head']!r} is only read by the timm backbones "
                              f"({', '.join(_timm_backbones())}), not backbone={value['name']}")
        if value.get("output_stride", 16) != 16 and value["name"] not in _timm_backbones():
            raise ConfigError(f"{key}.output_stride={value['output_stride']!r} is only read by the timm backbones "
                              f"({', '.join(_timm_backbones())}): backbone={value['name']} has stride 16")
        if value["name"] != "timm" and value.get("model") is not None:
            raise ConfigError(f"{key}.model={value['model']!r} is only read by backbone=timm, not "
                              f"backbone={value['name']}")


BACKBONE = BackboneNode({"name": Choice(_backbones, hint="choose with backbone=<name>"), "weights": Text(nullable=True),
                         "model": Text(nullable=True), "head": Choice(("c4", "fc")),
                         "output_stride": Choice((16, 8))},
                        optional=frozenset({"model", "head", "output_stride"}))

PROPOSALS_TRAIN = Node({"pre_nms_top_n": TOP_N, "post_nms_top_n": COUNT})
PROPOSALS_TEST = Node(
    {
        "pre_nms_top_n": TOP_N,
        "post_nms_top_n": COUNT,
        "ranking": Choice(_rankings),
        "use_regression": Bool(),
        "use_nms": Bool(),
    },
    optional=frozenset({"ranking", "use_regression", "use_nms"}),
)

RPN = Node(
    {
        "anchor_scales": OrAuto(ListOf(POSITIVE, min_len=1)),  # box side, px (paper: 128, 256, 512); auto: from
                                                               # the training boxes (frcnn.engine.fit_to_data)
        "anchor_ratios": ListOf(POSITIVE, min_len=1),  # h / w (paper: 0.5, 1, 2)
        "lambda": NON_NEGATIVE,  # eq. 1 balance (paper: 10)
        "reg_normalizer": Choice(_reg_normalizers),
        "smooth_l1_beta": POSITIVE,
        "fg_iou": IOU,
        "bg_iou": IOU,
        "batch_size": COUNT,
        "positive_fraction": Number(0.0, 1.0, low_open=True),
        "ignore_cross_boundary": Bool(),
        "mid_channels": Number(1, integer=True, nullable=True),
        "nms_thresh": IOU,
        "min_size": OrAuto(NON_NEGATIVE),  # px of the original image, x its resize factor at the network input
                                           # (paper: 16); auto: frcnn.engine.fit_to_data
        "train": PROPOSALS_TRAIN,
        "test": PROPOSALS_TEST,
    }
)

ROI_HEAD = Node(
    {
        "pool_type": Choice(_pool_types),
        "rois_per_minibatch": COUNT,  # Fast R-CNN's R, shared by the N images of a mini-batch (paper: 128, N = 2)
        "positive_fraction": Number(0.0, 1.0, low_open=True),
        "fg_iou": IOU,
        "bg_iou_hi": IOU,
        "bg_iou_lo": IOU,
        "target_stds": ListOf(POSITIVE, length=4),
        "add_gt_to_proposals": Bool(),
        "smooth_l1_beta": POSITIVE,
        "score_thresh": PROB,
        "nms_thresh": IOU,
        "detections_per_image": COUNT,
        # fixed: targets / target_stds for every class (end2end, the default) | empirical: per-class means / stds
        # of the training RoIs' targets, each detector stage of the 4-step recipe (the authors' alt-opt code)
        "target_normalization": Choice(_target_normalizations),
    },
    optional=frozenset({"target_normalization"}),
)

OPTIM = Node(
    {
        "name": Choice(_optimizers),
        "lr": POSITIVE,
        "momentum": Number(0.0, 1.0, high_open=True),
        "weight_decay": NON_NEGATIVE,
        "lr_gamma": Number(0.0, 1.0, low_open=True),
        "bias_lr_factor": NON_NEGATIVE,
        "bias_weight_decay": NON_NEGATIVE,
        "warmup_steps": Number(0, integer=True),
        "gradient_clip_norm": Number(0.0, low_open=True, nullable=True),
    },
    optional=frozenset({"name", "warmup_steps", "gradient_clip_norm"}),
)

class StageNode(Node):
    """A stage's length: ``max_steps`` / ``lr_steps`` in mini-batches, or ``epochs`` / ``lr_epochs`` in
    passes over the training set (turned into steps at start-up: frcnn.engine.fit_to_data); one of the two."""

    def check(self, value: Any, key: str) -> None:
        super().check(value, key)
        in_steps, in_epochs = value.get("max_steps") is not None, value.get("epochs") is not None
        if in_steps == in_epochs:
            fix = f"set one of them to null, e.g. {key}.epochs=null" if in_steps else "set one of them"
            raise ConfigError(
                f"{key}: give its length either in steps (max_steps, lr_steps) or in epochs (epochs, lr_epochs), "
                f"not {'both' if in_steps else 'neither'} (max_steps={value.get('max_steps')}, "
                f"epochs={value.get('epochs')}): {fix}")
        pair = "lr_steps" if in_steps else "lr_epochs"
        if value.get(pair) is None:
            raise ConfigError(f"{key}.{pair}: missing; expected a list (may be empty) beside "
                              f"{'max_steps' if in_steps else 'epochs'}")


STAGE = StageNode(
    {
        "max_steps": Number(1, integer=True, nullable=True),  # mini-batches (iterations)
        "lr_steps": ListOf(COUNT, nullable=True),  # lr x lr_gamma at each (null beside epochs)
        "epochs": Number(0.0, low_open=True, nullable=True),  # passes over the training set
        "lr_epochs": ListOf(POSITIVE, nullable=True),  # lr x lr_gamma after each (null beside max_steps)
        "images_per_batch": COUNT,  # per process
    },
    optional=frozenset({"epochs", "lr_epochs"}),
)
# Joint training may average several forward / backward passes into one SGD update (Caffe's iter_size: the
# authors' end2end solver has iter_size 2); max_steps / lr_steps then count updates (frcnn.lit.joint)
JOINT_STAGE = StageNode(
    {**STAGE.fields, "batches_per_update": COUNT},  # passes of images_per_batch images, gradients averaged
    optional=STAGE.optional | {"batches_per_update"},
)
ALTERNATING_STAGES = ("stage1_rpn", "stage1_det", "stage2_rpn", "stage2_det")
SCHEDULE = Node(
    {"joint": JOINT_STAGE, "alternating": Node({name: STAGE for name in ALTERNATING_STAGES})},
    optional=frozenset({"joint", "alternating"}),
)

_RECIPE_COMMON = {
    "name": Free(),
    "checkpoint_every_n_steps": COUNT,
    "val_every_n_epochs": Number(1, integer=True, nullable=True),
    "on_nonfinite_loss": Choice(_nonfinite_policies),  # NaN / inf loss: error (stop, naming step + term) | skip
    "val_pictures": Number(0, integer=True),
    "keep_best": OrNull(Choice(_keep_best_metrics)),  # the stage that validates ends with its best checkpoint
    "early_stop_patience": Number(1, integer=True, nullable=True),  # validations without improvement, then stop
    "ema_decay": Number(0.0, 1.0, low_open=True, high_open=True, nullable=True),  # weight EMA (frcnn.lit.averaging)
}
_SELECTION_KEYS = frozenset({"keep_best", "early_stop_patience"})


class RecipeNode(Node):
    """A recipe's keys; ``keep_best`` / ``early_stop_patience`` select among validations during training, so
    they need ``val_every_n_epochs`` and a stage that validates (the 4-step recipe's stage2_det, which
    ``unshared`` does not run)."""

    def check(self, value: Any, key: str) -> None:
        super().check(value, key)
        wanted = [f"{key}.{name}={value[name]}" for name in ("keep_best", "early_stop_patience")
                  if value.get(name) is not None]
        if not wanted:
            return
        keys, verb = " and ".join(wanted), "need" if len(wanted) > 1 else "needs"
        if value.get("val_every_n_epochs") is None:
            raise ConfigError(f"{keys} {verb} validations during training to choose from, but "
                              f"{key}.val_every_n_epochs is null (none): set {key}.val_every_n_epochs=N (validate "
                              "every N epochs) or leave it null")
        if value.get("unshared"):
            raise ConfigError(f"{keys} {verb} the stage that validates (stage2_det), which {key}.unshared=true "
                              "does not run: leave it null with unshared")


RECIPE = Variant(
    {
        "joint": RecipeNode(
            {**_RECIPE_COMMON, "approximate": Bool()},  # false: non-approximate joint training (§3.2 iii)
            optional=frozenset({"approximate", "ema_decay"}) | _SELECTION_KEYS,
        ),
        "alternating": RecipeNode(
            {
                **_RECIPE_COMMON,
                "unshared": Bool(),
                "reinit_det_outputs": Bool(),  # stage2_det: cls_score / bbox_pred from a fresh init (authors' code)
                "proposals": Node({"pre_nms_top_n": TOP_N, "post_nms_top_n": COUNT, "nms_thresh": IOU}),
            },
            optional=frozenset({"unshared", "reinit_det_outputs", "val_every_n_epochs", "val_pictures", "ema_decay"})
            | _SELECTION_KEYS,
        ),
    },
    group="recipe",
)

TRAINER = Node(
    {
        "accelerator": Choice(ACCELERATORS),
        "devices": AnyOf([Number(1, integer=True, also=(-1,)), Choice(["auto"]), ListOf(Number(0, integer=True), min_len=1)]),
        "num_nodes": COUNT,
        "strategy": Choice(_strategies),
        "precision": Choice(PRECISIONS),
        "log_every_n_steps": COUNT,
        "enable_progress_bar": Bool(),  # false: no progress bar or progress lines (frcnn.lit.progress)
        "progress_every_s": Number(0.0, low_open=True),  # seconds between progress lines when stdout is no terminal
        "deterministic": AnyOf([Bool(), Choice(["warn"])]),
    },
    optional=frozenset({"deterministic", "progress_every_s"}),
)

_NAME_ONLY = Node({"name": Free()})
LOGGER = Variant(
    {
        "wandb": Node(
            {"name": Free(), "project": Text(), "entity": Text(nullable=True), "group": Text(nullable=True),
             "mode": Choice(_wandb_modes), "run_name": Text(nullable=True)},
            optional=frozenset({"project", "entity", "group", "mode", "run_name"}),
        ),
        "csv": _NAME_ONLY,
        "tensorboard": _NAME_ONLY,
        "none": _NAME_ONLY,
    },
    group="logger",
)

TRAIN_CONFIG = Node(
    {
        "data": DATA,
        "backbone": BACKBONE,
        "rpn": RPN,
        "roi_head": ROI_HEAD,
        "optim": OPTIM,
        "schedule": SCHEDULE,
        "recipe": RECIPE,
        "trainer": TRAINER,
        "logger": LOGGER,
        "seed": Number(0, integer=True),
        "run_dir": Text(),
        # documentation carried by paper presets (conf/experiment/paper/): never read by training
        "paper_result": Free(),
        "paper_table": Free(),
    },
    optional=frozenset({"paper_result", "paper_table"}),
)


def check_schema(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError for the first key of ``cfg`` (the resolved config as a plain dict)
    that is unknown, missing, of the wrong type or outside its allowed values."""
    TRAIN_CONFIG.check(cfg, "")
