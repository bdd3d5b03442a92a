"""Write an evaluation's files: metrics.json, ap_table.md, pr_curves.png, proposal_recall.png, confusion_matrix.png."""

from __future__ import annotations

from pathlib import Path

from frcnn.evaluation.plots import plot_mistakes, plot_pr_curves, plot_proposal_recall
from frcnn.evaluation.voc_ap import format_markdown_table
from frcnn.utils.atomic_io import atomic_write_json, atomic_write_text

REPORT_FILES = ("metrics.json", "ap_table.md", "pr_curves.png", "proposal_recall.png", "confusion_matrix.png")


def write_evaluation_report(metrics: dict, pr_curves: dict, out_dir: str | Path,
                            write_metrics: bool = True) -> dict[str, Path]:
    """Write the files of :data:`REPORT_FILES` for ``evaluate_split``'s (metrics, pr_curves) into ``out_dir``.

    ``write_metrics=False`` leaves metrics.json to the caller (e.g. a recipe that adds its own keys
    first). metrics.json is written last: its presence says the evaluation is complete.
    proposal_recall.png is written only when ``metrics`` holds ``proposal_recall``, confusion_matrix.png (with
    F1 by score threshold) only when it holds ``mistakes``.
    -> {file name: path} of what was written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    table = out_dir / "ap_table.md"
    atomic_write_text(format_markdown_table(metrics) + "\n", table)
    written["ap_table.md"] = table
    written["pr_curves.png"] = plot_pr_curves(pr_curves, out_dir / "pr_curves.png")
    if "proposal_recall" in metrics:
        recall_png = out_dir / "proposal_recall.png"
        written["proposal_recall.png"] = plot_proposal_recall(metrics["proposal_recall"], recall_png)
    if "mistakes" in metrics:
        curves = {name: curve.get("threshold_curve") for name, curve in pr_curves.items()}
        written["confusion_matrix.png"] = plot_mistakes(metrics["mistakes"], curves, out_dir / "confusion_matrix.png")
    if write_metrics:  # last: a run dir with metrics.json is finished (frcnn.engine.resume.finished_metrics)
        atomic_write_json(metrics, out_dir / "metrics.json")
        written["metrics.json"] = out_dir / "metrics.json"
    return written
