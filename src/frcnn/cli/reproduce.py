"""`python scripts/reproduce.py lambda|anchors|schemes`: run a paper ablation table and print the
measured numbers beside the paper's (``schemes``: the three training schemes of §3.2, in
:mod:`frcnn.cli.schemes`).

The tables live in conf/experiment/paper/ablation_<table>.yaml (``paper_table``: the
paper's table name, the metric, and per setting its RPN values and the paper's mAP). Each
setting runs the full recipe in-process in ``<out>/<i>_<setting>/`` (a finished setting is
not rerun: its metrics.json is read back), then the table is printed and written as
``<out>/reproduce_<table>.md`` / ``.csv``.

``--quick`` runs on the built-in shapes data instead (experiment=cpu_shapes, joint recipe,
``--steps`` mini-batches, a small val set), with anchor scales divided by 4 as the CPU
preset does (256 px images instead of 600): a check that the pipeline and the table work on
a laptop in minutes; its absolute numbers are not comparable with the paper's.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO_ROOT / "conf"
TABLES = ("lambda", "anchors")
QUICK_ANCHOR_SCALE = 0.25  # conf/experiment/cpu_shapes.yaml: [32, 64, 128] for the paper's [128, 256, 512]


def load_table(table: str, config_dir: Path = CONFIG_DIR) -> dict:
    """The ``paper_table`` node of conf/experiment/paper/ablation_<table>.yaml, as a dict."""
    if table not in TABLES:
        raise ValueError(f"table={table!r}; allowed: {', '.join(TABLES)}")
    path = config_dir / "experiment" / "paper" / f"ablation_{table}.yaml"
    node = OmegaConf.load(path).get("paper_table")
    if node is None:
        raise ValueError(f"{path}: no paper_table node")
    return OmegaConf.to_container(node, resolve=True)


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting_overrides(setting: Mapping[str, Any], quick: bool) -> list[str]:
    """``rpn.<key>=<value>`` overrides of one setting (anchor scales scaled down in quick mode)."""
    overrides = []
    for key, value in setting.get("rpn", {}).items():
        if quick and key == "anchor_scales":
            value = [v * QUICK_ANCHOR_SCALE for v in value]
        overrides.append(f"rpn.{key}={_format_value(value)}")
    return overrides


def quick_overrides(steps: int, num_train: int, num_val: int) -> list[str]:
    """Built-in data, joint recipe, ``steps`` mini-batches with the lr drop at 80% (as the CPU schedule)."""
    return ["experiment=cpu_shapes", "recipe=joint", "recipe.val_every_n_epochs=null",
            f"schedule.joint.max_steps={steps}", f"schedule.joint.lr_steps=[{max(1, int(0.8 * steps))}]",
            f"data.num_train={num_train}", f"data.num_val={num_val}", "logger=csv"]


def slug(label: str) -> str:
    """A directory name for a setting label: 'λ=0.1' -> 'lambda_0.1'."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", label.replace("λ", "lambda").replace("²", "")).strip("_")


def compose(overrides: Sequence[str], run_dir: Path) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = hydra_compose("train", overrides=[*overrides, f"run_dir={run_dir}"])
    return OmegaConf.to_container(cfg, resolve=True)


def run_or_record_failure(overrides: Sequence[str], run_dir: Path) -> tuple[dict | None, str]:
    """(metrics, "ok") of :func:`run_setting`, or (None, "failed: <error>") printed to stderr: one
    failed row of a table must not hide the others."""
    try:
        return run_setting(overrides, run_dir), "ok"
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's status
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        status = f"failed: {type(exc).__name__}: {first_line}"[:200]
        print(f"  {status}", file=sys.stderr, flush=True)
        return None, status


def run_setting(overrides: Sequence[str], run_dir: Path) -> dict:
    """metrics of one setting: read back when its run finished before, else trained now."""
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        return json.loads(metrics_path.read_text())
    from frcnn.config import validate_config
    from frcnn.recipes import run_recipe

    cfg = compose(overrides, run_dir)
    validate_config(cfg)
    return run_recipe(cfg, run_dir)


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}"


def format_tables(table: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], note: str) -> tuple[str, str, str]:
    """(plain text, markdown, csv) of the comparison: setting, paper (%), measured (%), difference."""
    metric = table["metric"]
    header = ["setting", f"paper {metric} (%)", f"measured {metric} (%)", "measured - paper", "status"]
    body = []
    for row in rows:
        measured = None if row["metrics"] is None else 100.0 * row["metrics"].get(metric, float("nan"))
        diff = measured - row["paper"] if measured is not None and row["paper"] is not None else None
        body.append([row["label"], _pct(row["paper"]), _pct(measured),
                     "-" if diff is None else f"{diff:+.1f}", row["status"]])
    title = f"{table['name']}: {table['title']}"
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    text = "\n".join([title, note, line(header), "-" * (sum(widths) + 2 * (len(widths) - 1)), *map(line, body)])
    md = "\n".join([f"# {title}", "", f"_{note}_", "", "| " + " | ".join(header) + " |",
                    "|:---|---:|---:|---:|:---|", *("| " + " | ".join(r) + " |" for r in body)]) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["setting", "paper", "measured", "metric", "status", "run_dir"])
    for row, cells in zip(rows, body):
        writer.writerow([row["label"], row["paper"] if row["paper"] is not None else "",
                         cells[2] if cells[2] != "-" else "", metric, row["status"], row["run_dir"]])
    return text, md, buffer.getvalue()


def reproduce(table_name: str, out_dir: Path, quick: bool = False, steps: int = 100, num_train: int = 64,
              num_val: int = 16, only: Sequence[str] = (), extra_overrides: Sequence[str] = ()) -> list[dict]:
    """Run the settings of one table (all, or those whose index or label is in ``only``);
    print and write the comparison; return one row per setting."""
    table = load_table(table_name)
    settings = list(enumerate(table["settings"]))
    if only:
        wanted = set(only)
        settings = [(i, s) for i, s in settings if str(i) in wanted or s["label"] in wanted]
        if not settings:
            raise ValueError(f"--only {list(only)} matches no setting of {table['name']}; settings: "
                             + ", ".join(f"{i}: {s['label']}" for i, s in enumerate(table["settings"])))
    base = quick_overrides(steps, num_train, num_val) if quick else [f"experiment=paper/ablation_{table_name}"]
    rows = []
    for i, setting in settings:
        run_dir = out_dir / f"{i}_{slug(setting['label'])}"
        overrides = [*base, *setting_overrides(setting, quick), *extra_overrides]
        print(f"[{table['name']}] {setting['label']}: {' '.join(overrides)} -> {run_dir}", flush=True)
        start = time.perf_counter()
        metrics, status = run_or_record_failure(overrides, run_dir)
        rows.append({"label": setting["label"], "paper": setting.get("paper"), "metrics": metrics,
                     "status": status, "run_dir": str(run_dir), "seconds": time.perf_counter() - start})
    note = ("quick mode: built-in shapes data, joint recipe, "
            f"{steps} mini-batches, anchors x{QUICK_ANCHOR_SCALE:g}; not comparable with the paper's absolute numbers"
            if quick else "measured with the paper's settings (experiment/paper/ablation_" + table_name + ")")
    text, md, csv_text = format_tables(table, rows, note)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"reproduce_{table_name}.md").write_text(md)
    (out_dir / f"reproduce_{table_name}.csv").write_text(csv_text)
    print(f"\n{text}\nwritten to {out_dir / f'reproduce_{table_name}.md'} and .csv", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reproduce.py", description="Run a paper ablation table (Faster R-CNN) and print it beside the paper's.")
    parser.add_argument("table", choices=(*TABLES, "schemes"),
                        help="lambda: Table 9 (λ of eq. 1); anchors: Table 8 (anchor settings); schemes: alternating, "
                             "approximate joint and non-approximate joint training (§3.2) side by side")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every setting (e.g. data.root=...)")
    parser.add_argument("--quick", action="store_true", help="built-in data, joint recipe, short runs (CPU, minutes)")
    parser.add_argument("--steps", type=int, default=100, help="mini-batches per setting in --quick mode (default 100)")
    parser.add_argument("--num-train", type=int, default=64, help="--quick: training images (default 64)")
    parser.add_argument("--num-val", type=int, default=16, help="--quick: validation images (default 16)")
    parser.add_argument("--only", nargs="+", default=(),
                        help="setting (or scheme) indices or labels to run (default: all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output dir (default outputs/reproduce/<table>[_quick]); rerun it to resume")
    args = parser.parse_args(argv)
    out = args.out or REPO_ROOT / "outputs" / "reproduce" / (args.table + ("_quick" if args.quick else ""))
    if args.table == "schemes":
        from frcnn.cli.schemes import reproduce_schemes

        rows = reproduce_schemes(out, quick=args.quick, steps=args.steps, num_train=args.num_train,
                                 num_val=args.num_val, only=args.only, extra_overrides=args.overrides)
        return 0 if all(r["status"] == "ok" for r in rows) else 1
    rows = reproduce(args.table, out, quick=args.quick, steps=args.steps, num_train=args.num_train,
                     num_val=args.num_val, only=args.only, extra_overrides=args.overrides)
    return 0 if all(r["status"] == "ok" for r in rows) else 1
