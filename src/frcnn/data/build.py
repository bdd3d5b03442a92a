"""Datasets from the ``data`` config node (built-in shapes; VOC / COCO come later)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from frcnn.data.synthetic import ShapesDataset
from frcnn.data.transforms import DetectionTransform

DATASET_NAMES = ("shapes",)


def build_transform(data_cfg: Mapping[str, Any], train: bool, seed: int | None = None) -> DetectionTransform:
    return DetectionTransform(
        scales=tuple(int(s) for s in data_cfg["scales"]),
        max_size=int(data_cfg["max_size"]),
        hflip_prob=float(data_cfg["hflip_prob"]) if train else 0.0,
        train=train,
        seed=seed,
    )


def build_dataset(data_cfg: Mapping[str, Any], split: str):
    """split: 'train' or 'val'."""
    name = data_cfg["name"]
    if name not in DATASET_NAMES:
        raise ValueError(f"data.name={name!r}; allowed: {DATASET_NAMES}")
    train = split == "train"
    dataset = ShapesDataset(
        split=split,
        num_images=int(data_cfg["num_train"] if train else data_cfg["num_val"]),
        image_size=tuple(int(v) for v in data_cfg["image_size"]),
        min_objects=int(data_cfg.get("min_objects", 1)),
        max_objects=int(data_cfg.get("max_objects", 4)),
        seed=int(data_cfg.get("seed", 0)),
        transform=build_transform(data_cfg, train, seed=int(data_cfg.get("seed", 0))),
    )
    dataset.eval_transform = build_transform(data_cfg, train=False)  # proposals are computed unflipped
    return dataset
