"""Detections as a COCO "results" file (the format ``pycocotools.COCO.loadRes`` reads).

``detections.json`` is a plain list, one record per detection::

    {"image_id": int, "file_name": str, "category_id": int, "bbox": [x, y, w, h], "score": float}

* ``bbox`` is COCO's [x, y, width, height] of the continuous (x1, y1, x2, y2) box in original-image
  pixels: x = x1, y = y1, w = x2 - x1, h = y2 - y1 (no "+1").
* ``category_id`` is the model's 1-based label (0 is background and never written); the names
  are in the sidecar ``categories.json``: ``{"categories": [{"id": 1, "name": ...}, ...],
  "images": [{"id", "file_name", "width", "height"}, ...]}``. The sidecar lists every processed
  image, also those without detections, so it is the ground-truth skeleton ``loadRes`` needs.
* ``file_name`` is not part of COCO's format; COCO tools ignore the extra key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


def xyxy_to_coco_xywh(boxes_xyxy: Tensor) -> Tensor:
    """[N, 4] (x1, y1, x2, y2) -> [N, 4] (x, y, w, h), continuous coordinates."""
    boxes_xyxy = boxes_xyxy.reshape(-1, 4)
    return torch.cat((boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]), dim=1)


def coco_result_records(image_id: int, file_name: str, boxes_xyxy: Tensor, scores: Tensor,
                        labels: Tensor) -> list[dict]:
    """One image's detections (boxes [D, 4] in original pixels, scores [D], labels [D] in 1..C)
    -> COCO result records (coordinates to 0.01 px, scores to 1e-5)."""
    xywh = xyxy_to_coco_xywh(boxes_xyxy.detach().cpu().float())  # [D, 4]
    return [
        {
            "image_id": int(image_id),
            "file_name": str(file_name),
            "category_id": int(label),
            "bbox": [round(float(v), 2) for v in box],
            "score": round(float(score), 5),
        }
        for box, score, label in zip(xywh, scores.detach().cpu().reshape(-1), labels.detach().cpu().reshape(-1))
    ]


def coco_categories(class_names: Sequence[str]) -> list[dict]:
    """[{"id": 1, "name": class_names[0]}, ...]: label ids are 1-based, 0 is background."""
    return [{"id": i, "name": str(name)} for i, name in enumerate(class_names, start=1)]


def write_coco_results(records: list[dict], class_names: Sequence[str], images: list[dict],
                       out_dir: str | Path, name: str = "detections") -> tuple[Path, Path]:
    """Write ``<name>.json`` (the results list) and the sidecar ``categories.json`` into ``out_dir``.

    ``images``: [{"id", "file_name", "width", "height"}] of every processed image.
    -> (results path, sidecar path).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / f"{name}.json"
    sidecar_path = out_dir / "categories.json"
    results_path.write_text(json.dumps(records, indent=1))
    sidecar_path.write_text(json.dumps({"categories": coco_categories(class_names), "images": images}, indent=1))
    return results_path, sidecar_path


def check_coco_results(records: object, num_classes: int | None = None) -> None:
    """Raise ValueError naming the first record that is not a COCO box result."""
    if not isinstance(records, list):
        raise ValueError(f"COCO results must be a JSON list, got {type(records).__name__}")
    for index, record in enumerate(records):
        missing = {"image_id", "category_id", "bbox", "score"} - set(record)
        if missing:
            raise ValueError(f"record {index} lacks {sorted(missing)}: {record}")
        bbox = record["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"record {index}: bbox must be [x, y, w, h] numbers, got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"record {index}: bbox width/height must be >= 0, got {bbox}")
        if not isinstance(record["image_id"], int) or not isinstance(record["category_id"], int):
            raise ValueError(f"record {index}: image_id and category_id must be integers: {record}")
        if record["category_id"] < 1 or (num_classes is not None and record["category_id"] > num_classes):
            raise ValueError(f"record {index}: category_id {record['category_id']} outside 1..{num_classes}")
        if not isinstance(record["score"], (int, float)):
            raise ValueError(f"record {index}: score must be a number, got {record['score']!r}")
