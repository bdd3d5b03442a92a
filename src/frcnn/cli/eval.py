"""`python scripts/eval.py checkpoint=... [overrides]`: score a saved detector on a dataset split.

The config is conf/eval.yaml (the training ``data`` group, plus checkpoint, out_dir, split,
device, batch_size, score_thresh, tile, coco, proposal_recall). Outputs in ``out_dir``: metrics.json (VOC
AP, COCO AP under ``coco``, Fig. 4 proposal recall under ``proposal_recall``, the confusion matrix and
per-class precision / recall / F1 at ``score_thresh`` with each class's best-F1 threshold under
``mistakes``), ap_table.md, pr_curves.png, proposal_recall.png, confusion_matrix.png.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from frcnn.checkpoint.safe_load import UnreadableFileError
from frcnn.evaluation.eval_data import build_eval_loader, check_class_names, evaluation_data_cfg
from frcnn.evaluation.evaluate import evaluate_split
from frcnn.evaluation.mistakes import confused_pairs, format_mistakes_table
from frcnn.evaluation.proposal_recall import PAPER_IOU_THRESHOLDS, PAPER_TOP_NS, format_recall_table
from frcnn.evaluation.report import write_evaluation_report
from frcnn.evaluation.tiled_eval import TiledModel, in_original_pixels
from frcnn.evaluation.voc_ap import format_table
from frcnn.inference.detector_file import DetectorFileError
from frcnn.inference.predictor import Detector, resolve_device

log = logging.getLogger(__name__)


def format_coco_line(coco: Mapping[str, float]) -> str:
    """COCO AP (%) in one line; '-' where undefined (-1)."""
    def pct(value: float) -> str:
        return "-" if value < 0 else f"{100 * value:.1f}"

    parts = [("COCO AP@[.5:.95]", "map"), ("AP50", "map_50"), ("AP75", "map_75"), ("APs", "map_small"),
             ("APm", "map_medium"), ("APl", "map_large")]
    return "  ".join(f"{label} {pct(coco[key])}" for label, key in parts)


def evaluate_checkpoint(cfg: Mapping[str, Any]) -> dict:
    """Score ``cfg['checkpoint']`` on ``cfg['data']`` / ``cfg['split']``; write and print the report.

    ``cfg`` is conf/eval.yaml resolved to a plain dict. -> the metrics written to metrics.json.
    """
    if cfg.get("checkpoint") in (None, "", "???"):
        raise ValueError("checkpoint is not set: pass checkpoint=<run dir>/final/model.pt")
    checkpoint = Path(str(cfg["checkpoint"]))
    out_dir = Path(str(cfg["out_dir"]))
    split = str(cfg.get("split", "val"))
    device = resolve_device(str(cfg.get("device", "cpu")))
    recall_cfg = cfg.get("proposal_recall") or {}

    svd_rank = (cfg.get("roi_head") or {}).get("svd_rank")
    tile, overlap = cfg.get("tile"), float(cfg.get("overlap", 0.2))
    score_thresh = float(cfg.get("score_thresh", 0.5))
    if not 0.0 <= score_thresh <= 1.0:
        raise ValueError(f"score_thresh={cfg.get('score_thresh')!r}: a detection score threshold must be in [0, 1]")
    batch_size = int(cfg.get("batch_size", 4))
    data_cfg = evaluation_data_cfg(cfg["data"], checkpoint, cfg.get("scale"))
    # restricted reader; eval mode on device; tile= / overlap= checked here. Tiles at the scale the loader would use
    detector = Detector.from_checkpoint(checkpoint, device, data_cfg["scales"][0], data_cfg.get("max_size"),
                                        svd_rank=svd_rank, tile=tile, overlap=overlap, batch_size=batch_size)
    model, class_names = detector.model, detector.class_names
    loader = build_eval_loader(data_cfg, split, 1 if tile else batch_size)  # tiles: batch_size tiles per pass
    check_class_names(class_names, loader.dataset.class_names, checkpoint, str(cfg["data"].get("name")))
    top_ns = list(recall_cfg.get("top_ns", PAPER_TOP_NS))
    if tile:  # the whole images in their own pixels, detected by tiles as frcnn-detect --tile does
        model, loader = TiledModel(detector), in_original_pixels(loader)
        if top_ns:
            log.info("tile=%d: no proposal recall (the proposals are per tile)", detector.tile)
        top_ns = []
    log.info("evaluating %s on %s/%s (%d images) at scale %d%s", checkpoint, cfg["data"].get("name"), split,
             len(loader.dataset), data_cfg["scales"][0],
             f", by tiles of {detector.tile} px overlapping {detector.overlap:g}" if tile else "")
    metrics, pr_curves = evaluate_split(
        model, loader, class_names, device,
        top_ns=top_ns,
        iou_thresholds=list(recall_cfg.get("iou_thresholds", PAPER_IOU_THRESHOLDS)),
        coco=bool(cfg.get("coco", True)),
        score_thresh=score_thresh,
    )
    metrics.update({"checkpoint": str(checkpoint), "data": cfg["data"].get("name"), "split": split,
                    "input_scale": [data_cfg["scales"][0], data_cfg.get("max_size")], "svd_rank": svd_rank,
                    "tile": detector.tile, "overlap": detector.overlap if tile else None})
    written = write_evaluation_report(metrics, pr_curves, out_dir)

    print(format_table(metrics))
    if "coco" in metrics:
        print(format_coco_line(metrics["coco"]))
    if "proposal_recall" in metrics:
        print(format_recall_table(metrics["proposal_recall"]))
    print(format_mistakes_table(metrics["mistakes"]))
    pairs = confused_pairs(metrics["mistakes"])
    if pairs:
        print("most frequent mistakes (object -> detected as): "
              + ", ".join(f"{obj} -> {det} {count}" for obj, det, count in pairs))
    print(f"wrote {', '.join(sorted(written))} to {out_dir}")
    return metrics


def run(cfg) -> dict:
    """Hydra entry (scripts/eval.py): DictConfig -> plain dict -> :func:`evaluate_checkpoint`."""
    from omegaconf import OmegaConf

    from frcnn.cli.console import configure_console

    configure_console()
    logging.getLogger("frcnn").setLevel(logging.INFO)
    try:
        return evaluate_checkpoint(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except (FileNotFoundError, UnreadableFileError, DetectorFileError) as exc:  # one line, no traceback
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
