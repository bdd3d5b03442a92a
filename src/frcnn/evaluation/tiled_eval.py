"""Evaluation by tiles (``scripts/eval.py tile=400``): the split's images in their own pixels, detected by a
tiled :class:`frcnn.inference.predictor.Detector` where :func:`frcnn.evaluation.evaluate.evaluate_split`
expects a model, so the scores are those of ``frcnn-detect --tile`` on the same files."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from frcnn.inference.predictor import Detector


class TiledModel:
    """A tiled ``Detector`` as ``evaluate_split``'s model: images [3, H, W] in [0, 1] in their own pixels (the
    dataset without its rescale) -> per image {boxes [D, 4], scores [D], labels [D]} in those pixels."""

    training = False

    def __init__(self, detector: Detector):
        if detector.tile is None:
            raise ValueError("TiledModel needs a Detector made with tile=<px>")
        self.detector = detector

    def eval(self) -> TiledModel:
        return self

    def train(self, mode: bool = True) -> TiledModel:
        return self

    def __call__(self, images: Sequence[Tensor], image_scales: Sequence[float] | None = None) -> list[dict]:
        # back to the file's uint8 pixels (the loader divided them by 255): the same input as frcnn-detect's
        pixels = [image.mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy() for image in images]
        return [{"boxes": found.boxes, "scores": found.scores, "labels": found.labels}
                for found in self.detector(pixels)]


def in_original_pixels(loader: DataLoader) -> DataLoader:
    """The loader's dataset (and the parts of a concatenated one) without its transform: images and boxes in
    the files' own pixels, as the tiles are cut from them."""
    dataset = loader.dataset
    for part in getattr(dataset, "datasets", [dataset]):
        if not hasattr(part, "transform"):
            raise ValueError(f"tile=: cannot read {type(part).__name__} images in their own pixels (it has no "
                             "transform to turn off); evaluate it without tile=")
        part.transform = None
    return loader
