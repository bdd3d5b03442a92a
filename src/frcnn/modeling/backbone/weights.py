"""Loading a state dict into a Backbone: reading the file safely, mapping foreign key layouts, strict key
and shape checks."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from frcnn.checkpoint.pretrained import fold_caffe_input
from frcnn.checkpoint.safe_load import read_torch_file
from frcnn.modeling.backbone.base import Backbone


def fold_caffe_first_conv(state: Mapping[str, Tensor], first: str | None) -> tuple[Mapping[str, Tensor], bool]:
    """A Caffe-layout state dict (it holds ``<first>.weight``, the Caffe name of the network's first
    conv) with that conv folded to our input convention; others unchanged.
    -> (state, whether it was a Caffe layout)."""
    if first is None or f"{first}.weight" not in state or f"{first}.bias" not in state:
        return state, False
    state = dict(state)
    weight, bias = fold_caffe_input(state[f"{first}.weight"], state[f"{first}.bias"])
    state[f"{first}.weight"], state[f"{first}.bias"] = weight, bias
    return state, True


def _unwrap(obj: Any, path: Path) -> Mapping[str, Tensor]:
    """Accept a bare state dict or a checkpoint {"state_dict": ...} / {"model": ...}."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path}: expected a state dict (mapping of name -> tensor), got {type(obj).__name__}")
    return obj


def read_state_dict(path: str | os.PathLike[str]) -> Mapping[str, Tensor]:
    """The state dict in ``path`` (bare, or under "state_dict" / "model"), read by the restricted reader."""
    path = Path(path).expanduser()
    # restricted reader (FileNotFoundError naming the file when it is missing), memory-mapped (no second in-RAM copy of a 0.5 GB VGG file); legacy
    # (pre-1.6, non-zip) files such as older torchvision .pth files fall back to a plain read
    return _unwrap(read_torch_file(path, "backbone weights file", mmap=True), path)


def _to_backbone_keys(state: Mapping[str, Tensor], map_key: Callable[[str], str | None] | None) -> dict[str, Tensor]:
    """Our own "body."/"head." dicts pass through; anything else goes through ``map_key``."""
    if map_key is None or all(k.startswith(("body.", "head.")) for k in state):
        return dict(state)
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        target = map_key(key)
        if target is not None:
            mapped[target] = value
    return mapped


def _preview(keys: list[str], n: int = 5) -> str:
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_backbone_weights(backbone: Backbone, state: Mapping[str, Tensor], map_key=None, source: str = "") -> None:
    """Copy ``state`` into ``backbone.body``/``head``, failing loudly on any key or shape mismatch.

    ``state`` is either our own "body."/"head." state dict or a flat one that ``map_key``
    translates (torchvision layout). ``num_batches_tracked`` entries are optional both ways
    (FrozenBatchNorm2d has none).
    """
    mapped = _to_backbone_keys(state, map_key)
    expected = backbone.state_dict()
    optional = {k for k in set(mapped) | set(expected) if k.endswith("num_batches_tracked")}
    mapped = {k: v for k, v in mapped.items() if k in expected or k not in optional}
    missing = sorted(k for k in expected if k not in mapped and k not in optional)
    unexpected = sorted(k for k in mapped if k not in expected)
    shapes = sorted(
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in mapped.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        raise RuntimeError(
            f"backbone {backbone.name!r}: weights {source or '<state dict>'} do not match "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} shape mismatches). "
            f"missing: [{_preview(missing)}]; unexpected: [{_preview(unexpected)}]; "
            f"shape: [{_preview(shapes)}]"
        )
    backbone.modules_dict().load_state_dict(mapped, strict=False)
