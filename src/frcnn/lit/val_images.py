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

from frcnn.atomic_io import atomic_write_bytes
from frcnn.data.transforms import image_scales
from frcnn.drawing import draw_ground_truth_and_detections, tensor_to_pil


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


@torch.no_grad()
def detection_pictures(model, dataloader, class_names: list[str], num_images: int, device: torch.device,
                       score_thresh: float = 0.5) -> list[np.ndarray]:
    """The first ``num_images`` images of ``dataloader`` with gt and the model's detections drawn."""
    pictures: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    for images, targets in dataloader:
        detections = model([image.to(device) for image in images], image_scales=image_scales(images, targets))
        for image, target, found in zip(images, targets, detections):
            if len(pictures) >= num_images:
                break
            pictures.append(validation_picture(image, target, found, class_names, score_thresh))
        if len(pictures) >= num_images:
            break
    model.train(was_training)
    return pictures


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
