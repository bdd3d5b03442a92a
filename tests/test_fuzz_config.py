"""Config fuzzing: random command-line overrides of wrong types, out-of-range values and unknown
keys, drawn from the schema (frcnn/config/schema.py), end in one message that names the key --
never in another exception or a traceback.

Three depths, cheapest first:
* 400 seeded cases in process: Hydra's override parser gives the value, ``check_override_keys``
  (preflight's key check) and ``validate_config`` (run_job's check) judge the composed config
  with the override applied;
* 6 drawn the same way (and one known case) through ``preflight`` + a real Hydra composition + ``validate_config``;
* 4 real ``python train.py <override>`` runs: exit status 2, ``Config error: <key>...`` on stderr.
"""

from __future__ import annotations

import copy
import random
import re
from collections import Counter
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from frcnn.cli.train import preflight
from frcnn.config.checks import check_override_keys, validate_config
from frcnn.config.rules import AnyOf, Bool, Choice, Free, ListOf, Node, Number, OrAuto, OrNull, Rule, Text, Variant
from frcnn.config.schema import TRAIN_CONFIG, AugmentTransforms
from frcnn.errors import ConfigError
from tests.cli_runner import run_script
from tests.conftest import REPO_ROOT, compose_config

NOT_FROM_COMMAND_LINE = {"run_dir"}  # set by Hydra (hydra.run.dir)
PARSER = OverridesParser.create()


def schema_leaves(rule: Rule, value: Any, key: str = "") -> list[tuple[str, Rule]]:
    """(dotted key, rule) of every value the schema checks in ``value`` (the composed config)."""
    if isinstance(rule, Variant):
        rule = rule.variants[value["name"]]
    if isinstance(rule, Node) and isinstance(value, dict):
        leaves = []
        for name, child in rule.fields.items():
            if name in value and f"{key}{name}" not in NOT_FROM_COMMAND_LINE:
                leaves += schema_leaves(child, value[name], f"{key}{name}.")
        return leaves + [(key.rstrip("."), rule)] if key else leaves
    return [] if isinstance(rule, Free) else [(key.rstrip("."), rule)]


def _number_text(value: float, integer: bool) -> str:
    return str(int(value)) if integer else repr(float(value))


def bad_values(rule: Rule) -> list[tuple[str, str]]:
    """(kind, override value text) that ``rule`` must refuse."""
    if isinstance(rule, Number):
        bad = [("wrong_type", "abc"), ("wrong_type", "'1'"), ("wrong_type", "[1,2]"), ("wrong_type", "{a:1}"),
               ("wrong_type", "true"), ("range", "nan"), ("range", "inf"), ("range", "-inf")]
        if not rule.nullable:
            bad.append(("wrong_type", "null"))
        if rule.integer:
            bad.append(("wrong_type", "2.5"))
        if rule.low is not None:
            low = rule.low if rule.low_open else rule.low - 1
            if low not in rule.also:
                bad.append(("range", _number_text(low, rule.integer)))
            bad.append(("range", _number_text(-1e9, rule.integer)))
        if rule.high is not None:
            bad.append(("range", _number_text(rule.high if rule.high_open else rule.high + 1, rule.integer)))
            bad.append(("range", _number_text(1e9, rule.integer)))
        return bad
    if isinstance(rule, Bool):
        return [("wrong_type", v) for v in ("maybe", "1", "'true'", "[]", "null", "{a:1}")]
    if isinstance(rule, Choice):
        return [("wrong_value", "no_such_option"), ("wrong_type", "42"), ("wrong_type", "[a]"),
                ("wrong_type", "null"), ("wrong_type", "true")]
    if isinstance(rule, ListOf):
        bad = [("wrong_type", "5"), ("wrong_type", "abc"), ("wrong_type", "{a:1}"), ("wrong_type", "[[1]]")]
        bad += [(kind, f"[{text}]") for kind, text in bad_values(rule.item) if not text.startswith(("[", "{"))]
        if rule.min_len or rule.length:
            bad.append(("range", "[]"))
        if rule.length:
            bad.append(("range", "[1]"))
        return bad
    if isinstance(rule, Text):
        return [("wrong_type", "5"), ("wrong_type", "[a]"), ("wrong_type", "{a:1}")] + (
            [] if rule.nullable else [("wrong_type", "null")])
    if isinstance(rule, OrAuto):  # 'auto' is the one extra value: everything the inner rule refuses stays refused
        return [(kind, text) for kind, text in bad_values(rule.rule) if text != "auto"] + [("wrong_type", "autox")]
    if isinstance(rule, AugmentTransforms):  # albumentations transforms by _target_ (frcnn.data.augment)
        return [("wrong_type", "5"), ("wrong_type", "[5]"), ("wrong_type", "[{p: 0.5}]"),
                ("wrong_type", "[{_target_: os.system}]"), ("range", "[{_target_: albumentations.VerticalFlip, p: 2}]")]
    if isinstance(rule, OrNull):  # null switches the feature off: everything else the inner rule refuses stays refused
        return [(kind, text) for kind, text in bad_values(rule.rule) if text != "null"]
    if isinstance(rule, AnyOf):
        return [("wrong_type", "abc"), ("wrong_type", "{a:1}"), ("range", "-2"), ("wrong_type", "2.5")]
    if isinstance(rule, Node):
        return [("wrong_type", "5"), ("wrong_type", "abc"), ("wrong_type", "[1]"), ("wrong_type", "null")]
    raise AssertionError(f"no bad values for {rule!r}")


def _typo(name: str, rng: random.Random) -> str:
    if len(name) > 3 and rng.random() < 0.5:
        i = rng.randrange(len(name) - 1)
        typo = name[:i] + name[i + 1] + name[i] + name[i + 2:]  # two letters swapped
        if typo != name:
            return typo
    return name + rng.choice(("s", "x", "_size", "2"))


def draw_case(rng: random.Random, leaves: list[tuple[str, Rule]]) -> tuple[str, str, str]:
    """(kind, override text, the key its message must name)."""
    key, rule = rng.choice(leaves)
    if rng.random() < 0.2:  # an unknown key: a typo of a real one, or a new key added with "+"
        parent, _, name = key.rpartition(".")
        if rng.random() < 0.5 or not parent or parent == "data":  # data is open: its extra keys are the builder's
            typo = f"{parent + '.' if parent else ''}{_typo(name, rng)}"
            return "unknown_key", f"{typo}=1", typo
        added = f"{parent}.{_typo(name, rng)}"
        return "unknown_key", f"+{added}=1", added
    kind, text = rng.choice(bad_values(rule))
    return kind, f"{key}={text}", key


def set_dotted(cfg: dict, dotted: str, value: Any) -> None:
    """``cfg[a][b][c] = value`` for ``dotted`` "a.b.c" (the config tests' one setter)."""
    *parents, last = dotted.split(".")
    for part in parents:
        cfg = cfg[part]
    cfg[last] = value


def judge_in_process(base: dict, text: str) -> str | None:
    """The message the command line would stop with (key check, then schema), or None."""
    override = PARSER.parse_override(text)
    key = override.key_or_group
    try:
        if not override.is_add():
            check_override_keys(base, [key])
        cfg = copy.deepcopy(base)
        set_dotted(cfg, key, override.value())
        validate_config(cfg)
    except ConfigError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory):
    return compose_config([], tmp_path_factory.mktemp("run"))


def _names_key(message: str, key: str) -> bool:
    return re.search(rf"(^|[^\w.]){re.escape(key)}($|[^\w])", message) is not None


def test_random_bad_overrides_are_refused_naming_the_key(base_cfg):
    leaves = schema_leaves(TRAIN_CONFIG, base_cfg)
    assert len(leaves) > 80  # the whole schema is drawn from
    rng = random.Random(0)
    counts: Counter = Counter()
    failures = []
    for _ in range(400):
        kind, text, key = draw_case(rng, leaves)
        try:
            message = judge_in_process(base_cfg, text)
        except Exception as exc:  # noqa: BLE001 - anything but ConfigError is a failure
            failures.append(f"{text}: {type(exc).__name__}: {exc}")
            continue
        counts[kind] += 1
        if message is None or not _names_key(message, key):
            failures.append(f"{text}: {message!r} does not name {key}")
    print("\nconfig fuzz cases per kind:", dict(counts))
    assert not failures, "\n".join(failures[:10])
    assert set(counts) == {"wrong_type", "wrong_value", "range", "unknown_key"}


def test_bad_overrides_through_preflight_and_hydra_name_the_key(base_cfg, tmp_path):
    leaves = schema_leaves(TRAIN_CONFIG, base_cfg)
    rng = random.Random(1)
    cases = [draw_case(rng, leaves) for _ in range(6)]
    cases.append(("wrong_type", "rpn.anchor_scales={a:1}", "rpn.anchor_scales"))  # a mapping where a list is
    for _kind, text, key in cases:
        message = preflight([text], REPO_ROOT / "conf")
        if message is None:
            with pytest.raises(ConfigError) as info:
                validate_config(compose_config([text], tmp_path))
            message = str(info.value)
        assert _names_key(message, key), (text, message)


@pytest.mark.slow
@pytest.mark.parametrize("override, key", [
    ("rpn.anchor_scales={a:1}", "rpn.anchor_scales"),  # refused by preflight (Hydra could not merge it)
    ("roi_head.batch_size=abc", "roi_head.batch_size"),  # refused by the schema check in the Hydra task
    ("rpn=nope", "rpn"),  # a config group option that does not exist
    ("rpn=5", "rpn"),  # ... (Hydra itself ended this one in a traceback)
])
def test_train_py_exits_2_naming_the_key(override, key, tmp_path):
    result = run_script(["train.py", override, f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("Config error: ") and _names_key(result.stderr, key), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
