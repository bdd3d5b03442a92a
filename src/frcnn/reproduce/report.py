"""The reproduced tables as a report: rows (mean ± spread over seeds, change against the default
row, ties), Kendall τ between the measured and the paper's orderings, the paper's claims tested
(``checks``), Fig. 4's recall curves; written as markdown, CSV and PNG.

In quick mode (built-in data, short runs) a table compares *changes*: each row's change against
the table's default row beside the paper's change, and τ between the two orderings of the
changes. The "measured - paper" column is shown only for runs at the paper's scale.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frcnn.reproduce.stats import Estimate, estimate, is_tie, kendall_tau, paired_difference, verdict
from frcnn.reproduce.tables import Check, PaperTable


@dataclass
class Row:
    label: str
    values: dict[int, float]  # seed -> metric (%)
    value: Estimate
    change: Estimate  # against the default row, seed by seed
    paper: float | None
    paper_change: float | None
    status: str
    run_dirs: list[str]

    @property
    def tie(self) -> bool:
        return is_tie(self.change)


def paper_change(table: PaperTable, label: str) -> float | None:
    """The paper's number minus the paper's number of the row it compares to (``paper_base``, else
    the table's default row)."""
    setting = table.setting(label)
    base = setting.paper_base if setting.paper_base is not None else table.default_paper
    return None if setting.paper is None or base is None else round(setting.paper - base, 2)


def table_rows(table: PaperTable, outcomes: Mapping[str, Mapping[int, Any]]) -> list[Row]:
    """One :class:`Row` per setting from ``outcomes[label][seed]`` (objects with ``metrics``,
    ``status``, ``run_dir``); a seed whose run failed is left out of that row's numbers."""
    def values_of(label: str) -> dict[int, float]:
        return {seed: 100.0 * float(o.metrics[table.metric]) for seed, o in outcomes.get(label, {}).items()
                if o.metrics is not None}

    default = values_of(table.default)
    rows = []
    for setting in table.settings:
        values = values_of(setting.label)
        per_seed = outcomes.get(setting.label, {})
        failures = sorted({o.status for o in per_seed.values() if o.status != "ok"})
        status = "not run" if not per_seed else ("ok" if not failures else "; ".join(failures))
        rows.append(Row(setting.label, values, estimate(list(values.values())),
                        paired_difference(values, default), setting.paper, paper_change(table, setting.label),
                        status, sorted({str(o.run_dir) for o in per_seed.values()})))
    return rows


def side_values(side: Sequence[str], by_label: Mapping[str, Row]) -> dict[int, float]:
    """A check's side per seed: a row's values, or the change a - b of two rows."""
    first = by_label[side[0]].values
    if len(side) == 1:
        return dict(first)
    second = by_label[side[1]].values
    return {seed: first[seed] - second[seed] for seed in first if seed in second}


def check_results(table: PaperTable, rows: Sequence[Row]) -> list[tuple[Check, Estimate, str]]:
    """Each claim of the table tested: (claim, better - worse over the seeds, verdict)."""
    by_label = {row.label: row for row in rows}
    results = []
    for check in table.checks:
        difference = paired_difference(side_values(check.better, by_label), side_values(check.worse, by_label))
        results.append((check, difference, verdict(difference, check.strict)))
    return results


def table_tau(rows: Sequence[Row]) -> tuple[float | None, int]:
    """Kendall τ between the measured and the paper's changes over the rows that have both; the
    number of rows it is taken over."""
    pairs = [(r.change.mean, r.paper_change) for r in rows if r.paper_change is not None and r.change.n > 0]
    return kendall_tau([m for m, _ in pairs], [p for _, p in pairs]), len(pairs)


def format_number(value: float | None, fmt: str) -> str:
    """``value`` in ``fmt``, or "-" when it is missing (None or NaN)."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def table_markdown(table: PaperTable, rows: Sequence[Row], quick: bool) -> str:
    """The table, its τ and its checks, in markdown."""
    tau, tau_rows = table_tau(rows)
    header = ["setting", f"measured {table.metric} (%)", "change vs default", "paper (%)", "paper change", "tie"]
    if not quick:
        header.append("measured - paper")
    header.append("status")
    lines = [f"## {table.name}: {table.title}", "",
             f"Default row: **{table.default}**. Mean ± standard deviation over seeds; a change is taken "
             "seed by seed against the default row, and is a tie when its mean is inside its spread.", "",
             f"Kendall τ (measured vs paper changes, {tau_rows} rows): **{format_number(tau, '.2f')}**"
             + (" (needs 3 rows with a paper number)" if tau is None else ""), "",
             "| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 2) + ":---|"]
    for row in rows:
        default_row = row.label == table.default
        cells = [row.label + (" (default)" if default_row else ""), row.value.format(),
                 "0 (reference)" if default_row else row.change.format(signed=True), format_number(row.paper, ".1f"),
                 format_number(row.paper_change, "+.1f"), "" if default_row else ("tie" if row.tie else "")]
        if not quick:
            cells.append(format_number(None if row.paper is None or row.value.n == 0 else row.value.mean - row.paper, "+.1f"))
        cells.append(row.status)
        lines.append("| " + " | ".join(cells) + " |")
    checks = check_results(table, rows)
    if checks:
        lines += ["", "The paper's reading of the table, tested over the seeds:", ""]
        for check, difference, result in checks:
            lines.append(f"- {check.claim}: difference {difference.format(signed=True)} -> **{result}**")
    return "\n".join(lines) + "\n"


def table_csv(table: PaperTable, rows: Sequence[Row], seeds: Sequence[int]) -> str:
    """One line per setting: per-seed values, mean, spread, change, paper, paper change, tie."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["table", "setting", "metric", *(f"seed{s}" for s in seeds), "mean", "spread", "change",
                     "change_spread", "tie", "paper", "paper_change", "status", "run_dirs"])
    for row in rows:
        def fmt(value: float) -> str:
            return "" if value is None or math.isnan(value) else f"{value:.2f}"

        writer.writerow([table.name, row.label, table.metric, *(fmt(row.values.get(s)) for s in seeds),
                         fmt(row.value.mean), fmt(row.value.spread), fmt(row.change.mean), fmt(row.change.spread),
                         row.tie, "" if row.paper is None else row.paper,
                         "" if row.paper_change is None else row.paper_change, row.status, " ".join(row.run_dirs)])
    return buffer.getvalue()


def plot_changes(table: PaperTable, rows: Sequence[Row], path: Path) -> Path:
    """Bar chart: each row's measured change (± spread) beside the paper's change."""
    from frcnn.evaluation.plots import _new_figure
    from frcnn.utils.atomic_io import atomic_save_figure

    shown = [r for r in rows if r.label != table.default]
    figure = _new_figure(max(5.0, 0.9 * len(shown) + 2.0), 4.0)
    axes = figure.add_subplot()
    x = list(range(len(shown)))
    measured = [r.change.mean if r.change.n else 0.0 for r in shown]
    spread = [r.change.spread if r.change.n > 1 else 0.0 for r in shown]
    axes.bar([i - 0.2 for i in x], measured, width=0.4, yerr=spread, capsize=3, label="measured (mean ± sd)")
    axes.bar([i + 0.2 for i in x], [r.paper_change or 0.0 for r in shown], width=0.4, label="paper")
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(x)
    axes.set_xticklabels([r.label for r in shown], rotation=30, ha="right", fontsize=7)
    axes.set_ylabel(f"change of {table.metric} vs default (points)")
    axes.set_title(f"{table.name}: change against '{table.default}'", fontsize=9)
    axes.legend(fontsize=7)
    return atomic_save_figure(figure, path)


def average_recall(results: Sequence[Mapping[str, Any]]) -> dict:
    """Fig. 4 results of several seeds (``proposal_recall`` dicts) -> one of the same shape, each
    recall the mean over the seeds, plus ``spread`` (standard deviation of the average recall)."""
    merged: dict[str, Any] = {"recall": {}, "average_recall": {}, "spread": {},
                              "num_gt": results[0].get("num_gt"), "num_images": results[0].get("num_images")}
    for n in results[0]["recall"]:
        thresholds = results[0]["recall"][n].keys()
        merged["recall"][n] = {t: estimate([r["recall"][n][t] for r in results]).mean for t in thresholds}
        ar = estimate([r["average_recall"][n] for r in results])
        merged["average_recall"][n], merged["spread"][n] = ar.mean, ar.spread
    return merged


def fig4_markdown(recall: Mapping[str, Any] | None, seeds: int, png: str | None) -> str:
    lines = ["## Fig. 4: recall vs IoU of the RPN's top-N proposals (default model)", ""]
    if recall is None:
        return "\n".join(lines + ["not measured (no default model finished)", ""])
    lines += [f"Mean over {seeds} seed(s); AR = average recall over IoU 0.50:0.95.", "",
              "| proposals | recall @0.5 | recall @0.7 | AR |", "|---:|---:|---:|---:|"]
    for n, per_iou in recall["recall"].items():
        lines.append(f"| {n} | {format_number(per_iou.get('0.50'), '.3f')} | {format_number(per_iou.get('0.70'), '.3f')} | "
                     f"{format_number(recall['average_recall'][n], '.3f')} ± {format_number(recall['spread'][n], '.3f')} |")
    lines += ["", "Paper (Fig. 4, VOC 2007 test): the RPN's recall drops little when the proposals go from 2000 "
              "to 300 (Selective Search and EdgeBoxes drop markedly); no numbers are printed.", ""]
    if png:
        lines += [f"![Fig. 4]({png})", ""]
    return "\n".join(lines)


def summary_markdown(tables: Sequence[PaperTable], rows_by_table: Mapping[str, Sequence[Row]]) -> str:
    """One line per table: its τ and how many of the paper's claims hold, tie or are reversed."""
    lines = ["## Summary", "", "| table | Kendall τ | claims holding | ties | reversed |", "|:---|---:|---:|---:|---:|"]
    for table in tables:
        rows = rows_by_table[table.key]
        tau, tau_rows = table_tau(rows)
        results = check_results(table, rows)
        verdicts = [result for _, _, result in results]
        reversed_claims = [check.claim for check, _, result in results if result == "reversed"]
        lines.append(f"| {table.name} | {format_number(tau, '.2f')} ({tau_rows} rows) | "
                     f"{sum(v in ('holds', 'holds (tie)') for v in verdicts)} of {len(verdicts)} | "
                     f"{sum(v in ('tie', 'holds (tie)') for v in verdicts)} | "
                     f"{len(reversed_claims)}{': ' + '; '.join(reversed_claims) if reversed_claims else ''} |")
    return "\n".join(lines) + "\n"
