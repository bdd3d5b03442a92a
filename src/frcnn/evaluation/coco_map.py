"""COCO-style box mAP (AP@[.5:.95], AP50, AP75, AP small/medium/large) via torchmetrics.

Thin wrapper over ``torchmetrics.detection.MeanAveragePrecision(iou_type="bbox", box_format="xyxy")``.

Backend: torchmetrics accepts ``backend="pycocotools"`` (the official COCO API, its default) or
``backend="faster_coco_eval"`` (the same evaluation in C++). We use ``faster_coco_eval`` (a dependency)
and fall back to ``pycocotools`` where it cannot be imported; ``CocoEvaluator.backend`` says which.
Measured on 5,000 images x 100 detections (``python scripts/benchmark.py --mode scale``, BENCHMARKS.md):
faster_coco_eval takes seconds where pycocotools' Python evaluation takes minutes, and both give the
same AP (tests/test_coco_backends.py: equal to 1e-4 on generated detections).

VOC ``difficult`` ground truths are passed as ``iscrowd=1``: the COCO evaluation then neither
counts them as positives nor counts detections matched to them as false positives (note that COCO
matches crowd regions by intersection over the *detection* area, not IoU, so this is the closest
COCO analogue of the VOC "ignore difficult" rule, not an identical one).

``compute`` returns python floats; as in pycocotools, a value of -1.0 means "undefined" (e.g. no
ground truth in that size range).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision

# torchmetrics result key -> our key
_RESULT_KEYS = {
    "map": "map_coco",
    "map_50": "map_coco_50",
    "map_75": "map_coco_75",
    "map_small": "map_small",
    "map_medium": "map_medium",
    "map_large": "map_large",
}


def _pick_backend() -> str:
    """'faster_coco_eval' if importable, else 'pycocotools' (the two backends torchmetrics accepts)."""
    return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") is not None else "pycocotools"


def _to_cpu_tensor(x, dtype: torch.dtype) -> torch.Tensor:
    """Torch tensor (any device) or numpy/array-like -> CPU tensor of ``dtype``."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _pred_to_torchmetrics(pred: dict) -> dict:
    """Our prediction dict -> torchmetrics' {boxes [D,4] float, scores [D] float, labels [D] int64}."""
    return {
        "boxes": _to_cpu_tensor(pred["boxes"], torch.float32).reshape(-1, 4),
        "scores": _to_cpu_tensor(pred["scores"], torch.float32).reshape(-1),
        "labels": _to_cpu_tensor(pred["labels"], torch.int64).reshape(-1),
    }


def _target_to_torchmetrics(target: dict) -> dict:
    """Our target dict -> torchmetrics' {boxes, labels, iscrowd}; ``difficult`` becomes ``iscrowd``."""
    labels = _to_cpu_tensor(target["labels"], torch.int64).reshape(-1)
    difficult = target.get("difficult")
    iscrowd = (
        torch.zeros_like(labels) if difficult is None else _to_cpu_tensor(difficult, torch.int64).reshape(-1)
    )
    return {
        "boxes": _to_cpu_tensor(target["boxes"], torch.float32).reshape(-1, 4),
        "labels": labels,
        "iscrowd": iscrowd,
    }


class CocoEvaluator:
    """Accumulates batches and computes COCO box mAP with torchmetrics (see module docstring)."""

    def __init__(self, backend: str | None = None) -> None:
        self.backend = backend or _pick_backend()
        # sync_on_compute=False: the evaluation runs on one process (rank 0 under DDP) and must not
        # wait for the other ranks inside compute()
        self._metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", backend=self.backend,
                                            sync_on_compute=False)

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._metric.reset()

    def update(self, preds: list[dict], targets: list[dict]) -> None:
        """Add one batch (same dict format as ``DetectionEvaluator.update``)."""
        self._metric.update(
            [_pred_to_torchmetrics(p) for p in preds],
            [_target_to_torchmetrics(t) for t in targets],
        )

    def compute(self) -> dict:
        """{map_coco, map_coco_50, map_coco_75, map_small, map_medium, map_large} as python floats."""
        result = self._metric.compute()
        return {ours: float(result[theirs]) for theirs, ours in _RESULT_KEYS.items()}
