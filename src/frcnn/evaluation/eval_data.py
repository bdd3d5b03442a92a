"""The data a saved detector is evaluated on: the split's dataset with its eval transform, at the
detector's training scale (§3.3), in a sequential loader; and the check that its classes match."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from frcnn.data.build import build_dataset
from frcnn.data.datamodule import resolve_num_workers
from frcnn.data.split import split_dir_of_run
from frcnn.data.transforms import collate_detection
from frcnn.inference.detector_file import PAPER_TEST_SCALE, checkpoint_input_scale

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
                      num_workers=resolve_num_workers(data_cfg.get("num_workers", 0)), collate_fn=collate_detection)


def evaluation_data_cfg(data_cfg: Mapping[str, Any], checkpoint: Path, scale: int | None) -> dict:
    """The ``data`` node with the input scale to evaluate at: ``scale`` when given, else the scale
    the checkpoint was trained at (evaluation at the training scale, paper §3.3), else the data
    config's own ``scales[0]``. A data config whose scale differs from the training scale is
    overridden with a warning: a detector scored at another scale than it learned scores low.
    A folder split automatically (``data.split_dir`` null) is split as the detector's run split it: by the
    ``data_split.json`` beside ``<run dir>/final/model.pt`` (frcnn.data.split)."""
    data_cfg = dict(data_cfg)
    if "split_dir" in data_cfg and data_cfg["split_dir"] is None:
        data_cfg["split_dir"] = split_dir_of_run(checkpoint)
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
