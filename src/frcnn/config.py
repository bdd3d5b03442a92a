"""Start-up checks of the composed config: every error names the key and what is allowed.

Two layers, both run before anything is built:
- :func:`frcnn.config_schema.check_schema`: every key known, present, of its type, in range
  (the schema is written with the rule types defined here: Number, Choice, ListOf, Node, ...);
- the rules between keys in :func:`validate_config` (IoU thresholds, the chosen recipe's schedule).
:func:`check_override_keys` gives command-line typos a "did you mean" before Hydra's own
"Key ... is not in struct" message.
"""

from __future__ import annotations

import difflib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config value that cannot work; raised before any training starts."""


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check the resolved config (a plain dict). Raises ConfigError naming the first bad key."""
    from frcnn.config_schema import check_schema

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
    from frcnn.backbones import check_weights_available  # lazy: torch only once the config is known good
    from frcnn.pretrained import WeightsUnavailableError

    backbone = cfg["backbone"]
    try:
        check_weights_available(str(backbone["name"]), backbone.get("weights"))
    except (WeightsUnavailableError, FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None


def _warn_unreached_lr_steps(node: Mapping[str, Any], key: str) -> None:
    """An lr step at or past max_steps never happens: legitimate for short test runs, so a warning."""
    if "max_steps" not in node:
        for name, stage in node.items():
            _warn_unreached_lr_steps(stage, f"{key}.{name}")
        return
    late = [s for s in node["lr_steps"] if s >= node["max_steps"]]
    if late:
        log.warning("%s.lr_steps %s are >= %s.max_steps=%s: the lr never drops there", key, late, key,
                    node["max_steps"])


# ----------------------------------------------------------------------------------------------
# Rule types of the schema (frcnn/config_schema.py): each check raises ConfigError naming the key
# ----------------------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    return type(value).__name__


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


class Rule(ABC):
    """One value's check; ``check`` raises ConfigError naming ``key``."""

    nullable: bool = False

    @abstractmethod
    def check(self, value: Any, key: str) -> None:
        """Raise ConfigError naming ``key`` when ``value`` breaks the rule."""

    @abstractmethod
    def describe(self) -> str:
        """The allowed values, for error messages and ``--help``."""


@dataclass
class Number(Rule):
    """int or float (``integer=True``: int only; bools are never numbers) within bounds."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low (else >= low)
    high_open: bool = False
    integer: bool = False
    nullable: bool = False
    also: tuple[Any, ...] = ()  # extra allowed values, e.g. -1 for "no limit"

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        bounds = self._bounds()
        return f"{kind}{' ' + bounds if bounds else ''}" + (" or null" if self.nullable else "")

    def _bounds(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return ""

    def check(self, value: Any, key: str) -> None:
        if value is None and self.nullable:
            return
        if value in self.also and not isinstance(value, bool):
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected {self.describe()}, got {_show(value)} ({_type_name(value)})")
        if self.integer and not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r} ({_type_name(value)})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            extra = f" (or {', '.join(map(str, self.also))})" if self.also else ""
            raise ConfigError(f"{key}={value} is out of range: must be {self._bounds()}{extra}")


@dataclass
class Bool(Rule):
    def describe(self) -> str:
        return "true or false"

    def check(self, value: Any, key: str) -> None:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_show(value)} ({_type_name(value)})")


@dataclass
class Text(Rule):
    nullable: bool = False

    def describe(self) -> str:
        return "a string" + (" or null" if self.nullable else "")

    def check(self, value: Any, key: str) -> None:
        if value is None and self.nullable:
            return
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected {self.describe()}, got {_show(value)} ({_type_name(value)})")


@dataclass
class Choice(Rule):
    """One of a fixed set; ``choices`` may be a callable read at check time (a code registry)."""

    choices: Sequence[Any] | Callable[[], Iterable[Any]]
    hint: str = ""  # e.g. "choose with backbone=<name>"

    def allowed(self) -> list[Any]:
        return list(self.choices() if callable(self.choices) else self.choices)

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.allowed()))

    def check(self, value: Any, key: str) -> None:
        allowed = self.allowed()
        if isinstance(value, bool) or value not in allowed:
            near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            suggestion = f"; did you mean {near[0]!r}?" if near else ""
            hint = f" ({self.hint})" if self.hint else ""
            raise ConfigError(f"{key}={_show(value)} is not allowed; allowed: "
                              f"{', '.join(map(str, allowed))}{suggestion}{hint}")


@dataclass
class ListOf(Rule):
    item: Rule
    min_len: int = 0
    length: int | None = None

    def describe(self) -> str:
        size = f" of exactly {self.length}" if self.length is not None else (
            f" of at least {self.min_len}" if self.min_len else "")
        return f"a list{size} ({self.item.describe()} each)"

    def check(self, value: Any, key: str) -> None:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected {self.describe()}, got {_show(value)} ({_type_name(value)})")
        if self.length is not None and len(value) != self.length:
            raise ConfigError(f"{key} must hold exactly {self.length} values, got {list(value)!r}")
        if len(value) < self.min_len:
            raise ConfigError(f"{key} must hold at least {self.min_len} value(s), got {list(value)!r}")
        for i, item in enumerate(value):
            self.item.check(item, f"{key}[{i}]")


@dataclass
class AnyOf(Rule):
    """The first alternative that accepts the value wins (e.g. devices: int | 'auto' | list)."""

    options: Sequence[Rule]

    def describe(self) -> str:
        return " or ".join(o.describe() for o in self.options)

    def check(self, value: Any, key: str) -> None:
        for option in self.options:
            try:
                option.check(value, key)
                return
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {self.describe()}, got {_show(value)} ({_type_name(value)})")


@dataclass
class Free(Rule):
    """Anything (documentation-only keys such as a preset's paper numbers)."""

    def describe(self) -> str:
        return "any value"

    def check(self, value: Any, key: str) -> None:
        return


@dataclass
class Node(Rule):
    """A mapping with known keys. ``open``: other keys are allowed and left to the code that
    reads them (the dataset builder for ``data``). ``optional``: keys that may be absent."""

    fields: Mapping[str, Rule]
    optional: frozenset[str] = field(default_factory=frozenset)
    open: bool = False
    nullable: bool = False

    def describe(self) -> str:
        return "a mapping with keys " + ", ".join(self.fields)

    def check(self, value: Any, key: str) -> None:
        if value is None and self.nullable:
            return
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected {self.describe()}, got {_show(value)} ({_type_name(value)})")
        prefix = f"{key}." if key else ""
        if not self.open:
            for name in value:
                if name not in self.fields:
                    raise ConfigError(unknown_key_message(f"{prefix}{name}", list(self.fields), prefix))
        for name, rule in self.fields.items():
            if name not in value:
                if name in self.optional:
                    continue
                raise ConfigError(f"{prefix}{name}: missing; expected {rule.describe()} "
                                  f"(the config group file or an experiment preset must set it)")
            rule.check(value[name], f"{prefix}{name}")


@dataclass
class Variant(Rule):
    """A mapping whose schema depends on its ``name`` (logger=wandb|csv|..., recipe=...)."""

    variants: Mapping[str, Node]
    group: str  # the config group that picks the variant, for the message

    def describe(self) -> str:
        return f"a {self.group} config (name: {', '.join(self.variants)})"

    def check(self, value: Any, key: str) -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected {self.describe()}, got {_show(value)}")
        Choice(list(self.variants), hint=f"choose with {self.group}=<name>").check(value.get("name"), f"{key}.name")
        self.variants[value["name"]].check(value, key)


RENAMED_KEYS = {  # old key -> what to write now
    "roi_head.batch_size": "roi_head.rois_per_minibatch, the RoIs of a whole mini-batch (not per image): "
                           "128 per image at images_per_batch=2 is roi_head.rois_per_minibatch=256",
}


def unknown_key_message(full_key: str, known: Sequence[str], prefix: str = "") -> str:
    """'rpn.lamda: unknown key; did you mean rpn.lambda?' with the keys that do exist
    ('... renamed to ...' for a key of an earlier version)."""
    if full_key in RENAMED_KEYS:
        return f"{full_key}: renamed to {RENAMED_KEYS[full_key]}"
    name = full_key[len(prefix):]
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    guess = f"; did you mean {prefix}{near[0]}?" if near else ""
    where = prefix.rstrip(".") or "the top level"
    return f"{full_key}: unknown key{guess} (keys of {where}: {', '.join(sorted(known))})"


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
