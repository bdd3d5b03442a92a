"""Start-up checks of the composed config: every error names the key and what is allowed.

Two layers, both run before anything is built:
- :func:`frcnn.config.schema.check_schema`: every key known, present, of its type, in range
  (the schema is written with the rule types of :mod:`frcnn.config.rules`: Number, Choice, ListOf, Node, ...);
- the rules between keys in :func:`validate_config` (IoU thresholds, the chosen recipe's schedule).
:func:`check_override_keys` gives command-line typos a "did you mean" before Hydra's own
"Key ... is not in struct" message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from frcnn.config.rules import unknown_key_message
from frcnn.errors import ConfigError

log = logging.getLogger(__name__)


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check the resolved config (a plain dict). Raises ConfigError naming the first bad key."""
    from frcnn.config.schema import check_schema

    check_schema(cfg)
    rpn, roi = cfg["rpn"], cfg["roi_head"]
    # §3.1.2: positive IoU > fg_iou, negative IoU < bg_iou; anchors in between are ignored.
    if rpn["fg_iou"] < rpn["bg_iou"]:
        raise ConfigError(f"rpn.fg_iou ({rpn['fg_iou']}) must be >= rpn.bg_iou ({rpn['bg_iou']}): "
                          "an anchor cannot be both positive and negative (paper: 0.7 / 0.3)")
    # Fast R-CNN §2.3: foreground IoU >= fg_iou, background IoU in [bg_iou_lo, bg_iou_hi).
    if roi["fg_iou"] < roi["bg_iou_hi"]:
        raise ConfigError(f"roi_head.fg_iou ({roi['fg_iou']}) must be >= roi_head.bg_iou_hi ({roi['bg_iou_hi']}) "
                          "(paper: 0.5 / 0.5)")
    if roi["bg_iou_lo"] > roi["bg_iou_hi"]:
        raise ConfigError(f"roi_head.bg_iou_lo ({roi['bg_iou_lo']}) must be <= roi_head.bg_iou_hi "
                          f"({roi['bg_iou_hi']}): background RoIs have IoU in [bg_iou_lo, bg_iou_hi)")
    for mode in ("train", "test"):
        top = rpn[mode]
        if top["pre_nms_top_n"] != -1 and top["pre_nms_top_n"] < top["post_nms_top_n"]:
            raise ConfigError(f"rpn.{mode}.pre_nms_top_n ({top['pre_nms_top_n']}) must be >= "
                              f"rpn.{mode}.post_nms_top_n ({top['post_nms_top_n']}) or -1 (no cut)")
    strategy = str(cfg["trainer"]["strategy"])
    if "spawn" in strategy:
        raise ConfigError(f"trainer.strategy={strategy} is not supported: spawned processes receive the recipe's "
                          "data modules by pickling, and they are built from closures; use trainer.strategy=ddp "
                          "(Lightning re-runs train.py for each extra rank)")
    recipe = cfg["recipe"]["name"]
    if roi.get("target_normalization", "fixed") == "empirical" and recipe != "alternating":
        raise ConfigError(f"roi_head.target_normalization=empirical needs recipe=alternating (got recipe={recipe}): "
                          "its statistics come from a proposal file before a detector stage; joint training "
                          "normalises by the fixed roi_head.target_stds, as the authors' end2end code")
    if recipe not in cfg["schedule"]:
        raise ConfigError(f"recipe={recipe!r} has no stage lengths: schedule.{recipe} is missing "
                          f"(schedule has: {', '.join(cfg['schedule']) or 'nothing'})")
    _warn_unreached_lr_steps(cfg["schedule"][recipe], f"schedule.{recipe}")
    _check_rois_share_out(roi["rois_per_minibatch"], cfg["schedule"][recipe], f"schedule.{recipe}")


DETECTOR_STAGES = ("stage1_det", "stage2_det")  # the alternating recipe's stages that sample RoIs


def _check_rois_share_out(rois_per_minibatch: int, schedule: Mapping[str, Any], key: str) -> None:
    """Fast R-CNN §2.3: the R RoIs of a mini-batch come R / N from each of its N images, so N must
    divide R (the authors' code asserts the same)."""
    stages = {key: schedule} if "images_per_batch" in schedule else {
        f"{key}.{name}": schedule[name] for name in DETECTOR_STAGES if name in schedule}
    for stage_key, stage in stages.items():
        images = stage["images_per_batch"]
        if rois_per_minibatch % images:
            raise ConfigError(f"roi_head.rois_per_minibatch ({rois_per_minibatch}) must be a multiple of "
                              f"{stage_key}.images_per_batch ({images}): each image of a mini-batch gives "
                              f"rois_per_minibatch / images_per_batch RoIs (paper: 128 per 2 images = 64 each)")


def check_backbone_weights(cfg: Mapping[str, Any]) -> None:
    """Start-up check that ``backbone.weights`` can be had on this machine, before any training
    (imagenet: torchvision's file in the torch hub cache, downloaded now if missing; a path: it exists).
    Raises ConfigError with the file wanted, where it was looked for and how to pass a local file."""
    from frcnn.checkpoint.pretrained import WeightsUnavailableError
    from frcnn.modeling.backbone import check_weights_available  # lazy: torch only once the config is known good

    backbone = cfg["backbone"]
    try:
        check_weights_available(str(backbone["name"]), backbone.get("weights"), backbone.get("model"))
    except (WeightsUnavailableError, FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None


def _warn_unreached_lr_steps(node: Mapping[str, Any], key: str) -> None:
    """An lr step at or past max_steps never happens: legitimate for short test runs, so a warning."""
    if "max_steps" not in node:
        for name, stage in node.items():
            _warn_unreached_lr_steps(stage, f"{key}.{name}")
        return
    steps, length = ("lr_steps", "max_steps") if node["max_steps"] is not None else ("lr_epochs", "epochs")
    late = [s for s in node[steps] if s >= node[length]]
    if late:
        log.warning("%s.%s %s are >= %s.%s=%s: the lr never drops there", key, steps, late, key, length, node[length])



# ----------------------------------------------------------------------------------------------
# Command-line overrides
# ----------------------------------------------------------------------------------------------
def missing_key_message(cfg: Mapping[str, Any], dotted_key: str) -> str | None:
    """None when ``dotted_key`` exists in ``cfg``; else 'rpn.lamda: unknown key; did you mean
    rpn.lambda? ...' naming the deepest existing parent's keys."""
    node: Any = cfg
    parts = dotted_key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, Mapping):
            parent = ".".join(parts[:depth])
            return f"{dotted_key}: {parent} is a value ({node!r}), not a group of keys"
        if part not in node:
            prefix = ".".join(parts[:depth]) + "." if depth else ""
            return unknown_key_message(prefix + part, list(node), prefix)
        node = node[part]
    return None


def check_override_keys(cfg: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Raise ConfigError for the first ``key=value`` override whose key is not in ``cfg``
    (the composed config before those overrides)."""
    for key in keys:
        message = missing_key_message(cfg, key)
        if message:
            raise ConfigError(message)
