"""Where ImageNet initialisations come from (paper §3.1.3: shared layers start from ImageNet
pre-training): torchvision's weight files in the torch hub cache, and Caffe-converted files.

* torchvision: ``backbone.weights=imagenet`` reads ``<torch hub dir>/checkpoints/<file>``,
  downloading it first when missing. :func:`ensure_torchvision_file` does that at start-up, so a
  machine without network stops before any training with one message naming the URL, the cache
  path and ``backbone.weights=/path/to/file.pth``.
* Caffe: the authors' models (VGG-16, ZF in py-faster-rcnn) take BGR images in 0..255 with the
  per-channel mean subtracted (``CAFFE_BGR_MEAN``) and no std. frcnn feeds RGB in [0, 1]
  normalised by ImageNet mean / std (what torchvision's weights expect). :func:`fold_caffe_input`
  rewrites the first conv so that it computes, on our input, what the Caffe conv computes on
  Caffe's input: exact inside the image; at the zero-padded border our zero is the mean pixel,
  Caffe's is its mean, which differ by under 0.5 of 255.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB in [0, 1] (torchvision's ImageNet models)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (102.9801, 115.9465, 122.7717)  # py-faster-rcnn cfg.PIXEL_MEANS: B, G, R in 0..255


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights that cannot be read or fetched on this machine."""


def torchvision_file(weights_enum: Any) -> tuple[str, Path]:
    """(download URL, torch hub cache path) of a torchvision weights enum, e.g. VGG16_Weights.IMAGENET1K_V1."""
    url = str(weights_enum.url)
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def unavailable_message(backbone: str, weights_enum: Any, reason: str) -> str:
    """The one message for ImageNet weights that cannot be had: the file, where it was looked for, the fix."""
    url, cached = torchvision_file(weights_enum)
    return (f"backbone.weights=imagenet: backbone {backbone!r} needs torchvision's "
            f"{type(weights_enum).__name__}.{weights_enum.name} file {cached.name}, which is not in the torch hub "
            f"cache ({cached}) and could not be downloaded from {url} ({reason}). Without network access, copy "
            f"that file to {cached}, or pass a local state dict: backbone.weights=/path/to/{cached.name} "
            "(local path; torchvision or Caffe-converted layer names).")


def ensure_torchvision_file(backbone: str, weights_enum: Any) -> Path:
    """The cached torchvision weights file for ``weights_enum``, downloaded (hash-checked) if missing.
    Raises :class:`WeightsUnavailableError` with :func:`unavailable_message` when it cannot be had."""
    url, cached = torchvision_file(weights_enum)
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=_hash_prefix(cached.name), progress=False)
    except Exception as err:  # no network, proxy refused, DNS, a corrupt download, a read-only cache...
        reason = f"{type(err).__name__}: {err}"
        raise WeightsUnavailableError(unavailable_message(backbone, weights_enum, reason)) from err
    return cached


def _hash_prefix(file_name: str) -> str | None:
    """torchvision's file names end in the first hex digits of the file's SHA-256 (vgg16-397923af.pth)."""
    stem = file_name.rsplit(".", 1)[0]
    suffix = stem.rsplit("-", 1)[-1]
    return suffix if "-" in stem and all(c in "0123456789abcdef" for c in suffix) else None


def fold_caffe_input(weight: Tensor, bias: Tensor, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD,
                     caffe_mean=CAFFE_BGR_MEAN) -> tuple[Tensor, Tensor]:
    """First-conv weights of a Caffe model (input BGR 0..255 minus ``caffe_mean``) rewritten for
    frcnn's input (RGB, (x - pixel_mean) / pixel_std with x in [0, 1]).

    Caffe channel c (B, G, R) is our channel 2 - c: x_caffe[c] = a[c] * x_ours[2 - c] + b[c] with
    a = 255 std[2 - c], b = 255 mean[2 - c] - caffe_mean[c]. So W'[:, j] = a[2 - j] W[:, 2 - j]
    and bias' = bias + sum over (c, kh, kw) of W[:, c] b[c].
    weight [O, 3, kh, kw], bias [O] -> (weight' [O, 3, kh, kw], bias' [O]).
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"a first conv takes 3 input channels, got weight of shape {tuple(weight.shape)}")
    rgb_mean = torch.tensor(pixel_mean, dtype=torch.float64)
    rgb_std = torch.tensor(pixel_std, dtype=torch.float64)
    scale = 255.0 * rgb_std.flip(0)  # [3], per Caffe channel (B, G, R)
    shift = 255.0 * rgb_mean.flip(0) - torch.tensor(caffe_mean, dtype=torch.float64)
    w64 = weight.double()
    folded_weight = (w64 * scale.view(1, 3, 1, 1)).flip(1)
    folded_bias = bias.double() + (w64 * shift.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    return folded_weight.to(weight.dtype), folded_bias.to(bias.dtype)
