"""Validation pictures: the first few validation images with ground truth and detections drawn,
sent to the configured logger at the end of each validation epoch.

W&B: ``WandbLogger.log_image`` (key ``<stage>/val_pictures``); TensorBoard: ``add_image`` per
picture; CSV (or any other logger): PNG files under ``<logger dir>/val_pictures/``. Only global
rank 0 draws and logs.
"""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

from frcnn.inference.drawing import draw_ground_truth_and_detections, tensor_to_pil
from frcnn.utils.atomic_io import atomic_write_bytes


def validation_picture(image: torch.Tensor, target: dict, detections: dict, class_names: list[str],
                       score_thresh: float) -> np.ndarray:
    """One network-input image [3, H, W] with its gt and its detections scoring >= ``score_thresh``
    drawn: uint8 [H, W, 3]."""
    keep = detections["scores"] >= score_thresh
    return np.asarray(draw_ground_truth_and_detections(
        tensor_to_pil(image), target["boxes"].cpu(), target["labels"].cpu(), detections["boxes"][keep].cpu(),
        detections["labels"][keep].cpu(), detections["scores"][keep].cpu(), class_names))


class ValidationPictureLogger(L.Callback):
    """Collects ``num_images`` validation images with their detections (the module's
    ``validation_step`` returns the detection dicts) and logs them as pictures.

    Detections below ``score_thresh`` are not drawn.
    """

    def __init__(self, num_images: int, class_names: list[str], key: str, score_thresh: float = 0.5,
                 fallback_dir: str | Path | None = None):
        self.num_images = int(num_images)
        self.class_names = list(class_names)
        self.key = key
        self.score_thresh = float(score_thresh)
        self.fallback_dir = Path(fallback_dir) if fallback_dir is not None else None
        self._pictures: list = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._pictures = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.is_global_zero or outputs is None or len(self._pictures) >= self.num_images:
            return
        images, targets = batch
        for image, target, detections in zip(images, targets, outputs):
            if len(self._pictures) >= self.num_images:
                break
            self._pictures.append(validation_picture(image, target, detections, self.class_names, self.score_thresh))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self._pictures:
            return
        log_pictures(trainer.logger, self._pictures, self.key, trainer.global_step, self.fallback_dir)
        self._pictures = []


class PictureCollector:
    """``evaluate_split``'s ``on_batch``: draws the first ``num_images`` images with their gt and
    detections (score >= ``score_thresh``) into ``pictures``, from detections already computed."""

    def __init__(self, num_images: int, class_names: list[str], score_thresh: float = 0.5):
        self.num_images = int(num_images)
        self.class_names = list(class_names)
        self.score_thresh = float(score_thresh)
        self.pictures: list[np.ndarray] = []

    def __call__(self, images: list[torch.Tensor], targets: list[dict], detections: list[dict]) -> None:
        for image, target, found in zip(images, targets, detections):
            if len(self.pictures) >= self.num_images:
                return
            self.pictures.append(validation_picture(image.cpu(), target, found, self.class_names, self.score_thresh))


def log_pictures(logger, pictures: list[np.ndarray], key: str, step: int, fallback_dir: Path | None) -> list[Path]:
    """Send HWC uint8 pictures to the logger; loggers that take no images (CSV) get PNG files.
    Returns the files written (empty when the logger took the pictures)."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    if isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=list(pictures), step=step)
        return []
    if isinstance(logger, TensorBoardLogger):
        for index, picture in enumerate(pictures):
            logger.experiment.add_image(f"{key}/{index}", picture, global_step=step, dataformats="HWC")
        return []
    log_dir = getattr(logger, "log_dir", None) if logger else None
    out_dir = Path(log_dir) if log_dir else fallback_dir
    if out_dir is None:
        return []
    out_dir = out_dir / "val_pictures"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, picture in enumerate(pictures):
        path = out_dir / f"step{step:07d}_{index}.png"
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG")  # picture: [H, W, 3] uint8
        atomic_write_bytes(buffer.getvalue(), path)
        written.append(path)
    return written
