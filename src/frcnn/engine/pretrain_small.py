"""The ImageNet analogue for the built-in data: classification pre-training of the ``small`` net.

Faster R-CNN starts its shared conv layers and its per-RoI fc layers from a net pre-trained on
ImageNet classification (§3.1.3, §4: "pre-trained for ImageNet classification"). The built-in
shapes data has no such net, so this module trains one on a classification task drawn from the
same generator, on images the detection splits never contain:

* an image is a ``CROP_SIZE_PX`` x ``CROP_SIZE_PX`` picture drawn as the detection images are
  (smooth background, clutter lines and blobs) holding one shape of a random class and colour
  near its centre, or none; label 1..5 is the shape's class (``CLASS_NAMES``), 0 "clutter only";
* image ``i`` comes from ``numpy.random.default_rng([seed, PRETRAIN_STREAM_ID, i])``; the
  detection splits use stream ids 0, 1, 2 (``SPLIT_IDS``), so no image is shared (and the crops
  are 112 px, the detection images 256 px);
* the net is the detector's own: ``body`` (stride 16: a 112-px crop gives a 7 x 7 map, the RoI
  pooling size) then ``head`` (fc1, fc2) then a 6-way linear classifier, dropped when the
  weights are saved, as the detector drops ImageNet's fc8.

``PretrainConfig.data="voclike"`` does the same for the VOC-like data: crops of its 20 classes
(:mod:`frcnn.data.voclike.crops`), a 21-way classifier, ``backbone.weights=builtin_voclike``.

Training is deterministic: fixed seeds, ``torch.use_deterministic_algorithms``, one thread, the
images generated in order in the main process: a rerun on the same machine and library versions
gives the same weights (``meta.weights_sha256``; the file's own sha256 also covers the source files'
hashes in its metadata). The saved file is
``{"state_dict": {"body.*", "head.*": float16 tensors}, "meta": {...}}``, read with
``torch.load(weights_only=True)`` by ``build_backbone("small", weights="builtin")`` (or ``"builtin_voclike"``).
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn.data.synthetic import (
    CLASS_NAMES,
    SPLIT_IDS,
    draw_background,
    draw_clutter,
    draw_shape_mask,
    pick_colour,
    sample_size_px,
    shape_extent_wh,
)
from frcnn.data.voclike.crops import render_voclike_crop
from frcnn.data.voclike.voc2007 import CLASS_NAMES as VOCLIKE_CLASSES
from frcnn.modeling.backbone import WEIGHTS_FROM_DETECTOR, Backbone, build_backbone
from frcnn.modeling.faster_rcnn import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CROP_SIZE_PX",
    "PRETRAIN_STREAM_ID",
    "PretrainConfig",
    "build_classifier",
    "pretrain_small_backbone",
    "render_crop",
    "save_pretrained",
    "weights_sha256",
]

PRETRAIN_STREAM_ID = 7  # numpy stream id of the pre-training images; the detection splits use SPLIT_IDS
EVAL_INDEX_OFFSET = 10_000_000  # held-out images: indices from here on (training never gets this far)
CROP_SIZE_PX = 112  # 112 / 16 = 7: the body's map of a crop is the head's 7 x 7 RoI input
NUM_CLASSES = len(CLASS_NAMES) + 1  # shapes: 0 clutter only, 1..5 the shape classes
PRETRAIN_DATA = {"shapes": NUM_CLASSES, "voclike": len(VOCLIKE_CLASSES) + 1}  # data -> classifier outputs
assert PRETRAIN_STREAM_ID not in SPLIT_IDS.values()


@dataclass(frozen=True)
class PretrainConfig:
    """What the pre-training does; saved with the weights as their metadata."""

    seed: int = 0
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3  # AdamW, cosine decay to 0
    weight_decay: float = 1e-4
    min_size_px: int = 40  # object size (longer side), log-uniform as in the detection data
    max_size_px: int = 108
    background_fraction: float = 1 / 6  # share of "clutter only" images
    num_eval: int = 600
    data: str = "shapes"  # shapes: the shape crops below; voclike: frcnn.data.voclike.crops (20 classes)


def render_crop(cfg: PretrainConfig, index: int) -> tuple[np.ndarray, int]:
    """Image ``index`` of the pre-training stream -> (uint8 [112, 112, 3], label in 0..5; voclike: 0..20).

    Background and clutter as in the detection images; the shape (if any) is centred up to a
    jitter of a quarter of the free margin, so it fills the crop as an object fills the RoI the
    detector's head sees after RoI pooling.
    """
    if cfg.data == "voclike":
        return render_voclike_crop(cfg.seed, index, CROP_SIZE_PX)
    rng = np.random.default_rng([cfg.seed, PRETRAIN_STREAM_ID, index])
    size = (CROP_SIZE_PX, CROP_SIZE_PX)
    image = draw_background(rng, size)
    draw_clutter(rng, image, max_blob_size_px=max(3, cfg.min_size_px // 3))
    if rng.uniform() < cfg.background_fraction:
        return np.array(image, dtype=np.uint8), 0
    label = int(rng.integers(0, len(CLASS_NAMES))) + 1
    w, h, params = shape_extent_wh(rng, CLASS_NAMES[label - 1], sample_size_px(rng, cfg.min_size_px, cfg.max_size_px))
    x0 = int(round((CROP_SIZE_PX - w) / 2 + rng.uniform(-0.25, 0.25) * (CROP_SIZE_PX - w)))
    y0 = int(round((CROP_SIZE_PX - h) / 2 + rng.uniform(-0.25, 0.25) * (CROP_SIZE_PX - h)))
    local_bg = np.asarray(image, dtype=np.float32)[y0 : y0 + h, x0 : x0 + w].reshape(-1, 3).mean(axis=0)
    image.paste(pick_colour(rng, [local_bg]), (x0, y0, x0 + w, y0 + h), mask=draw_shape_mask(CLASS_NAMES[label - 1], w, h, params))
    return np.array(image, dtype=np.uint8), label


def crop_batch(cfg: PretrainConfig, indices: range) -> tuple[Tensor, Tensor]:
    """Images ``indices`` -> (normalised float32 [B, 3, 112, 112], labels int64 [B]).

    Normalised with ImageNet mean / std, as :class:`frcnn.modeling.faster_rcnn.FasterRCNN` normalises its input.
    """
    images, labels = zip(*(render_crop(cfg, i) for i in indices))
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch - mean) / std, torch.tensor(labels, dtype=torch.int64)


def build_classifier(backbone: Backbone, num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """body -> head -> linear: [B, 3, 112, 112] -> [B, 128, 7, 7] -> [B, 256] -> [B, num_classes]."""
    classifier = nn.Linear(backbone.representation_size, num_classes)
    nn.init.normal_(classifier.weight, 0.0, 0.01)
    nn.init.zeros_(classifier.bias)
    return nn.Sequential(backbone.body, backbone.head, classifier)


def _accuracy(net: nn.Module, cfg: PretrainConfig, batch_size: int = 100) -> float:
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, cfg.num_eval, batch_size):
            stop = min(start + batch_size, cfg.num_eval)
            images, labels = crop_batch(cfg, range(EVAL_INDEX_OFFSET + start, EVAL_INDEX_OFFSET + stop))
            correct += int((net(images).argmax(1) == labels).sum())
    net.train()
    return correct / max(1, cfg.num_eval)


def pretrain_small_backbone(
    cfg: PretrainConfig, log: Callable[[str], None] = print, log_every: int = 50
) -> tuple[Backbone, dict]:
    """Train the ``small`` backbone + a linear classifier on the crops; -> (backbone, metrics).

    metrics: ``train_loss`` (mean of the last 50 steps), ``eval_accuracy`` on ``num_eval``
    held-out crops (0.0 when ``num_eval`` is 0).
    """
    torch.manual_seed(cfg.seed)
    backbone = build_backbone("small", weights=WEIGHTS_FROM_DETECTOR)  # random init, no warning
    if cfg.data not in PRETRAIN_DATA:
        raise ValueError(f"PretrainConfig.data={cfg.data!r}; allowed: {sorted(PRETRAIN_DATA)}")
    net = build_classifier(backbone, PRETRAIN_DATA[cfg.data])
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + float(np.cos(np.pi * min(step, cfg.steps) / cfg.steps)))
    )
    net.train()
    recent: list[float] = []
    for step in range(cfg.steps):
        images, labels = crop_batch(cfg, range(step * cfg.batch_size, (step + 1) * cfg.batch_size))
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = (recent + [float(loss.detach())])[-50:]
        if log_every and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{cfg.steps}: loss {np.mean(recent):.4f}")
    metrics = {"train_loss": float(np.mean(recent)) if recent else float("nan"),
               "eval_accuracy": _accuracy(net, cfg) if cfg.num_eval else 0.0}
    return backbone, metrics


def weights_sha256(state_dict: dict[str, Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in key order."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key].contiguous()
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def save_pretrained(backbone: Backbone, cfg: PretrainConfig, metrics: dict, script: Path, out: Path) -> str:
    """Write the backbone's weights (float16) and their metadata to ``out``; -> the file's sha256.

    meta: script (its file name), script_sha256 and module_sha256 (this file: the script is a thin
    CLI over it), config (PretrainConfig fields), metrics, torch / numpy versions, weights_sha256
    (of the float16 tensors, see :func:`weights_sha256`).
    """
    state = {k: (v.half() if v.is_floating_point() else v).clone() for k, v in backbone.state_dict().items()}
    meta = {
        "script": script.name,
        "script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
        "module_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "config": asdict(cfg),
        "metrics": metrics,
        "torch_version": str(torch.__version__),  # a TorchVersion object: torch.load(weights_only=True) refuses it
        "numpy_version": str(np.__version__),
        "weights_sha256": weights_sha256(state),
        "dtype": "float16",
    }
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "meta": meta}, buffer)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def make_deterministic(threads: int = 1) -> None:
    """Bit-exact reruns on one machine: deterministic kernels and a fixed thread count."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start
