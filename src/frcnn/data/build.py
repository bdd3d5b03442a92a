"""Datasets from the ``data`` config node: built-in shapes, PASCAL VOC (one year, or 07+12), COCO.

This is the one place where ``data.*`` keys become constructor arguments; config errors name the key
(``data.root=/x: no Annotations/ folder (expected VOCdevkit layout ...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from frcnn.data.checks import DatasetLayoutError
from frcnn.data.coco import COCODataset
from frcnn.data.records import ON_BAD_SAMPLE, ConcatDetectionDataset
from frcnn.data.synthetic import ShapesDataset
from frcnn.data.transforms import DetectionTransform
from frcnn.data.voc import VOC_CLASSES, VOCDataset
from frcnn.errors import ConfigError

DATASET_NAMES = ("shapes", "voc", "voc0712", "coco")


def build_transform(data_cfg: Mapping[str, Any], train: bool, seed: int | None = None) -> DetectionTransform:
    return DetectionTransform(
        scales=tuple(int(s) for s in data_cfg["scales"]),
        max_size=int(data_cfg["max_size"]),
        hflip_prob=float(data_cfg["hflip_prob"]) if train else 0.0,
        train=train,
        seed=seed,
    )


def build_dataset(data_cfg: Mapping[str, Any], split: str):
    """split: 'train' or 'val'. Sets ``dataset.eval_transform`` (scales[0], no flip) for proposals."""
    name = data_cfg["name"]
    if name not in DATASET_NAMES:
        raise ConfigError(f"data.name={name!r}; allowed: {DATASET_NAMES}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    train = split == "train"
    seed = int(data_cfg.get("seed", 0))
    transform = build_transform(data_cfg, train, seed=seed)
    if name == "shapes":
        dataset = ShapesDataset(
            split=split,
            num_images=int(data_cfg["num_train"] if train else data_cfg["num_val"]),
            image_size=tuple(int(v) for v in data_cfg["image_size"]),
            min_objects=int(data_cfg.get("min_objects", 1)),
            max_objects=int(data_cfg.get("max_objects", 4)),
            seed=seed,
            transform=transform,
        )
    elif name == "coco":
        dataset = _build_coco(data_cfg, train, transform)
    else:
        dataset = _build_voc(data_cfg, train, transform)
    dataset.eval_transform = build_transform(data_cfg, train=False)  # proposals are computed unflipped
    return dataset


# ----------------------------------------------------------------------------- shared keys
def _file_options(data_cfg: Mapping[str, Any]) -> dict:
    """``data.on_bad_sample`` / ``data.verify_images``, checked."""
    policy = data_cfg.get("on_bad_sample", "error")
    if policy not in ON_BAD_SAMPLE:
        raise ConfigError(f"data.on_bad_sample={policy!r}; allowed: {list(ON_BAD_SAMPLE)}")
    return {"on_bad_sample": policy, "verify_images": bool(data_cfg.get("verify_images", False))}


def _class_list(data_cfg: Mapping[str, Any], default: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``data.classes``: a non-empty list of distinct names (null -> ``default``)."""
    classes = data_cfg.get("classes")
    if classes is None:
        return default
    if isinstance(classes, str) or not all(isinstance(c, str) and c for c in classes) or not classes:
        raise ConfigError(f"data.classes must be a non-empty list of class names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"data.classes lists a class twice: {list(classes)}")
    return tuple(classes)


def _with_key(key: str, build: Callable[[], Any]):
    """Run ``build``; a missing folder / file becomes a ConfigError naming the config key."""
    try:
        return build()
    except DatasetLayoutError as exc:
        raise ConfigError(f"data.{key}={exc.path}: {exc.problem}") from exc


# ----------------------------------------------------------------------------- VOC
def _build_voc(data_cfg: Mapping[str, Any], train: bool, transform: DetectionTransform):
    """data=voc: (data.root, data.train_split | data.val_split). data=voc0712: training concatenates
    ``data.train_roots`` ([[root, split], ...]); evaluation is (data.root, data.val_split)."""
    classes = _class_list(data_cfg, VOC_CLASSES)
    options = _file_options(data_cfg)
    # difficult objects: out of training targets unless data.use_difficult; flagged in evaluation targets
    keep_difficult = bool(data_cfg.get("use_difficult", False)) if train else True

    def voc(root, split, key):
        return _with_key(key, lambda: VOCDataset(root, str(split), classes, keep_difficult=keep_difficult,
                                                 transform=transform, **options))

    train_roots = data_cfg.get("train_roots")
    if not train or not train_roots:
        split_key = "train_split" if train else "val_split"
        for key in ("root", split_key):
            if not data_cfg.get(key):
                raise ConfigError(f"data.{key} is not set (data={data_cfg['name']} needs data.root and "
                                    f"data.{split_key})")
        return voc(data_cfg["root"], data_cfg[split_key], "root")
    parts = []
    for k, entry in enumerate(train_roots):
        if isinstance(entry, str) or len(entry) != 2:
            raise ConfigError(f"data.train_roots[{k}]={entry!r}: expected a [root, split] pair")
        parts.append(voc(entry[0], entry[1], f"train_roots[{k}]"))
    roots = " + ".join(f"{part.root.name} {part.split}" for part in parts)
    return ConcatDetectionDataset(parts, description=f"VOC {roots}")


# ----------------------------------------------------------------------------- COCO
def _build_coco(data_cfg: Mapping[str, Any], train: bool, transform: DetectionTransform):
    """data=coco: data.train_ann + data.train_images, or data.val_ann + data.val_images. Crowd boxes are
    not training targets; evaluation keeps them flagged difficult."""
    ann_key, images_key = ("train_ann", "train_images") if train else ("val_ann", "val_images")
    for key in (ann_key, images_key):
        if not data_cfg.get(key):
            raise ConfigError(f"data.{key} is not set (data=coco needs data.{ann_key} and data.{images_key})")
    classes = _class_list(data_cfg, None)
    options = _file_options(data_cfg)
    ann_file, images_dir = str(data_cfg[ann_key]), str(data_cfg[images_key])
    try:
        return COCODataset(ann_file, images_dir, classes, keep_crowd=not train, transform=transform, **options)
    except DatasetLayoutError as exc:
        key = images_key if exc.path == images_dir else ann_key
        raise ConfigError(f"data.{key}={exc.path}: {exc.problem}") from exc
