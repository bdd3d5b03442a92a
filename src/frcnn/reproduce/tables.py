"""The paper's ablation tables as data: conf/experiment/paper/ablation_<table>.yaml -> :class:`PaperTable`.

Each table names the metric its paper numbers are in, its default row (every other row's change
is measured against it), its settings and the paper's reading of it (``checks``). A setting is
either a *training* (Hydra overrides: ``rpn: {key: value}`` or ``overrides: [...]``) or a
*test-time* change (``test: {key: value}`` of ``rpn.test``) of the table's default model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO_ROOT / "conf"
TABLES = ("lambda", "anchors", "proposals", "training")  # reproduce.py <table>; `all` runs them in this order


@dataclass(frozen=True)
class QuickData:
    """What ``--quick`` trains on: built-in data with its CPU preset and schedule, the factor of the
    preset's anchors against the paper's (its network input's scale / 600), the data keys of its
    split sizes, and the quick run's defaults: joint mini-batches and evaluation images (None: the
    data's own split)."""

    name: str
    experiment: str
    schedule: str
    anchor_scale: float
    num_train_key: str
    num_val_key: str
    description: str
    steps: int = 200
    num_val: int | None = None


QUICK_DATA = {
    "voclike": QuickData("voclike", "cpu_voclike", "cpu_voclike", 0.4, "num_trainval", "num_test",
                         "built-in VOC-like data (VOC 2007's 20 classes and statistics, 240-px pictures: docs/VOCLIKE.md)",
                         # 200 mini-batches: the ImageNet Lite0 default reaches map_voc07 34.0 / 31.3 (seeds 0 / 1; 54.4
                         # at 400, which three seeds cannot afford in an hour on 2 cores); 250 of the 500 test
                         # pictures halve each evaluation (docs/REPRODUCING_CPU.md)
                         steps=200, num_val=250),
    "shapes": QuickData("shapes", "cpu_shapes", "cpu_shapes", 0.25, "num_train", "num_val",
                        "built-in shapes data (5 classes, 1-4 objects, 256-px images)"),
}
DEFAULT_QUICK_DATA = "voclike"


@dataclass(frozen=True)
class Setting:
    """One row: its training overrides (beyond the table's base), its test-time ``rpn.test``
    changes (None: evaluated as trained), and the paper's number with the row it compares to."""

    label: str
    training: tuple[str, ...] = ()
    test: Mapping[str, Any] | None = None
    paper: float | None = None
    paper_base: float | None = None  # the paper's number this row's paper change is taken against
    quick: bool = True  # run in --quick mode (false: a training with nothing of the paper's to compare to)


@dataclass(frozen=True)
class Check:
    """A claim of the paper about the table: ``better`` - ``worse`` > 0 over the seeds. Each side is
    a row label, or a pair of labels [a, b] meaning the change a - b."""

    claim: str
    better: tuple[str, ...]
    worse: tuple[str, ...]
    strict: bool = True


@dataclass(frozen=True)
class PaperTable:
    key: str
    name: str
    title: str
    metric: str
    default: str
    settings: tuple[Setting, ...]
    checks: tuple[Check, ...] = field(default_factory=tuple)

    def setting(self, label: str) -> Setting:
        for setting in self.settings:
            if setting.label == label:
                return setting
        raise KeyError(f"{self.name}: no setting {label!r}; settings: {[s.label for s in self.settings]}")

    @property
    def default_paper(self) -> float | None:
        return self.setting(self.default).paper


def table_path(table: str, config_dir: Path = CONFIG_DIR) -> Path:
    if table not in TABLES:
        raise ValueError(f"table={table!r}; allowed: {', '.join(TABLES)}")
    return config_dir / "experiment" / "paper" / f"ablation_{table}.yaml"


def load_table(table: str, config_dir: Path = CONFIG_DIR) -> dict:
    """The ``paper_table`` node of conf/experiment/paper/ablation_<table>.yaml, as a dict."""
    path = table_path(table, config_dir)
    node = OmegaConf.load(path).get("paper_table")
    if node is None:
        raise ValueError(f"{path}: no paper_table node")
    return OmegaConf.to_container(node, resolve=True)


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting_overrides(setting: Mapping[str, Any], anchor_scale: float | None = None) -> list[str]:
    """A YAML setting's training overrides: ``rpn.<key>=<value>`` for its ``rpn`` node (anchor
    scales x ``anchor_scale`` in quick mode: the built-in data's images are smaller than 600 px),
    then its ``overrides``."""
    overrides = []
    for key, value in setting.get("rpn", {}).items():
        if anchor_scale is not None and key == "anchor_scales":
            value = [v * anchor_scale for v in value]
        overrides.append(f"rpn.{key}={_format_value(value)}")
    return overrides + [str(o) for o in setting.get("overrides", [])]


def _side(value: Any, path: Path, labels: set[str]) -> tuple[str, ...]:
    side = (value,) if isinstance(value, str) else tuple(value)
    if len(side) not in (1, 2) or any(label not in labels for label in side):
        raise ValueError(f"{path}: checks: {value!r} must be a row label or a pair of them; rows: {sorted(labels)}")
    return side


def paper_table(table: str, quick: bool, config_dir: Path = CONFIG_DIR,
                quick_data: QuickData = QUICK_DATA[DEFAULT_QUICK_DATA]) -> PaperTable:
    """The table of conf/experiment/paper/ablation_<table>.yaml, its settings' overrides for
    ``quick`` mode on ``quick_data`` or the paper's scale."""
    path = table_path(table, config_dir)
    node = load_table(table, config_dir)
    settings = tuple(
        Setting(label=str(s["label"]), training=tuple(setting_overrides(s, quick_data.anchor_scale if quick else None)),
                test=None if s.get("test") is None else dict(s["test"]), paper=s.get("paper"),
                paper_base=s.get("paper_base"), quick=bool(s.get("quick", True)))
        for s in node["settings"])
    labels = {s.label for s in settings}
    if len(labels) != len(settings):
        raise ValueError(f"{path}: two settings share a label")
    default = str(node.get("default", ""))
    if default not in labels:
        raise ValueError(f"{path}: paper_table.default={default!r} is not a setting label; rows: {sorted(labels)}")
    checks = tuple(Check(str(c["claim"]), _side(c["better"], path, labels), _side(c["worse"], path, labels),
                         bool(c.get("strict", True))) for c in node.get("checks", []))
    return PaperTable(table, str(node["name"]), str(node["title"]), str(node["metric"]), default, settings, checks)


def slug(label: str) -> str:
    """A file name for a label: 'λ=0.1' -> 'lambda_0.1'."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", label.replace("λ", "lambda").replace("²", "")).strip("_")


def merge_overrides(*groups: Sequence[str]) -> list[str]:
    """Hydra overrides of several sources, a later one for the same key replacing an earlier one
    (``recipe=joint`` then ``recipe=alternating`` -> ``recipe=alternating``), order otherwise kept."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            key = override.split("=", 1)[0].lstrip("+~")
            merged.pop(key, None)
            merged[key] = override
    return list(merged.values())
