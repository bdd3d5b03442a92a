"""`python scripts/reproduce.py schemes [--quick]`: the paper's three ways of training the shared
network (§3.2) on the same data, one row each, beside what the paper says about them.

    alternating              4-step alternating training (§3.2 i; Table 3: 69.9 % VOC07 mAP, VGG-16)
    approximate joint        one network, proposals as constants (§3.2 ii; "close results",
                             "training time reduced by about 25-50 %" against alternating)
    non-approximate joint    one network, RoI warping: the detector's loss also trains the RPN's box
                             regression through the proposals (§3.2 iii; the paper gives no number)

By default the three run on the built-in VOC-like data with its CPU preset's schedule
(experiment=cpu_voclike, conf/schedule/cpu_voclike.yaml; ``--data shapes``: experiment=cpu_shapes); extra
Hydra overrides (``data=voc data.root=... backbone=vgg16 schedule=paper_voc ...``) apply to every
scheme, so any VOC tree works. ``--quick`` scales every stage of that schedule down by the same
factor (joint = ``--steps``), keeping the preset's ratio of alternating to joint length.

Each scheme trains in ``<out>/<i>_<scheme>/`` (seed 0; ``--seeds 0 1 2``: seed s > 0 in
``<out>/<i>_<scheme>_seed<s>/``, with ``seed=<s>``; a finished run is read back, not rerun); the
table, one row per scheme and seed and with several seeds a row of their means per scheme, is
printed and written as ``<out>/schemes.md`` / ``.csv``. Wall times are measured in-process
(stage_seconds of metrics.json): they mean something only on an otherwise idle machine.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from frcnn.config.schema import ALTERNATING_STAGES
from frcnn.reproduce.report import format_number
from frcnn.reproduce.tables import CONFIG_DIR, DEFAULT_QUICK_DATA, QUICK_DATA, QuickData
from frcnn.utils.progress import Countdown


def cpu_schedule_lengths(schedule: str) -> tuple[int, dict[str, int]]:
    """conf/schedule/<schedule>.yaml's stage lengths: (joint, {alternating stage: steps})."""
    node = OmegaConf.load(CONFIG_DIR / "schedule" / f"{schedule}.yaml")
    return int(node.joint.max_steps), {stage: int(node.alternating[stage].max_steps) for stage in ALTERNATING_STAGES}

LR_DROP_AT = 0.8  # --quick: the lr drops at 80 % of each stage, as in the CPU schedule

# (directory name, label, overrides, what the paper says)
SCHEMES = (
    ("alternating", "alternating (4-step)", ["recipe=alternating"],
     "69.9 VOC07 mAP (VGG-16, Table 3)"),
    ("approximate_joint", "approximate joint", ["recipe=joint", "recipe.approximate=true"],
     "'close' to alternating; 25-50 % less training time (§3.2 ii)"),
    ("nonapproximate_joint", "non-approximate joint", ["recipe=joint", "recipe.approximate=false"],
     "no number ('beyond the scope', §3.2 iii)"),
)
TRAIN_STAGES = {"joint": ("joint",), "alternating": ALTERNATING_STAGES}


def stage_length_overrides(key: str, max_steps: int, lr_step: int) -> list[str]:
    """``schedule.<key>`` (``joint``, ``alternating.stage1_det``, ...) set to one lr drop at ``lr_step``."""
    return [f"schedule.{key}.max_steps={max_steps}", f"schedule.{key}.lr_steps=[{lr_step}]"]


def quick_schedule_overrides(steps: int, data: QuickData = QUICK_DATA[DEFAULT_QUICK_DATA]) -> list[str]:
    """Every stage of the data's CPU schedule scaled by steps / its joint length, lr drop at 80 % of each."""
    cpu_joint_steps, cpu_alternating_steps = cpu_schedule_lengths(data.schedule)
    factor = steps / cpu_joint_steps

    def stage(key: str, length: int) -> list[str]:
        scaled = max(2, round(length * factor))
        return stage_length_overrides(key, scaled, max(1, int(LR_DROP_AT * scaled)))

    overrides = stage("joint", cpu_joint_steps)
    for name, length in cpu_alternating_steps.items():
        overrides += stage(f"alternating.{name}", length)
    return overrides


def quick_overrides(steps: int, num_train: int | None, num_val: int | None,
                    data: QuickData = QUICK_DATA[DEFAULT_QUICK_DATA]) -> list[str]:
    """Built-in ``data`` (``num_train`` / ``num_val`` images; None: the data config's), no validation
    during training, CSV logs, every stage of its CPU schedule scaled to ``steps``."""
    sizes = [f"data.{key}={value}" for key, value in ((data.num_train_key, num_train), (data.num_val_key, num_val))
             if value is not None]
    return [f"experiment={data.experiment}", "recipe.val_every_n_epochs=null", *sizes, "logger=csv",
            *quick_schedule_overrides(steps, data)]


def trained_steps(run_dir: Path, recipe: str) -> int | None:
    """Optimiser steps of the scheme's training stages, read from their DONE markers."""
    total = 0
    for stage in TRAIN_STAGES[recipe]:
        done = run_dir / stage / "DONE"
        if not done.exists():
            return None
        total += int(done.read_text().split()[0])
    return total


def scheme_row(key: str, label: str, paper: str, run_dir: Path, metrics: Mapping[str, Any] | None,
               status: str) -> dict:
    """One table row: mAPs (%), training wall time (all stages but the final evaluation; the
    alternating scheme's proposal stages included), seconds per optimiser step (training stages only)."""
    row = {"scheme": key, "label": label, "paper": paper, "status": status, "run_dir": str(run_dir),
           "map_50": None, "map_voc07": None, "train_s": None, "steps": None, "s_per_step": None}
    if metrics is None:
        return row
    recipe = str(metrics.get("recipe", "joint"))
    seconds = {k: float(v) for k, v in metrics.get("stage_seconds", {}).items() if k != "evaluation"}
    steps = trained_steps(run_dir, recipe) if recipe in TRAIN_STAGES else None
    step_seconds = [seconds[s] for s in TRAIN_STAGES.get(recipe, ()) if s in seconds]
    row.update(map_50=100.0 * metrics["map_50"], map_voc07=100.0 * metrics["map_voc07"], steps=steps,
               train_s=sum(seconds.values()) if seconds else None)
    if steps and len(step_seconds) == len(TRAIN_STAGES[recipe]):
        row["s_per_step"] = sum(step_seconds) / steps
    return row


MEAN_FIELDS = ("map_50", "map_voc07", "train_s", "steps", "s_per_step")


def mean_row(rows: Sequence[Mapping[str, Any]]) -> dict:
    """One scheme's row of means over its seeds' rows (the finished ones); status says how many finished."""
    finished = [r for r in rows if r["status"] == "ok" and r["map_50"] is not None]
    first = rows[0]
    row = {"scheme": first["scheme"], "label": f"{first['scheme_label']}, mean of {len(finished)} seeds",
           "scheme_label": first["scheme_label"], "paper": first["paper"], "run_dir": "", "seed": "mean",
           "status": "ok" if len(finished) == len(rows) else f"{len(finished)} of {len(rows)} seeds finished"}
    for key in MEAN_FIELDS:
        values = [r[key] for r in finished if r[key] is not None]
        row[key] = sum(values) / len(values) if values and len(values) == len(finished) else None
    if row["steps"] is not None:
        row["steps"] = round(row["steps"])
    return row


def format_schemes(rows: Sequence[Mapping[str, Any]], note: str) -> tuple[str, str, str]:
    """(plain text, markdown, csv) with one row per scheme; time relative to the alternating row."""
    alternating = [r for r in rows if r["scheme"] == "alternating" and r["train_s"]]
    base = next((r["train_s"] for r in alternating if r.get("seed") == "mean"),  # several seeds: their mean
                alternating[0]["train_s"] if alternating else None)
    header = ["scheme", "map_50 (%)", "map_voc07 (%)", "train wall (s)", "vs alternating", "steps", "s / step",
              "paper", "status"]
    body = []
    for r in rows:
        relative = r["train_s"] / base if base and r["train_s"] else None
        body.append([r["label"], format_number(r["map_50"], ".1f"), format_number(r["map_voc07"], ".1f"),
                     format_number(r["train_s"], ".0f"), format_number(relative, ".2f"), format_number(r["steps"], "d"),
                     format_number(r["s_per_step"], ".3f"), r["paper"], r["status"]])
    title = "Training schemes of the shared network (paper §3.2)"
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    text = "\n".join([title, note, line(header), "-" * (sum(widths) + 2 * (len(widths) - 1)), *map(line, body)])
    md = "\n".join([f"# {title}", "", f"_{note}_", "", "| " + " | ".join(header) + " |",
                    "|:---|---:|---:|---:|---:|---:|---:|:---|:---|", *("| " + " | ".join(b) + " |" for b in body)])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["scheme", "seed", "map_50", "map_voc07", "train_s", "steps", "s_per_step", "paper", "status",
                     "run_dir"])
    for r in rows:
        writer.writerow([r["scheme"], r.get("seed", 0), *("" if r[k] is None else r[k] for k in MEAN_FIELDS),
                         r["paper"], r["status"], r["run_dir"]])
    return text, md + "\n", buffer.getvalue()


def reproduce_schemes(out_dir: Path, quick: bool = False, steps: int = 100, num_train: int = 64, num_val: int = 16,
                      only: Sequence[str] = (), extra_overrides: Sequence[str] = (), seeds: Sequence[int] = (0,),
                      data: QuickData = QUICK_DATA[DEFAULT_QUICK_DATA]) -> list[dict]:
    """Train the schemes (all, or those whose index or name is in ``only``) on the same data, for
    each of ``seeds``; print and write the table; return its rows (with several seeds, each
    scheme's seed rows and then its row of means)."""
    from frcnn.reproduce.runs import compose, failed, train_in

    schemes = list(enumerate(SCHEMES))
    if only:
        schemes = [(i, s) for i, s in schemes if str(i) in set(only) or s[0] in set(only)]
        if not schemes:
            raise ValueError(f"--only {list(only)} matches no scheme; schemes: "
                             + ", ".join(f"{i}: {s[0]}" for i, s in enumerate(SCHEMES)))
    base = quick_overrides(steps, num_train, num_val, data) if quick else [f"experiment={data.experiment}"]
    rows = []
    countdown = Countdown(len(schemes) * len(seeds), "run", "the schemes")
    for i, (key, label, scheme_overrides, paper) in schemes:
        seed_rows = []
        for seed in seeds:
            # seed 0 (the config's) keeps the directory and overrides of a run made without --seeds
            run_dir = out_dir / (f"{i}_{key}" if seed == 0 else f"{i}_{key}_seed{seed}")
            seed_label = label if len(seeds) == 1 else f"{label}, seed {seed}"
            overrides = [*base, *extra_overrides, *scheme_overrides, *([f"seed={seed}"] if seed else [])]
            print(f"[schemes] {seed_label}: {' '.join(overrides)} -> {run_dir}", flush=True)
            start = time.perf_counter()
            try:
                outcome = train_in(run_dir, compose(overrides, run_dir), seed_label)
            except Exception as exc:  # noqa: BLE001 - a bad override is this scheme's failure
                outcome = failed(exc, run_dir, start)
            print(f"[schemes] {seed_label}: {time.perf_counter() - start:.0f} s ({countdown.tick()})", flush=True)
            row = scheme_row(key, seed_label, paper, run_dir, outcome.metrics, outcome.status)
            seed_rows.append({**row, "seed": seed, "scheme_label": label})
        rows += seed_rows + ([mean_row(seed_rows)] if len(seeds) > 1 else [])
    described = data.description if not any(o.startswith("data=") for o in extra_overrides) else "the given data"
    factor = steps / cpu_schedule_lengths(data.schedule)[0]
    note = (f"quick mode: {described}, every CPU-preset stage x{factor:g} (joint {steps} mini-batches); "
            "not comparable with the paper's absolute numbers" if quick else f"{described}, schedules as configured")
    note += "; wall times measured in-process, meaningful only on an idle machine"
    text, md, csv_text = format_schemes(rows, note)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "schemes.md").write_text(md)
    (out_dir / "schemes.csv").write_text(csv_text)
    print(f"\n{text}\nwritten to {out_dir / 'schemes.md'} and .csv", flush=True)
    return rows
