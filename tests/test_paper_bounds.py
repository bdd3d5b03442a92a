"""Bounds from the paper, not from the schema (issue 34, item 3).

``PAPER`` below is written from the papers (Faster R-CNN §3.1-§3.3, Fast R-CNN §2.3-§2.4), not read from
frcnn/config/schema.py: for each numeric key, the range its meaning allows, the values just outside it
(which the start-up check must refuse with a message that names the key) and the legal edge values
(which it must accept). tests/test_fuzz_config.py draws its "out of range" values from the schema
itself, so a wrong schema bound would go unseen there; the last tests hold those fuzzer values
against this list: each must be illegal by the paper, and the fuzzer's nearest bad value on each side
must sit at the paper's bound.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from frcnn.config.checks import validate_config
from frcnn.config.rules import ListOf, Number, OrAuto
from frcnn.config.schema import TRAIN_CONFIG, check_schema
from frcnn.errors import ConfigError
from tests.conftest import compose_config
from tests.test_fuzz_config import bad_values, schema_leaves, set_dotted


@dataclass(frozen=True)
class Range:
    """A number's legal values: [low, high] (``*_open``: the bound itself excluded), integers only with
    ``integer``, plus the extra values ``also``; ``list_len`` / ``min_len``: a list of such numbers."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    also: tuple = ()
    nullable: bool = False
    auto: bool = False
    list_len: int | None = None
    min_len: int | None = None

    @property
    def is_list(self) -> bool:
        return self.list_len is not None or self.min_len is not None

    def number_ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if value in self.also:
            return True
        if not math.isfinite(value) or (self.integer and not isinstance(value, int)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def legal(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if value == "auto":
            return self.auto
        if not self.is_list:
            return self.number_ok(value)
        if not isinstance(value, list) or (self.list_len is not None and len(value) != self.list_len):
            return False
        return len(value) >= (self.min_len or 0) and all(self.number_ok(v) for v in value)


FRACTION = Range(0.0, 1.0, low_open=True)  # a share of a mini-batch: some, at most all
IOU = Range(0.0, 1.0)  # intersection over union
PROBABILITY = Range(0.0, 1.0)
COUNT = Range(1, integer=True)  # how many (RoIs, anchors, detections, proposals)
TOP_N = Range(1, integer=True, also=(-1,))  # -1: no cut
POSITIVE = Range(0.0, low_open=True)
NON_NEGATIVE = Range(0.0)

# key -> (legal range by the paper, values it must refuse, legal edge values it must accept)
PAPER: dict[str, tuple[Range, list, list]] = {
    # §3.1.1: anchors are boxes of side s and aspect ratio h / w: both > 0, at least one of each (k >= 1)
    "rpn.anchor_scales": (Range(0.0, low_open=True, auto=True, min_len=1), [[], [0], [-16], [32, 0]], [[1e-3], "auto"]),
    "rpn.anchor_ratios": (Range(0.0, low_open=True, min_len=1), [[], [0], [-0.5], [0.5, 0.0]], [[1e-3], [1.0]]),
    # eq. 1: lambda weighs L_reg; 0 (no box regression) is Table 9's end, a negative weight rewards error
    "rpn.lambda": (NON_NEGATIVE, [-0.1, -10], [0, 0.0, 100]),
    # smooth-L1 (Fast R-CNN eq. 3) has its quadratic part on |x| < beta, divided by beta: beta > 0
    "rpn.smooth_l1_beta": (POSITIVE, [0, 0.0, -1.0], [1e-3, 1.0]),
    # §3.1.2: IoU thresholds of the labels
    "rpn.fg_iou": (IOU, [-0.1, 1.01, 1.5], [1.0]),
    "rpn.bg_iou": (IOU, [-0.1, 1.01], [0.0]),
    # §3.1.3: 256 anchors per image, up to 1:1 positive
    "rpn.batch_size": (COUNT, [0, -256, 2.5], [1]),
    "rpn.positive_fraction": (FRACTION, [0, 0.0, -0.5, 1.01, 1.5, 2, 2.0], [1.0, 1e-3]),
    # the 3 x 3 conv's width (256 ZF, 512 VGG): at least one channel; null = the backbone's
    "rpn.mid_channels": (Range(1, integer=True, nullable=True), [0, -1, 2.5], [1, None]),
    # NMS IoU threshold (§3.3: 0.7)
    "rpn.nms_thresh": (IOU, [-0.1, 1.01, 7], [0.0, 1.0]),
    # §3.3 / the authors' proposal layer: boxes under 16 px dropped; 0 keeps every box; auto: fitted to the data
    "rpn.min_size": (Range(0.0, auto=True), [-1, -0.5], [0, 0.0, "auto"]),
    # Table 2 / §3.3: 12000 -> NMS -> 2000 in training, 6000 -> 300 at test (-1: no pre-NMS cut)
    "rpn.train.pre_nms_top_n": (TOP_N, [0, -2, 2.5], [-1]),
    "rpn.train.post_nms_top_n": (COUNT, [0, -1, 2.5], [1]),
    "rpn.test.pre_nms_top_n": (TOP_N, [0, -2, 2.5], [-1]),
    "rpn.test.post_nms_top_n": (COUNT, [0, -1, 2.5], [1]),
    # Fast R-CNN §2.3: R = 128 RoIs, 25 % foreground (IoU >= 0.5), background IoU in [0.1, 0.5)
    "roi_head.rois_per_minibatch": (COUNT, [0, -128, 2.5], [4]),  # a multiple of images_per_batch (4)
    "roi_head.positive_fraction": (FRACTION, [0, 0.0, -0.25, 1.01, 2], [1.0, 1e-3]),
    "roi_head.fg_iou": (IOU, [-0.1, 1.01], [1.0]),
    "roi_head.bg_iou_hi": (IOU, [-0.1, 1.01], [0.0]),
    "roi_head.bg_iou_lo": (IOU, [-0.1, 1.01], [0.0]),
    # the regression targets are divided by these standard deviations: 4 of them, each > 0
    "roi_head.target_stds": (Range(0.0, low_open=True, list_len=4), [[0.0, 0.1, 0.2, 0.2], [-0.1, 0.1, 0.2, 0.2],
                                                                     [0.1, 0.1, 0.2], [0.1] * 5], [[1e-3] * 4]),
    "roi_head.smooth_l1_beta": (POSITIVE, [0, -1.0], [1e-3]),
    # Fast R-CNN §2.4 / test: a class probability threshold, per-class NMS at 0.3, up to 100 detections
    "roi_head.score_thresh": (PROBABILITY, [-0.01, 1.01], [0.0, 1.0]),
    "roi_head.nms_thresh": (IOU, [-0.1, 1.01], [0.0, 1.0]),
    "roi_head.detections_per_image": (COUNT, [0, -1, 2.5], [1]),
    # the 4-step recipe's proposal files (§3.2: 2000 proposals after NMS 0.7)
    "recipe.proposals.pre_nms_top_n": (TOP_N, [0, -2, 2.5], [-1]),
    "recipe.proposals.post_nms_top_n": (COUNT, [0, -1, 2.5], [1]),
    "recipe.proposals.nms_thresh": (IOU, [-0.1, 1.01], [0.0, 1.0]),
    # §3.3: images rescaled so their shorter side is s = 600 px, the longer at most 1000; flipped with prob. 0.5
    "data.scales": (Range(1, integer=True, min_len=1), [[], [0], [-600], [600.5]], [[1]]),
    "data.max_size": (COUNT, [0, -1000, 999.5], [1]),
    "data.hflip_prob": (PROBABILITY, [-0.5, 1.5], [0.0, 1.0]),
    # §3.3: SGD, lr 1e-3 then 1e-4 (x gamma 0.1), momentum 0.9, weight decay 5e-4
    "optim.lr": (POSITIVE, [0, -1e-3], [1e-9]),
    "optim.momentum": (Range(0.0, 1.0, high_open=True), [-0.1, 1.0, 1.5], [0.0, 0.99]),
    "optim.weight_decay": (NON_NEGATIVE, [-5e-4], [0.0]),
    "optim.lr_gamma": (FRACTION, [0, -0.1, 1.5], [1.0]),
}
# groups whose every numeric key must have a paper range above (a new key fails the coverage test)
COVERED_GROUPS = ("rpn.", "roi_head.", "recipe.proposals.")


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory):
    cfg = compose_config(["backbone.weights=null"], tmp_path_factory.mktemp("run"))
    validate_config(cfg)
    return cfg


@pytest.fixture(scope="module")
def schema_rules(base_cfg):
    return dict(schema_leaves(TRAIN_CONFIG, base_cfg))


def _numeric(rule) -> bool:
    rule = rule.rule if isinstance(rule, OrAuto) else rule
    return isinstance(rule, Number) or (isinstance(rule, ListOf) and isinstance(rule.item, Number))


def test_the_paper_list_covers_every_numeric_key_of_the_model_groups(schema_rules):
    numeric = {key for key, rule in schema_rules.items() if key.startswith(COVERED_GROUPS) and _numeric(rule)}
    covered = {key for key in PAPER if key.startswith(COVERED_GROUPS)}
    assert numeric == covered, f"without a paper range: {sorted(numeric - covered)}; not in the schema: " \
                               f"{sorted(covered - numeric)}"
    assert set(PAPER) <= set(schema_rules)


def test_the_paper_list_agrees_with_itself():
    for key, (paper, bad, good) in PAPER.items():
        assert not [v for v in bad if paper.legal(v)], key
        assert all(paper.legal(v) for v in good), key


def _message_names(message: str, key: str) -> bool:
    """The schema's messages start with the key: 'rpn.fg_iou=1.5 is out of range ...', 'rpn.batch_size: expected
    an integer ...', 'rpn.anchor_ratios[0]=0 is ...' (a rule between two keys, 'rpn.fg_iou (0.7) must be >= rpn.bg_iou
    (1.01)', names the other key first and does not count: the value itself must be refused)."""
    return message.startswith(key) and message[len(key):][:1] in ("=", ":", "[", " ")


@pytest.mark.parametrize("key, value", [(key, value) for key, (_, bad, _) in PAPER.items() for value in bad])
def test_values_outside_the_papers_range_are_refused_naming_the_key(base_cfg, key, value):
    cfg = copy.deepcopy(base_cfg)
    set_dotted(cfg, key, value)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert _message_names(str(info.value), key), str(info.value)


@pytest.mark.parametrize("key, value", [(key, value) for key, (_, _, good) in PAPER.items() for value in good])
def test_the_papers_edge_values_pass_the_schema(base_cfg, key, value):
    """Legal by the paper, so the schema must take them (rules between keys, e.g. fg_iou >= bg_iou, are
    validate_config's and not asked here)."""
    cfg = copy.deepcopy(base_cfg)
    set_dotted(cfg, key, value)
    check_schema(cfg)


# ---------------------------------------------------------------------------------- the fuzzer's bad values
PARSER = OverridesParser.create()


def fuzzer_range_values(rule) -> list:
    """The values tests/test_fuzz_config.py uses as "out of range" for a key with ``rule``."""
    return [PARSER.parse_override(f"k={text}").value() for kind, text in bad_values(rule) if kind == "range"]


def _items(value) -> list:
    return value if isinstance(value, list) else [value]


def _expected_edges(paper: Range) -> list[float]:
    """The nearest bad numbers on each finite side of the paper's range, as the fuzzer writes them: an
    open bound itself, a closed bound -1 / +1 (unless that value is legal, as -1 for a top-N)."""
    edges = []
    if paper.low is not None:
        edges.append(paper.low if paper.low_open else paper.low - 1)
    if paper.high is not None:
        edges.append(paper.high if paper.high_open else paper.high + 1)
    return [e for e in edges if e not in paper.also]


def test_the_fuzzers_out_of_range_values_are_out_of_the_papers_range(schema_rules):
    wrong = []
    for key, (paper, _, _) in PAPER.items():
        values = fuzzer_range_values(schema_rules[key])
        assert values, f"the fuzzer has no out-of-range values for {key}"
        wrong += [f"{key}={v!r}" for v in values if paper.legal(v)]
    assert not wrong, f"the fuzzer calls values bad that the paper allows: {wrong}"


def test_the_fuzzer_probes_each_bound_of_the_paper(schema_rules):
    """E.g. positive_fraction in (0, 1]: the fuzzer must try 0 and 2 (1 + 1): a schema that took fractions
    up to 2 would have the fuzzer try 3 instead, and this test says so."""
    missing = []
    for key, (paper, _, _) in PAPER.items():
        tried = {float(x) for v in fuzzer_range_values(schema_rules[key]) for x in _items(v)
                 if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)}
        missing += [f"{key}: {edge:g} (tried {sorted(tried)})" for edge in _expected_edges(paper) if edge not in tried]
    assert not missing, "the fuzzer does not try the paper's bounds: " + "; ".join(missing)
