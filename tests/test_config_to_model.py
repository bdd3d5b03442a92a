"""Config -> built model, for every model key (issue 34, item 1).

One Hydra composition sets every key of the ``rpn`` and ``roi_head`` groups to a legal value that is not
the default, the model is built the way training builds it (``recipes.model_config`` + ``build_model``),
and each built module must carry the value. The key list is read from the schema
(:data:`frcnn.config.schema.RPN` / :data:`~frcnn.config.schema.ROI_HEAD`): a new schema key needs an
entry in ``MODEL_VIEWS`` (or ``NOT_MODEL_ATTRIBUTES`` with its reason) or this test fails.

Values are chosen distinct from each other where two keys could be mixed up (rpn / roi_head
positive_fraction, fg_iou, nms_thresh, smooth_l1_beta; train / test top-N; the four target_stds).
"""

from __future__ import annotations

import math

import pytest
import torch

from frcnn.config.checks import validate_config
from frcnn.config.rules import Node
from frcnn.config.schema import ROI_HEAD, RPN
from frcnn.data.synthetic import CLASS_NAMES
from frcnn.engine.recipes import model_config
from frcnn.modeling.build import build_model

NON_DEFAULT = {  # dotted key -> a legal value other than the composed default (cpu_shapes preset)
    "rpn.anchor_scales": [24, 48, 96, 192],
    "rpn.anchor_ratios": [0.25, 1.0, 3.0],
    "rpn.lambda": 3.5,
    "rpn.reg_normalizer": "minibatch",
    "rpn.smooth_l1_beta": 0.5,
    "rpn.fg_iou": 0.65,
    "rpn.bg_iou": 0.25,
    "rpn.batch_size": 96,
    "rpn.positive_fraction": 0.375,
    "rpn.ignore_cross_boundary": False,
    "rpn.mid_channels": 24,
    "rpn.nms_thresh": 0.6,
    "rpn.min_size": 6.5,
    "rpn.train.pre_nms_top_n": 3000,
    "rpn.train.post_nms_top_n": 700,
    "rpn.test.pre_nms_top_n": 1500,
    "rpn.test.post_nms_top_n": 150,
    "rpn.test.ranking": "random",
    "rpn.test.use_regression": False,
    "rpn.test.use_nms": False,
    "roi_head.pool_type": "align",
    "roi_head.rois_per_minibatch": 96,  # a multiple of every stage's images_per_batch (4)
    "roi_head.positive_fraction": 0.3,
    "roi_head.fg_iou": 0.6,
    "roi_head.bg_iou_hi": 0.45,
    "roi_head.bg_iou_lo": 0.05,
    "roi_head.target_stds": [0.11, 0.12, 0.21, 0.22],
    "roi_head.add_gt_to_proposals": False,
    "roi_head.smooth_l1_beta": 0.75,
    "roi_head.score_thresh": 0.07,
    "roi_head.nms_thresh": 0.35,
    "roi_head.detections_per_image": 42,
    "roi_head.target_normalization": "empirical",  # legal with recipe=alternating (the default recipe)
}


def _reference_sides(model) -> tuple[list[float], list[float]]:
    """(scales sqrt(w h), ratios h / w) of the k reference anchors the RPN actually places."""
    ref = model.rpn.anchor_generator.reference  # [k, 4]
    w, h = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    scales = sorted({round(float(s), 3) for s in (w * h).sqrt()})
    ratios = sorted({round(float(r), 3) for r in h / w})
    return scales, ratios


def _empirical_std_rows(model) -> list[list[float]]:
    """The per-class std rows the empirical normalisation starts from (every row = roi_head.target_stds)."""
    rows = model.roi_head.target_stds.tolist()
    assert len(rows) == len(CLASS_NAMES) + 1
    return rows


# dotted key -> getters, each reading one place of the built model that must hold the key's value
MODEL_VIEWS = {
    "rpn.anchor_scales": [lambda m: _reference_sides(m)[0], lambda m: list(m.rpn.anchor_generator.scales_px)],
    "rpn.anchor_ratios": [lambda m: _reference_sides(m)[1], lambda m: list(m.rpn.anchor_generator.ratios)],
    "rpn.lambda": [lambda m: m.rpn.reg_lambda],
    "rpn.reg_normalizer": [lambda m: m.rpn.reg_normalizer],
    "rpn.smooth_l1_beta": [lambda m: m.rpn.smooth_l1_beta],
    "rpn.fg_iou": [lambda m: m.rpn.fg_iou_thresh],
    "rpn.bg_iou": [lambda m: m.rpn.bg_iou_thresh],
    "rpn.batch_size": [lambda m: m.rpn.batch_size_per_image],
    "rpn.positive_fraction": [lambda m: m.rpn.positive_fraction],
    "rpn.ignore_cross_boundary": [lambda m: m.rpn.ignore_cross_boundary],
    "rpn.mid_channels": [lambda m: m.rpn.head.conv.out_channels, lambda m: m.rpn.head.cls_logits.in_channels,
                         lambda m: m.rpn.head.bbox_deltas.in_channels],
    "rpn.nms_thresh": [lambda m: m.rpn.train_proposals.nms_thresh, lambda m: m.rpn.test_proposals.nms_thresh],
    "rpn.min_size": [lambda m: m.rpn.train_proposals.min_size_px, lambda m: m.rpn.test_proposals.min_size_px],
    "rpn.train.pre_nms_top_n": [lambda m: m.rpn.train_proposals.pre_nms_top_n],
    "rpn.train.post_nms_top_n": [lambda m: m.rpn.train_proposals.post_nms_top_n],
    "rpn.test.pre_nms_top_n": [lambda m: m.rpn.test_proposals.pre_nms_top_n],
    "rpn.test.post_nms_top_n": [lambda m: m.rpn.test_proposals.post_nms_top_n],
    "rpn.test.ranking": [lambda m: m.rpn.test_proposals.ranking],
    "rpn.test.use_regression": [lambda m: m.rpn.test_proposals.use_regression],
    "rpn.test.use_nms": [lambda m: m.rpn.test_proposals.use_nms],
    "roi_head.pool_type": [lambda m: m.roi_head.pool_type],
    "roi_head.rois_per_minibatch": [lambda m: m.roi_head.rois_per_minibatch],
    "roi_head.positive_fraction": [lambda m: m.roi_head.positive_fraction],
    "roi_head.fg_iou": [lambda m: m.roi_head.fg_iou_thresh],
    "roi_head.bg_iou_hi": [lambda m: m.roi_head.bg_iou_hi],
    "roi_head.bg_iou_lo": [lambda m: m.roi_head.bg_iou_lo],
    # empirical normalisation: every class's std row starts at target_stds (the fixed path: the next test)
    "roi_head.target_stds": [lambda m, i=i: _empirical_std_rows(m)[i] for i in range(len(CLASS_NAMES) + 1)],
    "roi_head.add_gt_to_proposals": [lambda m: m.roi_head.add_gt_to_proposals],
    "roi_head.smooth_l1_beta": [lambda m: m.roi_head.smooth_l1_beta],
    "roi_head.score_thresh": [lambda m: m.roi_head.score_thresh],
    "roi_head.nms_thresh": [lambda m: m.roi_head.nms_thresh],
    "roi_head.detections_per_image": [lambda m: m.roi_head.detections_per_image],
    "roi_head.target_normalization": [lambda m: m.roi_head.target_normalization,
                                      lambda m: "empirical" if hasattr(m.roi_head, "target_means") else "fixed"],
}

# Keys of the two groups that are legitimately not attributes of the built model: none today (every rpn /
# roi_head key is read by build_rpn / build_roi_head). A key used only by training code goes here with its reason.
NOT_MODEL_ATTRIBUTES: dict[str, str] = {}


def schema_keys(node: Node, prefix: str) -> set[str]:
    """Dotted leaf keys of a schema node, optional ones included (rpn.test.ranking, ...)."""
    keys = set()
    for name, rule in node.fields.items():
        keys |= schema_keys(rule, f"{prefix}.{name}") if isinstance(rule, Node) else {f"{prefix}.{name}"}
    return keys


def _lookup(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _same(actual, expected) -> bool:
    if actual is None or expected is None:
        return actual is expected
    if isinstance(expected, bool) or isinstance(expected, str):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, (int, float)):
        return not isinstance(actual, bool) and math.isclose(float(actual), float(expected), rel_tol=1e-6)
    return len(actual) == len(expected) and all(_same(a, e) for a, e in zip(actual, expected))


def test_every_model_key_of_the_schema_has_a_check():
    schema = schema_keys(RPN, "rpn") | schema_keys(ROI_HEAD, "roi_head")
    assert not set(MODEL_VIEWS) & set(NOT_MODEL_ATTRIBUTES)
    assert set(MODEL_VIEWS) | set(NOT_MODEL_ATTRIBUTES) == schema, (
        f"schema keys without a check: {sorted(schema - set(MODEL_VIEWS) - set(NOT_MODEL_ATTRIBUTES))}; "
        f"checks of keys not in the schema: {sorted((set(MODEL_VIEWS) | set(NOT_MODEL_ATTRIBUTES)) - schema)}")
    assert set(NON_DEFAULT) == set(MODEL_VIEWS)


def _override(key: str, value) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, list):
        text = "[" + ",".join(map(str, value)) + "]"
    else:
        text = str(value)
    return f"{key}={text}"


def test_every_rpn_and_roi_head_key_reaches_the_built_model(compose_cfg, tmp_path):
    default = compose_cfg(["backbone.weights=null"], tmp_path)
    overrides = [_override(key, value) for key, value in NON_DEFAULT.items()]
    # target_normalization is optional (absent from conf/roi_head): added with "+"
    overrides = [f"+{o}" if o.startswith("roi_head.target_normalization=") else o for o in overrides]
    cfg = compose_cfg(["backbone.weights=null", *overrides], tmp_path)
    validate_config(cfg)  # every value legal
    for key, value in NON_DEFAULT.items():
        assert _same(_lookup(cfg, key), value), (key, _lookup(cfg, key), value)
        default_value = _lookup(default, key) if key != "roi_head.target_normalization" else "fixed"
        assert not _same(default_value, value), f"{key}={value!r} is the default: it cannot show a key ignored"

    torch.manual_seed(0)
    model = build_model(model_config(cfg), num_classes=len(CLASS_NAMES))
    wrong = []
    for key, views in MODEL_VIEWS.items():
        for index, view in enumerate(views):
            actual = view(model)
            if not _same(actual, NON_DEFAULT[key]):
                wrong.append(f"{key}: config {NON_DEFAULT[key]!r}, built model (view {index}) {actual!r}")
    assert not wrong, "\n".join(wrong)


def test_fixed_target_stds_become_the_box_weights(compose_cfg, tmp_path):
    """roi_head.target_normalization=fixed (the default): targets are divided by target_stds, i.e. the
    box weights of encode / decode are 1 / std per coordinate."""
    stds = NON_DEFAULT["roi_head.target_stds"]
    cfg = compose_cfg(["backbone.weights=null", _override("roi_head.target_stds", stds)], tmp_path)
    model = build_model(model_config(cfg), num_classes=len(CLASS_NAMES))
    assert model.roi_head.target_normalization == "fixed"
    assert _same(list(model.roi_head.box_weights), [1.0 / s for s in stds])
