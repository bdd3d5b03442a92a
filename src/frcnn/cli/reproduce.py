"""`python scripts/reproduce.py all|lambda|anchors|proposals|training|schemes [--quick]`: the
paper's tables, measured over several seeds, beside the paper's numbers, in one report.

Tables (conf/experiment/paper/ablation_<table>.yaml): ``lambda`` Table 9 (λ of eq. 1),
``anchors`` Table 8 (anchor scales and ratios), ``proposals`` Table 2 (RPN proposals at test time
on one trained model per seed, shared vs unshared), ``training`` Table 3 (shared vs unshared,
alternating vs approximate joint); ``all`` runs the four and Fig. 4 (proposal recall vs IoU of
the default model). ``schemes`` (:mod:`frcnn.reproduce.schemes`) is the §3.2 comparison.

Every (training, seed) runs once under ``<out>/runs/`` and is shared by the rows and tables that
need the same model (:mod:`frcnn.reproduce.runs`); a rerun reads finished runs back and resumes an
interrupted one. The report (:mod:`frcnn.reproduce.report`) is rewritten after every seed:
``<out>/REPORT.md``, ``<out>/<table>.csv``, ``<out>/<table>_changes.png``, ``<out>/fig4_recall.png``.

``--quick``: built-in data (``--data voclike``, the default: experiment=cpu_voclike, 240-px pictures,
anchor scales x0.4; ``--data shapes``: experiment=cpu_shapes, 256-px images, anchor scales x0.25),
the joint recipe for ``--steps`` mini-batches (the alternating schedule scaled by the same factor;
voclike 200, evaluated on 250 test pictures; shapes 200), 3 seeds. Rows marked ``quick: false``
(λ=3: a training per seed with no paper number to compare with) are skipped (``--all-rows`` keeps them). The report then compares changes against each table's
default row and orderings (Kendall τ), not absolute numbers.

``--jobs N`` (default in --quick: one per CPU core, at most 4) runs the trainings and test-time
evaluations N at a time, each with cores / N threads, before the pass by seed reads them back
(:mod:`frcnn.reproduce.parallel`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from frcnn.reproduce.tables import (
    DEFAULT_QUICK_DATA,
    QUICK_DATA,
    REPO_ROOT,
    TABLES,
    PaperTable,
    QuickData,
    merge_overrides,
    paper_table,
    slug,
)
from frcnn.utils.progress import Countdown

QUICK_SEEDS = (0, 1, 2)
PAPER_EXPERIMENT = {table: f"experiment=paper/ablation_{table}" for table in TABLES}


def quick_base(steps: int, num_train: int | None, num_val: int | None, data: QuickData) -> list[str]:
    """Built-in ``data``, joint recipe of ``steps`` mini-batches, every alternating stage scaled alike."""
    from frcnn.reproduce.schemes import quick_overrides

    return merge_overrides(quick_overrides(steps, num_train, num_val, data), ["recipe=joint"])


def base_overrides(table: str, quick: bool, steps: int, num_train: int | None, num_val: int | None,
                   extra: Sequence[str], data: QuickData) -> list[str]:
    base = quick_base(steps, num_train, num_val, data) if quick else [PAPER_EXPERIMENT[table]]
    return merge_overrides(base, extra)


def rows_to_run(table: PaperTable, quick: bool, all_rows: bool) -> list:
    """The settings of ``table`` this invocation runs: in --quick, not those marked ``quick: false`` (e.g. λ=3:
    a training with no paper number to compare with is not worth its minutes) unless --all-rows."""
    return [setting for setting in table.settings if setting.quick or all_rows or not quick]


def run_table(store, table: PaperTable, base: Sequence[str], seed: int, quick: bool, all_rows: bool,
              outcomes: dict, countdown: Countdown | None = None) -> None:
    """Train (or read back) and evaluate every row of ``table`` for ``seed`` into
    ``outcomes[label][seed]``. Test-time rows re-evaluate the default row's model. Each row's line
    says which row of the invocation's it was and the ETA of them all (``countdown``)."""
    default_setting = table.setting(table.default)
    trained_default = None
    for setting in rows_to_run(table, quick, all_rows):
        if setting.test is not None:
            if trained_default is None:
                trained_default = store.train(merge_overrides(base, default_setting.training), seed,
                                              f"{table.key}_{default_setting.label}")
            outcome = store.evaluate_test_time(trained_default, setting.test, seed, setting.label) \
                if setting.test else trained_default
        else:
            outcome = store.train(merge_overrides(base, setting.training), seed, f"{table.key}_{setting.label}")
        outcomes.setdefault(setting.label, {})[seed] = outcome
        print(f"[{table.name}] seed {seed} {setting.label}: {outcome.status}"
              + ("" if outcome.metrics is None else f", {table.metric} {100 * outcome.metrics[table.metric]:.1f}")
              + (f" ({countdown.tick()})" if countdown is not None else ""), flush=True)


def write_report(out_dir: Path, tables: Sequence[PaperTable], outcomes: dict, seeds: Sequence[int], quick: bool,
                 header: str, fig4_outcomes: Sequence | None, data_version: str | None = None) -> Path:
    """REPORT.md, one CSV and one PNG per table, and Fig. 4's PNG, from what has run so far; with
    ``data_version``, the τ of every data version this directory ran on (provenance.py)."""
    from frcnn.evaluation.plots import plot_proposal_recall
    from frcnn.reproduce.provenance import tau_history_markdown, update_tau_history
    from frcnn.reproduce.report import (
        average_recall,
        fig4_markdown,
        plot_changes,
        summary_markdown,
        table_csv,
        table_markdown,
        table_rows,
        table_tau,
    )
    from frcnn.utils.atomic_io import atomic_write_text

    rows_by_table = {table.key: table_rows(table, outcomes.get(table.key, {})) for table in tables}
    sections = [header, summary_markdown(tables, rows_by_table)]
    if data_version is not None:
        history = update_tau_history(out_dir, data_version, {t.name: table_tau(rows_by_table[t.key])[0] for t in tables})
        sections.append(tau_history_markdown(history, data_version))
    for table in tables:
        rows = rows_by_table[table.key]
        sections.append(table_markdown(table, rows, quick))
        atomic_write_text(table_csv(table, rows, seeds), out_dir / f"{table.key}.csv")
        if any(r.change.n for r in rows):
            plot_changes(table, rows, out_dir / f"{table.key}_changes.png")
            sections.append(f"![{table.name} changes]({table.key}_changes.png)\n")
    if fig4_outcomes is not None:
        results = [o.metrics["proposal_recall"] for o in fig4_outcomes
                   if o.metrics is not None and "proposal_recall" in o.metrics]
        recall = average_recall(results) if results else None
        png = None
        if recall is not None:
            plot_proposal_recall(recall, out_dir / "fig4_recall.png", title=f"RPN recall, mean of {len(results)} seeds")
            png = "fig4_recall.png"
        sections.append(fig4_markdown(recall, len(results), png))
    report = out_dir / "REPORT.md"
    atomic_write_text("\n".join(sections), report)
    return report


def compute_seconds(outcomes: dict) -> float:
    """Seconds of every distinct training and test-time evaluation behind the tables (a model or an
    evaluation that several rows share counts once)."""
    distinct = {}
    for by_label in outcomes.values():
        for by_seed in by_label.values():
            for outcome in by_seed.values():
                test_time = (outcome.metrics or {}).get("test_time")
                distinct[(str(outcome.run_dir), json.dumps(test_time, sort_keys=True))] = outcome.seconds
    return sum(distinct.values())


def report_header(command: str, quick: bool, steps: int, seeds: Sequence[int], seconds: float, compute: float,
                  data: QuickData, data_version: str | None) -> str:
    from frcnn.utils.host_info import cpu_description

    mode = (f"quick mode: {data.description}, experiment={data.experiment}, joint recipe {steps} mini-batches of 4 "
            f"images (alternating stages scaled alike), anchor scales x{data.anchor_scale:g}; compares changes and "
            "orderings, not absolute numbers" if quick else "the paper's settings (conf/experiment/paper/ablation_<table>.yaml)")
    return "\n".join([
        "# The paper's tables, reproduced", "",
        f"Command: `{command}`", "",
        f"Mode: {mode}. Seeds: {', '.join(map(str, seeds))}.", "",
        *([f"Data: {data_version}.", ""] if data_version else []),
        f"Machine: {cpu_description()}.", "",
        f"Time: {compute / 60:.1f} min of training and evaluation (every distinct run's stage_seconds and "
        f"every test-time evaluation, also when read back from an earlier invocation); this invocation "
        f"{seconds / 60:.1f} min.", ""])


def reproduce_tables(table_keys: Sequence[str], out_dir: Path, quick: bool, steps: int, seeds: Sequence[int],
                     num_train: int | None = None, num_val: int | None = None, extra: Sequence[str] = (),
                     all_rows: bool = False, fig4: bool = False, command: str = "",
                     data: QuickData = QUICK_DATA[DEFAULT_QUICK_DATA], jobs: int = 1) -> dict:
    """Run ``table_keys`` for every seed (seed by seed, the report rewritten after each) -> outcomes
    ``{table: {label: {seed: Outcome}}}``. ``jobs`` > 1: every training and test-time evaluation
    first, that many at a time (:mod:`frcnn.reproduce.parallel`); the pass by seed then reads them back."""
    from frcnn.reproduce.provenance import data_version
    from frcnn.reproduce.runs import RunStore

    out_dir.mkdir(parents=True, exist_ok=True)
    tables = [paper_table(key, quick, quick_data=data) for key in table_keys]
    version = data_version(data) if quick and not any(o.startswith("data=") for o in extra) else None
    store = RunStore(out_dir)
    outcomes: dict = {}
    fig4_outcomes: list = []
    fig4_table = next((t for t in tables if t.key == "proposals"), tables[0])  # its default model's recall
    start = time.perf_counter()
    bases = {table.key: base_overrides(table.key, quick, steps, num_train, num_val, extra, data) for table in tables}
    if jobs > 1:
        run_in_parallel(store, out_dir, tables, bases, seeds, lambda table: rows_to_run(table, quick, all_rows), jobs)
    countdown = Countdown(len(seeds) * sum(len(rows_to_run(t, quick, all_rows)) for t in tables), "row",
                          "the tables" if len(tables) > 1 else "the table")
    for seed in seeds:
        for table in tables:
            run_table(store, table, bases[table.key], seed, quick, all_rows, outcomes.setdefault(table.key, {}), countdown)
        if fig4:
            fig4_outcomes.append(outcomes[fig4_table.key][fig4_table.default][seed])
        header = report_header(command, quick, steps, seeds, time.perf_counter() - start, compute_seconds(outcomes),
                               data, version)
        report = write_report(out_dir, tables, outcomes, seeds, quick, header, fig4_outcomes if fig4 else None, version)
        print(f"after seed {seed}: {report} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    print((out_dir / "REPORT.md").read_text(), flush=True)
    return outcomes


def configure_output() -> None:
    """reproduce.py's console: one line per log record, frcnn's console rules (no Lightning tips, no
    foreign deprecations); the script's process and each --jobs worker."""
    import logging

    from frcnn.cli.console import configure_console

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    configure_console()


def start_worker(threads: int) -> None:
    """A --jobs worker process: ``threads`` torch threads, the console of reproduce.py."""
    from frcnn.reproduce.parallel import set_threads

    set_threads(threads)
    configure_output()


def run_in_parallel(store, out_dir: Path, tables: Sequence[PaperTable], bases: dict, seeds: Sequence[int],
                    rows, jobs: int) -> None:
    """The tables' trainings and evaluations, ``jobs`` at a time; generated data written once first."""
    from frcnn.data.build import voclike_data_cfg
    from frcnn.reproduce.parallel import plan, run_ahead

    planned = plan(store, tables, bases, seeds, rows)
    for data_cfg in {json.dumps(job.cfg["data"], sort_keys=True): job.cfg["data"] for job in planned}.values():
        if data_cfg.get("name") == "voclike":  # not written by two workers at once
            voclike_data_cfg(data_cfg)
    failures = run_ahead(out_dir, planned, jobs, start_worker=start_worker)
    if failures:
        print(f"{failures} run(s) did not finish in the workers: the tables' pass runs them again one at a time "
              "and reports what still fails", flush=True)


def default_jobs(quick: bool) -> int:
    """--quick: one training per CPU core, at most 4 (each holds ~2 GB); the paper's settings: 1 (one GPU)."""
    from frcnn.reproduce.parallel import available_cpus

    return min(4, available_cpus()) if quick else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reproduce.py", description="Run the paper's tables (Faster R-CNN) over seeds; report them beside the paper's.")
    parser.add_argument("table", choices=("all", *TABLES, "schemes"),
                        help="all: Tables 2, 3, 8, 9 and Fig. 4; lambda: Table 9; anchors: Table 8; proposals: "
                             "Table 2 (test-time proposals, shared vs unshared); training: Table 3; schemes: "
                             "alternating / approximate / non-approximate joint (§3.2)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. data.root=...)")
    parser.add_argument("--quick", action="store_true", help="built-in data, short runs, 3 seeds (CPU)")
    parser.add_argument("--data", choices=sorted(QUICK_DATA), default=DEFAULT_QUICK_DATA,
                        help=f"--quick: the built-in data to train on (default {DEFAULT_QUICK_DATA})")
    parser.add_argument("--steps", type=int, default=None,
                        help="mini-batches per joint training in --quick mode (default: voclike 200, shapes 200; schemes: 100)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="training seeds (default: 0 1 2 with --quick, else 0; schemes: 0)")
    parser.add_argument("--num-train", type=int, default=None, help="--quick: training images (default: the data's)")
    parser.add_argument("--num-val", type=int, default=None, help="--quick: evaluation images (default: voclike 250, shapes: the data's)")
    parser.add_argument("--all-rows", action="store_true",
                        help="--quick: also run the rows marked quick: false (λ=3, which has no paper number)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="trainings at a time, each with cores / jobs threads (default: --quick one per core, "
                             "at most 4; else 1)")
    parser.add_argument("--only", nargs="+", default=(), help="schemes: indices or names to run (default: all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output dir (default outputs/reproduce/<table>[_quick]); rerun it to resume")
    args = parser.parse_args(argv)
    out = args.out or REPO_ROOT / "outputs" / "reproduce" / (args.table + ("_quick" if args.quick else ""))
    for name, value in (("--steps", args.steps), ("--num-train", args.num_train), ("--num-val", args.num_val),
                        ("--jobs", args.jobs)):
        if value is not None and value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    if args.table == "schemes":
        from frcnn.reproduce.schemes import reproduce_schemes

        rows = reproduce_schemes(out, quick=args.quick, steps=args.steps or 100, num_train=args.num_train or 64,
                                 num_val=args.num_val or 16, only=args.only, extra_overrides=args.overrides,
                                 seeds=args.seeds or [0], data=QUICK_DATA[args.data])
        return 0 if all(r["status"] == "ok" for r in rows) else 1
    if args.only:
        parser.error("--only applies to schemes; the tables run every row (finished runs are read back)")
    tables = TABLES if args.table == "all" else (args.table,)
    seeds = args.seeds or (list(QUICK_SEEDS) if args.quick else [0])
    command = "python scripts/reproduce.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data = QUICK_DATA[args.data]
    num_val = args.num_val if args.num_val is not None else data.num_val
    outcomes = reproduce_tables(tables, out, args.quick, args.steps or data.steps, seeds, args.num_train,
                                num_val, args.overrides, args.all_rows, fig4=args.table == "all",
                                command=command, data=data,
                                jobs=args.jobs if args.jobs is not None else default_jobs(args.quick))
    failed = [(t, label) for t, by_label in outcomes.items() for label, by_seed in by_label.items()
              for o in by_seed.values() if o.status != "ok"]
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(f"{t}/{label}" for t, label in failed[:10]),
              file=sys.stderr)
    return 0 if not failed else 1


__all__ = ["main", "reproduce_tables", "slug"]
