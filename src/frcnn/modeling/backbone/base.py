"""The Backbone type (shared conv body + per-RoI head), freezing (§3.1.3, §3.2) and the layer builders the
networks share."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from frcnn.checkpoint.pretrained import IMAGENET_MEAN, IMAGENET_STD
from frcnn.layers.onednn_linear import OneDNNLinear


@dataclass
class Backbone:
    """The two trainable halves of a Faster R-CNN feature extractor.

    body: image [B, 3, H, W] -> features [B, out_channels, ~H/16, ~W/16] (total stride ``stride``).
    head: RoI-pooled features [R, out_channels, P, P] -> [R, representation_size], P = roi_output_size.
    frozen_prefix: names of body sub-modules the paper never trains (see :func:`freeze_prefix`).
    pixel_mean / pixel_std: the input normalisation the weights were trained with (RGB in [0, 1]; torchvision's
    ImageNet values unless the net says otherwise, e.g. 0.5 / 0.5 for TensorFlow-ported timm nets).
    """

    body: nn.Module
    head: nn.Module
    out_channels: int
    representation_size: int
    roi_output_size: int
    stride: int = 16
    frozen_prefix: tuple[str, ...] = ()
    name: str = ""
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

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


def conv_layer(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True) -> nn.Conv2d:
    """Conv with He init (fan_out, ReLU), as torchvision initialises VGG/ResNet convs."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def linear_layer(in_features: int, out_features: int, std: float | None = 0.01) -> OneDNNLinear:
    """Linear layer: N(0, std) weights (torchvision's VGG fc init) or He init when std is None;
    its CPU products run in oneDNN (:mod:`frcnn.layers.onednn_linear`)."""
    fc = OneDNNLinear(in_features, out_features)
    if std is None:
        nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
    else:
        nn.init.normal_(fc.weight, 0.0, std)
    nn.init.zeros_(fc.bias)
    return fc


def fc6_fc7_head(in_features: int, hidden: int, dropout: float) -> nn.Sequential:
    """fc6, fc7 of ZF/VGG run per RoI: [R, C, P, P] -> flatten [R, C*P*P] -> [R, hidden]."""
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(1),
            fc6=linear_layer(in_features, hidden),
            relu6=nn.ReLU(inplace=True),
            drop6=nn.Dropout(dropout),
            fc7=linear_layer(hidden, hidden),
            relu7=nn.ReLU(inplace=True),
            drop7=nn.Dropout(dropout),
        )
    )
