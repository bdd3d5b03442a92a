"""Evaluation pictures: proposal recall vs. IoU (paper Fig. 4) and per-class precision-recall curves.

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` +
``FigureCanvasAgg``), without pyplot: no global figure state, no display needed, and the
process-wide backend a caller may have chosen is left alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from frcnn.utils.atomic_io import atomic_save_figure


def _new_figure(width_in: float, height_in: float) -> Figure:
    figure = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    return atomic_save_figure(figure, Path(path))


def plot_proposal_recall(result: dict, path: str | Path, title: str = "Proposal recall vs. IoU") -> Path:
    """Recall vs. IoU threshold, one line per number of proposals N (the paper's Fig. 4).

    ``result``: the dict of :func:`frcnn.evaluation.proposal_recall.recall_at_iou`. The legend
    gives each N's average recall. Undefined recalls (no ground truth) are left out.
    """
    figure = _new_figure(5.5, 4.0)
    axes = figure.add_subplot()
    for n, per_iou in result["recall"].items():
        points = [(float(t), r) for t, r in per_iou.items() if r is not None]
        if not points:
            continue
        thresholds, recalls = zip(*points)
        average = result["average_recall"].get(n)
        label = f"{n} proposals" + ("" if average is None else f" (AR {average:.3f})")
        axes.plot(thresholds, recalls, marker="o", markersize=3, label=label)
    axes.set_xlabel("IoU threshold")
    axes.set_ylabel("recall")
    axes.set_ylim(0.0, 1.02)
    axes.set_xlim(0.48, 1.0)
    axes.grid(True, alpha=0.3)
    axes.set_title(f"{title} ({result.get('num_gt', '?')} gt, {result.get('num_images', '?')} images)")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower left")
    return _save(figure, path)


def plot_pr_curves(curves: dict[str, dict], path: str | Path, title: str = "Precision-recall at IoU 0.5") -> Path:
    """One subplot per class: precision vs. recall (raw devkit curve and its monotone envelope).

    ``curves``: :meth:`frcnn.evaluation.voc_ap.DetectionEvaluator.pr_curves`. The envelope is
    what the all-point AP integrates (VOC2010+ rule), so the shaded area equals the class AP.
    """
    names = list(curves)
    columns = min(5, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    figure = _new_figure(2.6 * columns, 2.4 * rows + 0.4)
    figure.suptitle(title)
    for index, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, index + 1)
        curve = curves[name]
        recall = np.asarray(curve["recall"], dtype=np.float64)
        precision = np.asarray(curve["precision"], dtype=np.float64)
        if recall.size and not np.isnan(recall).all():
            envelope = np.maximum.accumulate(precision[::-1])[::-1]  # [N'] monotone precision
            # all-point AP = sum (r[i+1] - r[i]) * envelope[i+1] from r = 0: a "pre" step from (0, envelope[0])
            steps_r = np.concatenate(([0.0], recall))  # [N' + 1]
            steps_p = np.concatenate((envelope[:1], envelope))  # [N' + 1]
            axes.plot(recall, precision, linewidth=0.8, alpha=0.5)
            axes.step(steps_r, steps_p, where="pre", linewidth=1.4)
            axes.fill_between(steps_r, steps_p, step="pre", alpha=0.15)
        ap = curve.get("ap")
        axes.set_title(f"{name}: AP {'-' if ap is None else f'{100 * ap:.1f}'}", fontsize=9)
        axes.set_xlim(0.0, 1.0)
        axes.set_ylim(0.0, 1.02)
        axes.tick_params(labelsize=7)
        axes.grid(True, alpha=0.3)
        if index % columns == 0:
            axes.set_ylabel("precision", fontsize=8)
        if index >= (rows - 1) * columns:
            axes.set_xlabel("recall", fontsize=8)
    return _save(figure, path)


def plot_mistakes(mistakes: dict, curves: dict[str, dict | None], path: str | Path) -> Path:
    """Left: the detection confusion matrix (:func:`frcnn.evaluation.mistakes.confusion_matrix`), counts
    written in the cells, colour = the share of the row (of each class's objects; the background row: of
    the false positives). Right: F1 against the score threshold per class
    (:func:`frcnn.evaluation.mistakes.threshold_curve`), a dot at each class's best, the dashed line at
    ``mistakes['score_thresh']``."""
    confusion = mistakes["confusion"]
    counts = np.asarray(confusion["counts"], dtype=np.int64)  # [C + 1, C + 1]
    size = counts.shape[0]
    side = min(14.0, max(4.5, 2.5 + 0.45 * size))
    figure = _new_figure(2 * side + 1.0, side)
    matrix_axes, curve_axes = figure.subplots(1, 2, width_ratios=[1.15, 1.0])
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = matrix_axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=matrix_axes, fraction=0.046, pad=0.02, label="share of the row")
    font = max(5, 10 - size // 4)
    for row in range(size):
        for column in range(size):
            if counts[row, column]:
                matrix_axes.text(column, row, str(counts[row, column]), ha="center", va="center", fontsize=font,
                                 color="white" if shares[row, column] > 0.5 else "black")
    matrix_axes.set_xticks(range(size), confusion["columns"], rotation=60, ha="right", fontsize=font + 1)
    matrix_axes.set_yticks(range(size), confusion["rows"], fontsize=font + 1)
    matrix_axes.set_xlabel("detected as")
    matrix_axes.set_ylabel("object (ground truth)")
    matrix_axes.set_title(f"Confusion at score >= {mistakes['score_thresh']:g}, IoU > {mistakes['iou_thresh']:g}")
    for name, curve in curves.items():
        if curve is None:
            continue
        line, = curve_axes.plot(curve["score_thresh"], curve["f1"], linewidth=1.0, label=name)
        best = int(np.argmax(curve["f1"]))
        curve_axes.plot(curve["score_thresh"][best], curve["f1"][best], "o", color=line.get_color(), markersize=4)
    curve_axes.axvline(mistakes["score_thresh"], color="grey", linestyle="--", linewidth=1.0)
    curve_axes.set_xlim(0.0, 1.0)
    curve_axes.set_ylim(0.0, 1.02)
    curve_axes.grid(True, alpha=0.3)
    curve_axes.set_xlabel("score threshold (keep score >=)")
    curve_axes.set_ylabel("F1")
    curve_axes.set_title("F1 by score threshold (dot: each class's best)")
    if curve_axes.get_legend_handles_labels()[0]:
        curve_axes.legend(fontsize=7, ncol=2 if len(curves) > 10 else 1, loc="lower left")
    return _save(figure, path)
