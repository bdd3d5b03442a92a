"""The statistics of a VOC-like split beside VOC 2007's, each with the tolerance it is held to
(tests/test_voclike.py; docs/VOCLIKE.md is written from :func:`statistics_table`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from frcnn.data.voclike.voc2007 import (
    ASPECT_NON_DIFFICULT,
    CLASS_NAMES,
    DIFFICULT_FRACTION,
    OBJECTS_PER_IMAGE_ALL,
    OBJECTS_PER_IMAGE_NON_DIFFICULT,
    SINGLE_CLASS_IMAGES,
    SIZE_R_DIFFICULT_P50,
    SIZE_R_NON_DIFFICULT,
    TRUNCATED_FRACTION,
    VOC2007_CLASSES,
)


@dataclass(frozen=True)
class ImageAnnotation:
    """What the statistics need of one picture: (H, W), boxes [N, 4] (x1, y1, x2, y2), labels 1..20,
    difficult and truncated flags."""

    hw: tuple[int, int]
    boxes_xyxy: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    truncated: np.ndarray


@dataclass(frozen=True)
class Statistic:
    """One row: what is measured, VOC 2007's value, ours, and the absolute tolerance it is held to."""

    name: str
    voc: float
    ours: float
    tolerance: float

    @property
    def within(self) -> bool:
        return abs(self.ours - self.voc) <= self.tolerance


def _share(values: np.ndarray, condition) -> float:
    return float(np.mean(condition(values))) if len(values) else float("nan")


def measure(images: Iterable[ImageAnnotation]) -> list[Statistic]:
    """Every documented statistic of ``images`` against VOC 2007 trainval's."""
    images = list(images)
    counts_all = np.array([len(im.labels) for im in images])
    counts_nd = np.array([int((~im.difficult).sum()) for im in images])
    r, aspect, difficult, truncated, labels = [], [], [], [], []
    single_class = []
    for im in images:
        wh = im.boxes_xyxy[:, 2:] - im.boxes_xyxy[:, :2]  # [N, 2]
        r.append(np.sqrt(wh[:, 0] * wh[:, 1] / (im.hw[0] * im.hw[1])))
        aspect.append(wh[:, 0] / wh[:, 1])
        difficult.append(im.difficult)
        truncated.append(im.truncated)
        labels.append(im.labels)
        if (~im.difficult).any():
            single_class.append(len(set(im.labels[~im.difficult].tolist())) == 1)
    r, aspect = np.concatenate(r), np.concatenate(aspect)
    difficult, truncated, labels = np.concatenate(difficult), np.concatenate(truncated), np.concatenate(labels)
    nd = ~difficult
    all_stats, nd_stats = OBJECTS_PER_IMAGE_ALL, OBJECTS_PER_IMAGE_NON_DIFFICULT
    rows = [
        Statistic("objects / image, all: mean", all_stats["mean"], float(counts_all.mean()), 0.3),
        Statistic("objects / image, all: P(1)", all_stats["p1"], _share(counts_all, lambda c: c == 1), 0.04),
        Statistic("objects / image, all: P(>= 5)", all_stats["ge5"], _share(counts_all, lambda c: c >= 5), 0.04),
        Statistic("objects / image, all: P(>= 10)", all_stats["ge10"], _share(counts_all, lambda c: c >= 10), 0.02),
        Statistic("objects / image, non-difficult: mean", nd_stats["mean"], float(counts_nd.mean()), 0.3),
        Statistic("objects / image, non-difficult: P(1)", nd_stats["p1"], _share(counts_nd, lambda c: c == 1), 0.06),
        Statistic("objects / image, non-difficult: P(>= 5)", nd_stats["ge5"], _share(counts_nd, lambda c: c >= 5), 0.04),
        Statistic("images without a non-difficult object", 0.0, _share(counts_nd, lambda c: c == 0), 0.0),
        Statistic("images of one class (non-difficult)", SINGLE_CLASS_IMAGES, float(np.mean(single_class)), 0.08),
        Statistic("difficult share of objects", DIFFICULT_FRACTION, float(difficult.mean()), 0.05),
        Statistic("truncated share of objects", TRUNCATED_FRACTION, float(truncated.mean()), 0.10),
        Statistic("size r, non-difficult: p10", SIZE_R_NON_DIFFICULT["p10"], float(np.quantile(r[nd], 0.1)), 0.03),
        Statistic("size r, non-difficult: p50", SIZE_R_NON_DIFFICULT["p50"], float(np.quantile(r[nd], 0.5)), 0.05),
        Statistic("size r, non-difficult: p90", SIZE_R_NON_DIFFICULT["p90"], float(np.quantile(r[nd], 0.9)), 0.08),
        Statistic("size r, difficult: p50", SIZE_R_DIFFICULT_P50, float(np.quantile(r[difficult], 0.5)) if
                  difficult.any() else float("nan"), 0.04),
        Statistic("aspect w/h, non-difficult: p10", ASPECT_NON_DIFFICULT["p10"], float(np.quantile(aspect[nd], 0.1)), 0.08),
        Statistic("aspect w/h, non-difficult: p50", ASPECT_NON_DIFFICULT["p50"], float(np.quantile(aspect[nd], 0.5)), 0.12),
        Statistic("aspect w/h, non-difficult: p90", ASPECT_NON_DIFFICULT["p90"], float(np.quantile(aspect[nd], 0.9)), 0.3),
        Statistic("tall share (w/h < 0.75), non-difficult", ASPECT_NON_DIFFICULT["tall_lt_0.75"],
                  _share(aspect[nd], lambda a: a < 0.75), 0.08),
        Statistic("wide share (w/h > 1.33), non-difficult", ASPECT_NON_DIFFICULT["wide_gt_1.33"],
                  _share(aspect[nd], lambda a: a > 1.33), 0.08),
    ]
    total_nd = max(1, int(nd.sum()))
    voc_total = sum(c.objects for c in VOC2007_CLASSES)
    for index, stats in enumerate(VOC2007_CLASSES, start=1):
        share = float(((labels == index) & nd).sum()) / total_nd
        rows.append(Statistic(f"class share of non-difficult objects: {stats.name}", stats.objects / voc_total, share,
                              max(0.012, 0.4 * stats.objects / voc_total)))
    return rows


def statistics_table(rows: Sequence[Statistic]) -> str:
    """Markdown: statistic | VOC 2007 | ours | tolerance | within."""
    lines = ["| statistic | VOC 2007 trainval | VOC-like | tolerance | within |", "|---|---:|---:|---:|:---:|"]
    for row in rows:
        lines.append(f"| {row.name} | {row.voc:.3f} | {row.ours:.3f} | ±{row.tolerance:.3f} | "
                     f"{'yes' if row.within else '**no**'} |")
    return "\n".join(lines) + "\n"


__all__ = ["CLASS_NAMES", "ImageAnnotation", "Statistic", "measure", "statistics_table"]
