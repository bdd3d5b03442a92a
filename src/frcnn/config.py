"""Start-up checks of the composed config: every error names the key and what is allowed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; raised before any training starts."""


def _positive_list(cfg: Mapping[str, Any], key: str, where: str) -> None:
    values = cfg.get(key)
    if values is None or len(values) == 0:
        raise ConfigError(f"{where}.{key} must hold at least one value, got {values!r}")
    for value in values:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}.{key} must hold numbers > 0, got {list(values)!r}")


def _number(cfg: Mapping[str, Any], key: str, where: str, low: float | None = None, high: float | None = None) -> float:
    value = cfg.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where}.{key}={value} is outside [{low}, {high}]")
    return float(value)


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check the values a wrong override most often breaks (λ, anchors, IoU thresholds,
    names). ``cfg`` is the resolved config as a plain dict."""
    from frcnn.backbones import available_backbones
    from frcnn.data.build import DATASET_NAMES
    from frcnn.tracking import LOGGER_NAMES

    rpn, roi = cfg["rpn"], cfg["roi_head"]
    _number(rpn, "lambda", "rpn", low=0.0)
    _positive_list(rpn, "anchor_scales", "rpn")
    _positive_list(rpn, "anchor_ratios", "rpn")
    bg = _number(rpn, "bg_iou", "rpn", 0.0, 1.0)
    fg = _number(rpn, "fg_iou", "rpn", 0.0, 1.0)
    if fg < bg:
        raise ConfigError(f"rpn.fg_iou ({fg}) must be >= rpn.bg_iou ({bg})")
    _number(rpn, "positive_fraction", "rpn", 0.0, 1.0)
    _number(rpn, "nms_thresh", "rpn", 0.0, 1.0)
    _number(roi, "positive_fraction", "roi_head", 0.0, 1.0)
    if _number(roi, "fg_iou", "roi_head", 0.0, 1.0) < _number(roi, "bg_iou_hi", "roi_head", 0.0, 1.0):
        raise ConfigError(f"roi_head.fg_iou ({roi['fg_iou']}) must be >= roi_head.bg_iou_hi ({roi['bg_iou_hi']})")
    if cfg["backbone"]["name"] not in available_backbones():
        raise ConfigError(f"backbone={cfg['backbone']['name']!r}; allowed: {available_backbones()}")
    if cfg["data"]["name"] not in DATASET_NAMES:
        raise ConfigError(f"data={cfg['data']['name']!r}; allowed: {list(DATASET_NAMES)}")
    if cfg["logger"]["name"] not in LOGGER_NAMES:
        raise ConfigError(f"logger={cfg['logger']['name']!r}; allowed: {list(LOGGER_NAMES)}")
    _number(cfg["optim"], "lr", "optim", low=0.0)
    from frcnn.lit.optim import OPTIMIZERS

    if cfg["optim"].get("name", "sgd") not in OPTIMIZERS:
        raise ConfigError(f"optim.name={cfg['optim'].get('name')!r}; allowed: {list(OPTIMIZERS)}")
    recipe = cfg["recipe"]["name"]
    if recipe not in cfg["schedule"]:
        raise ConfigError(f"recipe={recipe!r} has no lengths in schedule (has: {list(cfg['schedule'])})")
