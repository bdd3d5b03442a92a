"""`python scripts/eval.py checkpoint=... [overrides]`: score a saved detector on a dataset split.

The config is conf/eval.yaml (the training ``data`` group, plus checkpoint, out_dir, split,
device, batch_size, coco, proposal_recall). Outputs in ``out_dir``: metrics.json (VOC AP, COCO AP
under ``coco``, Fig. 4 proposal recall under ``proposal_recall``), ap_table.md, pr_curves.png,
proposal_recall.png.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from frcnn.checkpoints import PAPER_TEST_SCALE, DetectorFileError, checkpoint_input_scale
from frcnn.data.build import build_dataset
from frcnn.data.transforms import collate_detection
from frcnn.evaluation.evaluate import evaluate_full
from frcnn.evaluation.proposal_recall import PAPER_IOU_THRESHOLDS, PAPER_TOP_NS, format_recall_table
from frcnn.evaluation.report import write_evaluation_report
from frcnn.evaluation.voc_ap import format_table
from frcnn.predictor import Detector, resolve_device
from frcnn.safe_load import UnreadableFileError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def check_class_names(checkpoint_names: Sequence[str], dataset_names: Sequence[str], checkpoint: Path,
                      data_name: str) -> None:
    """The detector's labels 1..C must mean the dataset's classes, in the same order."""
    if list(checkpoint_names) != list(dataset_names):
        raise ValueError(
            f"{checkpoint} was trained on classes {list(checkpoint_names)} but data={data_name!r} has "
            f"{list(dataset_names)}; evaluate it on the data it was trained on (same classes, same order)"
        )


def build_eval_loader(data_cfg: Mapping[str, Any], split: str, batch_size: int) -> DataLoader:
    """Dataset of ``split`` from the ``data`` node with its eval transform (paper test scale, no
    flip), in a sequential loader of ``collate_detection`` batches."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; allowed: {list(SPLITS)}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = build_dataset(data_cfg, split)
    eval_transform = getattr(dataset, "eval_transform", None)
    if eval_transform is not None and hasattr(dataset, "transform"):
        dataset.transform = eval_transform  # never evaluate with training augmentation
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=False,
                      num_workers=int(data_cfg.get("num_workers", 0)), collate_fn=collate_detection)


def evaluation_data_cfg(data_cfg: Mapping[str, Any], checkpoint: Path, scale: int | None) -> dict:
    """The ``data`` node with the input scale to evaluate at: ``scale`` when given, else the scale
    the checkpoint was trained at (evaluation at the training scale, paper §3.3), else the data
    config's own ``scales[0]``. A data config whose scale differs from the training scale is
    overridden with a warning: a detector scored at another scale than it learned scores low."""
    data_cfg = dict(data_cfg)
    recorded = checkpoint_input_scale(checkpoint)
    if scale is not None:
        data_cfg["scales"] = [int(scale)]
    elif recorded is not None:
        configured = [int(s) for s in data_cfg.get("scales") or []]
        if configured[:1] != [recorded[0]] or int(data_cfg.get("max_size", recorded[1])) != recorded[1]:
            log.warning("evaluating at %s's training scale %d (max %d), not data.scales=%s / data.max_size=%s; "
                        "pass scale=<px> to choose another", checkpoint, recorded[0], recorded[1], configured,
                        data_cfg.get("max_size"))
        data_cfg["scales"], data_cfg["max_size"] = [recorded[0]], recorded[1]
    else:
        data_cfg["scales"] = [int((data_cfg.get("scales") or PAPER_TEST_SCALE[:1])[0])]  # multi-scale training: test at the first
    return data_cfg


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
    detector = Detector.from_checkpoint(checkpoint, device, svd_rank=svd_rank)  # restricted reader; eval mode on device
    model, class_names = detector.model, detector.class_names
    data_cfg = evaluation_data_cfg(cfg["data"], checkpoint, cfg.get("scale"))
    loader = build_eval_loader(data_cfg, split, int(cfg.get("batch_size", 4)))
    check_class_names(class_names, loader.dataset.class_names, checkpoint, str(cfg["data"].get("name")))
    log.info("evaluating %s on %s/%s (%d images) at scale %d", checkpoint, cfg["data"].get("name"), split,
             len(loader.dataset), data_cfg["scales"][0])
    metrics, pr_curves = evaluate_full(
        model, loader, class_names, device,
        top_ns=list(recall_cfg.get("top_ns", PAPER_TOP_NS)),
        iou_thresholds=list(recall_cfg.get("iou_thresholds", PAPER_IOU_THRESHOLDS)),
        coco=bool(cfg.get("coco", True)),
    )
    metrics.update({"checkpoint": str(checkpoint), "data": cfg["data"].get("name"), "split": split,
                    "input_scale": [data_cfg["scales"][0], data_cfg.get("max_size")], "svd_rank": svd_rank})
    written = write_evaluation_report(metrics, pr_curves, out_dir)

    print(format_table(metrics))
    if "coco" in metrics:
        print(format_coco_line(metrics["coco"]))
    if "proposal_recall" in metrics:
        print(format_recall_table(metrics["proposal_recall"]))
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
