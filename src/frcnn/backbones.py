"""Backbones: the shared convolutional layers and the detector's per-RoI head.

Faster R-CNN (Ren et al., 2015) splits an ImageNet classification net in two:

* ``body`` -- the convolutional layers shared by the RPN and the Fast R-CNN detector (§3.2).
  Their last layer has total stride 16 (ZF: conv5, VGG-16: conv5_3, ResNet-50 C4: layer3), so
  one feature-map cell is a 16-pixel step on the (rescaled) image (§3.1.1).
* ``head`` -- the layers the detector runs on every RoI-pooled region (fc6, fc7 for ZF/VGG,
  ResNet's conv5_x / layer4 for the C4 variant), producing one vector per RoI on which the
  detector's classification and box-regression layers sit.

``build_backbone(name, weights)`` returns both halves in a :class:`Backbone`. Weights come from
torchvision's ImageNet models ("imagenet"), from the weights shipped with the package
("builtin": the ``small`` net pre-trained on generated shape crops by
scripts/pretrain_small_backbone.py, the built-in data's ImageNet analogue), from a local ``.pth``
file (a torchvision full-model state dict, mapped by the explicit tables below; a Caffe-converted
VGG-16 / ZF with the Caffe layer names ``conv1_1`` .. ``fc7`` / ``conv1`` .. ``fc7``, its first conv
folded to our input convention by :func:`frcnn.pretrained.fold_caffe_input`; or a state dict saved
from a :class:`Backbone` with "body."/"head." keys), or nowhere (``None``: random init, with a
warning -- the paper always starts from ImageNet pre-training, §3.1.3).

Feature-map size for an ``H x W`` image:

* ``vgg16``: ``floor(H / 16) x floor(W / 16)`` (four 2x2/2 max pools floor odd sizes);
* ``zf``, ``resnet50_c4``, ``small``: ``ceil(H / 16) x ceil(W / 16)`` (every stride-2 layer is
  padded so that it maps n -> ceil(n / 2)).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn.max_pool import MaxPool2x2
from frcnn.onednn_linear import OneDNNLinear
from frcnn.pretrained import WeightsUnavailableError, ensure_torchvision_file, fold_caffe_input, unavailable_message
from frcnn.safe_load import read_torch_file

logger = logging.getLogger(__name__)

__all__ = [
    "Backbone",
    "WithinChannelLRN",
    "BUILTIN_SMALL_WEIGHTS",
    "available_backbones",
    "backbones_with_builtin_weights",
    "build_backbone",
    "check_weights_available",
    "freeze_prefix",
    "load_backbone_weights",
    "set_trainable",
]


@dataclass
class Backbone:
    """The two trainable halves of a Faster R-CNN feature extractor.

    body: image [B, 3, H, W] -> features [B, out_channels, ~H/16, ~W/16] (total stride ``stride``).
    head: RoI-pooled features [R, out_channels, P, P] -> [R, representation_size], P = roi_output_size.
    frozen_prefix: names of body sub-modules the paper never trains (see :func:`freeze_prefix`).
    """

    body: nn.Module
    head: nn.Module
    out_channels: int
    representation_size: int
    roi_output_size: int
    stride: int = 16
    frozen_prefix: tuple[str, ...] = ()
    name: str = ""

    def modules_dict(self) -> nn.ModuleDict:
        """A ModuleDict view {"body", "head"} sharing (not copying) the two modules."""
        return nn.ModuleDict({"body": self.body, "head": self.head})

    def state_dict(self) -> dict[str, Tensor]:
        """State dict with "body."/"head." keys; ``build_backbone(name, weights=path)`` reloads it."""
        return dict(self.modules_dict().state_dict())


# ----------------------------------------------------------------------------------------------
# Freezing
# ----------------------------------------------------------------------------------------------

_BN_LOCK_ATTR = "_frcnn_bn_frozen"
_BN_HOOK_ATTR = "_frcnn_bn_hooked"


def _keep_bn_in_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: a frozen BatchNorm always runs in eval mode (running stats, no update)."""
    if getattr(module, _BN_LOCK_ATTR, False):
        module.training = False


def _lock_batchnorm(bn: nn.modules.batchnorm._BatchNorm, locked: bool) -> None:
    if locked and not getattr(bn, _BN_HOOK_ATTR, False):
        bn.register_forward_pre_hook(_keep_bn_in_eval)
        setattr(bn, _BN_HOOK_ATTR, True)
    setattr(bn, _BN_LOCK_ATTR, locked)
    if locked:
        bn.eval()


def has_training_batchnorm(module: nn.Module) -> bool:
    """Whether a BatchNorm inside ``module`` would use batch statistics now (in training mode
    and not locked by :func:`set_trainable`)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and not getattr(m, _BN_LOCK_ATTR, False)
        for m in module.modules()
    )


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """Switch ``requires_grad`` on every parameter of ``module``; freezing also locks its BatchNorms.

    Used for the shared conv layers the paper keeps fixed: conv1_1..conv2_2 of VGG-16 (§3.1.3)
    and the shared layers in steps 3-4 of the 4-step alternating training (§3.2).

    A frozen BatchNorm must use (and never update) its running statistics, even when a parent
    calls ``.train()``. Choice made here: each BatchNorm layer is put in eval mode and gets a
    forward pre-hook that resets ``.training = False`` right before every forward while the lock
    is on. Unlike swapping in ``FrozenBatchNorm2d`` this keeps parameter identities (optimisers
    built earlier stay valid) and state-dict keys (incl. ``num_batches_tracked``) unchanged, and
    is reversible: ``set_trainable(m, True)`` lifts the lock; the layer's mode then follows the
    next ``.train()`` / ``.eval()`` call. ``FrozenBatchNorm2d`` layers (ResNet) have no
    parameters and stay frozen either way.
    """
    for p in module.parameters():
        p.requires_grad_(trainable)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _lock_batchnorm(m, locked=not trainable)


def freeze_prefix(backbone: Backbone) -> None:
    """Freeze the body sub-modules named in ``backbone.frozen_prefix`` (see :func:`set_trainable`).

    Each entry is a dotted sub-module name of ``backbone.body`` ("conv1_1", "layer1"), so a
    parameter ``n`` is frozen iff ``n == p`` or ``n`` starts with ``p + "."`` -- "conv1" never
    matches "conv1_1". Paper §3.1.3: "We tune all layers of the ZF net, and conv3_1 and up for
    the VGG net to conserve memory."
    """
    for prefix in backbone.frozen_prefix:
        set_trainable(backbone.body.get_submodule(prefix), False)


# ----------------------------------------------------------------------------------------------
# Shared layer builders
# ----------------------------------------------------------------------------------------------


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True) -> nn.Conv2d:
    """Conv with He init (fan_out, ReLU), as torchvision initialises VGG/ResNet convs."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _linear(in_features: int, out_features: int, std: float | None = 0.01) -> OneDNNLinear:
    """Linear layer: N(0, std) weights (torchvision's VGG fc init) or He init when std is None;
    its CPU products run in oneDNN (:mod:`frcnn.onednn_linear`)."""
    fc = OneDNNLinear(in_features, out_features)
    if std is None:
        nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
    else:
        nn.init.normal_(fc.weight, 0.0, std)
    nn.init.zeros_(fc.bias)
    return fc


def _fc6_fc7_head(in_features: int, hidden: int, dropout: float) -> nn.Sequential:
    """fc6, fc7 of ZF/VGG run per RoI: [R, C, P, P] -> flatten [R, C*P*P] -> [R, hidden]."""
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(1),
            fc6=_linear(in_features, hidden),
            relu6=nn.ReLU(inplace=True),
            drop6=nn.Dropout(dropout),
            fc7=_linear(hidden, hidden),
            relu7=nn.ReLU(inplace=True),
            drop7=nn.Dropout(dropout),
        )
    )


# ----------------------------------------------------------------------------------------------
# VGG-16
# ----------------------------------------------------------------------------------------------

# torchvision vgg16 key prefix -> our key prefix. Explicit, so a local vgg16-397923af.pth loads.
# features.{i} indices are torchvision's Sequential positions (ReLUs / pools carry no weights);
# features.30 is pool5, dropped so conv5_3 (stride 16) is the last shared layer.
VGG16_TORCHVISION_KEYS: dict[str, str | None] = {
    "features.0": "body.conv1_1",
    "features.2": "body.conv1_2",
    "features.5": "body.conv2_1",
    "features.7": "body.conv2_2",
    "features.10": "body.conv3_1",
    "features.12": "body.conv3_2",
    "features.14": "body.conv3_3",
    "features.17": "body.conv4_1",
    "features.19": "body.conv4_2",
    "features.21": "body.conv4_3",
    "features.24": "body.conv5_1",
    "features.26": "body.conv5_2",
    "features.28": "body.conv5_3",
    "classifier.0": "head.fc6",  # Linear(512*7*7 -> 4096)
    "classifier.3": "head.fc7",  # Linear(4096 -> 4096)
    "classifier.6": None,  # fc8, the 1000-way ImageNet classifier: replaced by the detector's layers
}

# (stage, output channels of each conv) for VGG-16 ("configuration D").
_VGG16_STAGES: tuple[tuple[int, tuple[int, ...]], ...] = (
    (1, (64, 64)),
    (2, (128, 128)),
    (3, (256, 256, 256)),
    (4, (512, 512, 512)),
    (5, (512, 512, 512)),
)


def _vgg16_body() -> nn.Sequential:
    """VGG-16's 13 conv layers shared with the RPN, conv1_1 .. conv5_3 + ReLU, no pool5.

    [B, 3, H, W] -> [B, 512, floor(H/16), floor(W/16)] (pool1..pool4 are 2x2 stride 2).
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_ch = 3
    for stage, widths in _VGG16_STAGES:
        for k, out_ch in enumerate(widths, start=1):
            layers[f"conv{stage}_{k}"] = _conv(in_ch, out_ch, 3, padding=1)
            layers[f"relu{stage}_{k}"] = nn.ReLU(inplace=True)
            in_ch = out_ch
        if stage < 5:
            layers[f"pool{stage}"] = MaxPool2x2()  # nn.MaxPool2d(2, 2), faster without gradient on CPUs
    return nn.Sequential(layers)


def _build_vgg16(num_hidden: int | None, dropout: float) -> Backbone:
    """VGG-16: 13 shared conv layers (§3.2), fc6/fc7 on 7x7 RoIs; conv1_1..conv2_2 frozen (§3.1.3)."""
    hidden = num_hidden or 4096
    return Backbone(
        body=_vgg16_body(),
        head=_fc6_fc7_head(512 * 7 * 7, hidden, dropout),  # [R, 512, 7, 7] -> [R, hidden]
        out_channels=512,
        representation_size=hidden,
        roi_output_size=7,
        frozen_prefix=("conv1_1", "conv1_2", "conv2_1", "conv2_2"),
        name="vgg16",
    )


# Caffe layer names of VGG-16 (the authors' VGG16.v2.caffemodel, and caffe -> pytorch conversions
# that keep them: "conv1_1.weight", "fc6.weight", ...); fc8 is the ImageNet classifier, dropped.
_VGG16_CAFFE_CONVS = tuple(f"conv{stage}_{k}" for stage, widths in _VGG16_STAGES for k in range(1, len(widths) + 1))


def _map_vgg16_key(key: str) -> str | None:
    module, _, leaf = key.rpartition(".")  # "features.0.weight" -> ("features.0", "weight")
    if module in VGG16_TORCHVISION_KEYS:
        target = VGG16_TORCHVISION_KEYS[module]
        return None if target is None else f"{target}.{leaf}"
    if module in _VGG16_CAFFE_CONVS:
        return f"body.{key}"
    if module in ("fc6", "fc7"):
        return f"head.{key}"
    return None if module == "fc8" else key  # unknown: reported as unexpected


# ----------------------------------------------------------------------------------------------
# ZF
# ----------------------------------------------------------------------------------------------


class WithinChannelLRN(nn.Module):
    """Caffe's LRN with ``norm_region: WITHIN_CHANNEL`` as in py-faster-rcnn's ZF model.

    y = x / (1 + alpha * mean_{size x size window}(x^2)) ** beta, per channel (zero padded, the
    window mean divides by size^2). Shape preserving: [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: Tensor) -> Tensor:
        mean_sq = F.avg_pool2d(x * x, self.size, stride=1, padding=self.size // 2, count_include_pad=True)
        return x / (1.0 + self.alpha * mean_sq).pow(self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}"


def _zf_body() -> nn.Sequential:
    """ZF net's 5 conv layers (Zeiler & Fergus 2014; the paper's "ZF" model, §4).

    Padded so that every stride-2 layer maps n -> ceil(n/2):
    [B, 3, H, W] -> conv1 /2 -> pool1 /2 -> conv2 /2 -> pool2 /2 -> [B, 256, ceil(H/16), ceil(W/16)].
    """
    return nn.Sequential(
        OrderedDict(
            conv1=_conv(3, 96, 7, stride=2, padding=3),
            relu1=nn.ReLU(inplace=True),
            norm1=WithinChannelLRN(),
            pool1=nn.MaxPool2d(3, stride=2, padding=1),
            conv2=_conv(96, 256, 5, stride=2, padding=2),
            relu2=nn.ReLU(inplace=True),
            norm2=WithinChannelLRN(),
            pool2=nn.MaxPool2d(3, stride=2, padding=1),
            conv3=_conv(256, 384, 3, padding=1),
            relu3=nn.ReLU(inplace=True),
            conv4=_conv(384, 384, 3, padding=1),
            relu4=nn.ReLU(inplace=True),
            conv5=_conv(384, 256, 3, padding=1),
            relu5=nn.ReLU(inplace=True),
        )
    )


def _build_zf(num_hidden: int | None, dropout: float) -> Backbone:
    """ZF: 5 shared conv layers, fc6/fc7 on 6x6 RoIs (py-faster-rcnn); all layers tuned (§3.1.3)."""
    hidden = num_hidden or 4096
    return Backbone(
        body=_zf_body(),
        head=_fc6_fc7_head(256 * 6 * 6, hidden, dropout),  # [R, 256, 6, 6] -> [R, hidden]
        out_channels=256,
        representation_size=hidden,
        roi_output_size=6,
        frozen_prefix=(),
        name="zf",
    )


_ZF_BODY_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
_ZF_HEAD_LAYERS = ("fc6", "fc7")


def _map_zf_key(key: str) -> str | None:
    """Flat ZF keys (e.g. converted from Caffe): convN.* -> body.convN.*, fc6/fc7.* -> head.*, fc8 dropped."""
    layer = key.split(".", 1)[0]
    if layer in _ZF_BODY_LAYERS:
        return f"body.{key}"
    if layer in _ZF_HEAD_LAYERS:
        return f"head.{key}"
    return None if layer == "fc8" else key


# ----------------------------------------------------------------------------------------------
# ResNet-50 C4
# ----------------------------------------------------------------------------------------------

# torchvision resnet50 key prefix -> our key prefix (body = conv1..layer3, head = layer4).
RESNET50_TORCHVISION_PREFIXES: dict[str, str | None] = {
    "conv1.": "body.conv1.",
    "bn1.": "body.bn1.",
    "layer1.": "body.layer1.",
    "layer2.": "body.layer2.",
    "layer3.": "body.layer3.",
    "layer4.": "head.layer4.",
    "fc.": None,  # 1000-way ImageNet classifier: replaced by the detector's layers
}


def _build_resnet50_c4(num_hidden: int | None, dropout: float) -> Backbone:
    """ResNet-50 "C4": conv1..layer3 shared (stride 16), layer4 run per 14x14 RoI.

    He et al. 2016 (ResNet, detection appendix) put Faster R-CNN's RoI pooling before conv5_x:
    head = layer4 (its first block has stride 2: 14x14 -> 7x7) + global average pool -> 2048.
    BatchNorm is FrozenBatchNorm2d (fixed ImageNet statistics: 1-2 images per batch are too few
    to estimate them); conv1 + layer1 (the stem) are frozen by :func:`freeze_prefix`.
    """
    if num_hidden not in (None, 2048):
        raise ValueError(f"resnet50_c4's representation is layer4's 2048 channels; num_hidden={num_hidden} is not supported")
    from torchvision.models import resnet50

    net = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    body = nn.Sequential(
        OrderedDict(
            conv1=net.conv1,  # [B, 3, H, W] -> [B, 64, ceil(H/2), ceil(W/2)]
            bn1=net.bn1,
            relu=net.relu,
            maxpool=net.maxpool,  # -> /4
            layer1=net.layer1,  # [B, 256, H/4, W/4]
            layer2=net.layer2,  # [B, 512, H/8, W/8]
            layer3=net.layer3,  # [B, 1024, ceil(H/16), ceil(W/16)]
        )
    )
    head = nn.Sequential(
        OrderedDict(
            layer4=net.layer4,  # [R, 1024, 14, 14] -> [R, 2048, 7, 7]
            avgpool=nn.AdaptiveAvgPool2d(1),  # -> [R, 2048, 1, 1]
            flatten=nn.Flatten(1),  # -> [R, 2048]
        )
    )
    return Backbone(
        body=body,
        head=head,
        out_channels=1024,
        representation_size=2048,
        roi_output_size=14,
        frozen_prefix=("conv1", "bn1", "layer1"),
        name="resnet50_c4",
    )


def _map_resnet50_key(key: str) -> str | None:
    for prefix, target in RESNET50_TORCHVISION_PREFIXES.items():
        if key.startswith(prefix):
            return None if target is None else target + key[len(prefix) :]
    return key  # unknown: reported as unexpected


# ----------------------------------------------------------------------------------------------
# Small (CPU) net
# ----------------------------------------------------------------------------------------------

_SMALL_WIDTHS = (32, 64, 96, 128)


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    bn = nn.BatchNorm2d(out_ch)  # default init: weight 1, bias 0
    return [_conv(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), bn, nn.ReLU(inplace=True)]


def _build_small(num_hidden: int | None, dropout: float) -> Backbone:
    """A small stride-16 net for fast CPU runs (not from the paper; same interfaces as VGG/ZF).

    A stem (conv3x3 s2-BN-ReLU) then 3 stages, each (conv3x3 s2-BN-ReLU, conv3x3-BN-ReLU);
    widths 32, 64, 96, 128: [B, 3, H, W] -> [B, 128, ceil(H/16), ceil(W/16)].
    Head: [R, 128, 7, 7] -> [R, hidden=256]. The stem has one conv, not two: the second conv
    at 1/2 resolution cost 25% of the body's time (106 -> 81 ms fwd+bwd, 4 x 256², 2 cores).
    """
    hidden = num_hidden or 256
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    in_ch = 3
    for i, out_ch in enumerate(_SMALL_WIDTHS, start=1):
        second = _conv_bn_relu(out_ch, out_ch, 1) if i > 1 else []
        stages[f"stage{i}"] = nn.Sequential(*_conv_bn_relu(in_ch, out_ch, 2), *second)
        in_ch = out_ch
    head = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(1),
            fc1=_linear(in_ch * 7 * 7, hidden, std=None),
            relu1=nn.ReLU(inplace=True),
            fc2=_linear(hidden, hidden, std=None),
            relu2=nn.ReLU(inplace=True),
        )
    )
    return Backbone(
        body=nn.Sequential(stages),
        head=head,
        out_channels=in_ch,
        representation_size=hidden,
        roi_output_size=7,
        frozen_prefix=(),
        name="small",
    )


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


# Package data written by scripts/pretrain_small_backbone.py (frcnn/pretrain.py): the small net
# (body and head) trained to classify generated shape crops, float16, {"state_dict", "meta"}.
BUILTIN_SMALL_WEIGHTS = Path(__file__).resolve().parent / "weights" / "small_shapes_pretrained.pt"
WEIGHTS_BUILTIN = "builtin"


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
    # The package's own pre-trained weights for weights="builtin"; None = none shipped.
    builtin: Path | None = None


def _vgg16_imagenet() -> Any:
    from torchvision.models import VGG16_Weights

    return VGG16_Weights.IMAGENET1K_V1


def _resnet50_imagenet() -> Any:
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V1


_SPECS: dict[str, _Spec] = {
    "vgg16": _Spec(_build_vgg16, _map_vgg16_key, _vgg16_imagenet,
                   "torchvision vgg16 (features.*/classifier.*) or Caffe VGG16 (conv1_1..conv5_3.*, fc6/fc7.*)",
                   caffe_first_conv="conv1_1"),
    "zf": _Spec(_build_zf, _map_zf_key, None, "Caffe / py-faster-rcnn ZF (conv1..conv5.*, fc6/fc7.*)",
                caffe_first_conv="conv1"),
    "resnet50_c4": _Spec(_build_resnet50_c4, _map_resnet50_key, _resnet50_imagenet, "torchvision resnet50"),
    "small": _Spec(_build_small, None, None, builtin=BUILTIN_SMALL_WEIGHTS),
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return sorted(_SPECS)


def backbones_with_builtin_weights() -> list[str]:
    """Names for which ``weights="builtin"`` is accepted (the package ships their weights)."""
    return sorted(name for name, spec in _SPECS.items() if spec.builtin is not None)


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


def check_weights_available(name: str, weights: str | os.PathLike[str] | None) -> None:
    """Start-up check, before any training: ``weights`` of backbone ``name`` can be read here.

    "imagenet": torchvision's file is in the torch hub cache or is downloaded now
    (:class:`~frcnn.pretrained.WeightsUnavailableError` naming the URL, the cache path and
    ``backbone.weights=/path/to/file.pth`` otherwise); "builtin": the package ships the file;
    a path: the file exists."""
    if name not in _SPECS or weights is None or weights == WEIGHTS_FROM_DETECTOR:
        return
    if weights == "imagenet":
        ensure_torchvision_file(name, _imagenet_enum(name, _SPECS[name]))
    elif weights == WEIGHTS_BUILTIN:
        _builtin_weights_path(name, _SPECS[name])
    elif not Path(weights).expanduser().is_file():
        raise FileNotFoundError(f"backbone.weights={weights}: no such file (backbone {name!r}); pass the path of a "
                                f"local state dict ({_describe_formats(_SPECS[name])}), imagenet, or null")


def _fetch_torchvision_state_dict(name: str, weights_enum: Any) -> Mapping[str, Tensor]:
    """torchvision's ImageNet state dict, from the torch hub cache (downloaded first if missing)."""
    return _read_state_dict(ensure_torchvision_file(name, weights_enum))


def _imagenet_state_dict(name: str, spec: _Spec) -> Mapping[str, Tensor]:
    enum = _imagenet_enum(name, spec)
    try:
        return _fetch_torchvision_state_dict(name, enum)
    except WeightsUnavailableError:
        raise
    except Exception as err:  # an unreadable cached file, ...
        raise WeightsUnavailableError(unavailable_message(name, enum, f"{type(err).__name__}: {err}")) from err


def _fold_caffe_first_conv(state: Mapping[str, Tensor], spec: _Spec) -> tuple[Mapping[str, Tensor], bool]:
    """A Caffe-layout state dict with its first conv folded to our input convention; others unchanged.
    -> (state, whether it was a Caffe layout)."""
    first = spec.caffe_first_conv
    if first is None or f"{first}.weight" not in state or f"{first}.bias" not in state:
        return state, False
    state = dict(state)
    weight, bias = fold_caffe_input(state[f"{first}.weight"], state[f"{first}.bias"])
    state[f"{first}.weight"], state[f"{first}.bias"] = weight, bias
    return state, True


def _builtin_weights_path(name: str, spec: _Spec) -> Path:
    if spec.builtin is None:
        raise ValueError(
            f"backbone {name!r}: weights='builtin' exists only for {backbones_with_builtin_weights()} "
            f"(the package's own pre-trained weights); for {name!r} pass weights='imagenet' where torchvision "
            f"has them, a local state-dict path, or null for random init"
        )
    if not spec.builtin.is_file():
        raise FileNotFoundError(
            f"backbone {name!r}: the built-in weights file {spec.builtin} is missing from the installed package; "
            f"rebuild it with `python scripts/pretrain_small_backbone.py` or reinstall frcnn"
        )
    return spec.builtin


def _unwrap(obj: Any, path: Path) -> Mapping[str, Tensor]:
    """Accept a bare state dict or a checkpoint {"state_dict": ...} / {"model": ...}."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path}: expected a state dict (mapping of name -> tensor), got {type(obj).__name__}")
    return obj


def _read_state_dict(path: str | os.PathLike[str]) -> Mapping[str, Tensor]:
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


def _describe_formats(spec: _Spec) -> str:
    return "our Backbone.state_dict() (body.*/head.*)" + (f" or {spec.flat_format}" if spec.flat_format else "")


WEIGHTS_FROM_DETECTOR = "<detector checkpoint>"  # weights value: the caller loads a saved detector's state dict next


def build_backbone(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    num_hidden: int | None = None,
    dropout: float = 0.5,
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
    """
    if name not in _SPECS:
        raise ValueError(f"unknown backbone {name!r}; available: {available_backbones()}")
    spec = _SPECS[name]
    state: Mapping[str, Tensor] | None = None
    source = ""
    from_detector = weights == WEIGHTS_FROM_DETECTOR
    if from_detector:
        weights = None
    if weights == "imagenet":  # fetch before building: fail fast and cheap
        state, source = _imagenet_state_dict(name, spec), f"torchvision {name} ImageNet"
    elif weights == WEIGHTS_BUILTIN:
        path = _builtin_weights_path(name, spec)
        state, source = _read_state_dict(path), f"built-in {path.name}"
    elif weights is not None:
        state, source = _read_state_dict(weights), str(weights)
    backbone = spec.build(num_hidden, dropout)
    if state is None:
        if not from_detector:
            logger.warning(
                "backbone %r starts from RANDOM INIT (weights=None): the paper initialises the shared conv "
                "layers from ImageNet pre-training; pass weights='imagenet' or a local state-dict path.",
                name,
            )
        return backbone
    state, from_caffe = _fold_caffe_first_conv(state, spec)
    try:
        load_backbone_weights(backbone, state, spec.map_key, source)
    except RuntimeError as err:
        raise RuntimeError(f"{err}. Accepted layouts for {name!r}: {_describe_formats(spec)}") from None
    logger.info("backbone %r: loaded weights from %s%s", name, source,
                f" (Caffe layout: {spec.caffe_first_conv} folded from BGR 0..255 input to ours)" if from_caffe else "")
    return backbone
