"""ZF net (Zeiler & Fergus), as the authors' Caffe model: conv1..conv5 shared, fc6/fc7 per RoI."""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from frcnn.modeling.backbone.base import Backbone, conv_layer, fc6_fc7_head

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
            conv1=conv_layer(3, 96, 7, stride=2, padding=3),
            relu1=nn.ReLU(inplace=True),
            norm1=WithinChannelLRN(),
            pool1=nn.MaxPool2d(3, stride=2, padding=1),
            conv2=conv_layer(96, 256, 5, stride=2, padding=2),
            relu2=nn.ReLU(inplace=True),
            norm2=WithinChannelLRN(),
            pool2=nn.MaxPool2d(3, stride=2, padding=1),
            conv3=conv_layer(256, 384, 3, padding=1),
            relu3=nn.ReLU(inplace=True),
            conv4=conv_layer(384, 384, 3, padding=1),
            relu4=nn.ReLU(inplace=True),
            conv5=conv_layer(384, 256, 3, padding=1),
            relu5=nn.ReLU(inplace=True),
        )
    )


def build_zf(num_hidden: int | None, dropout: float) -> Backbone:
    """ZF: 5 shared conv layers, fc6/fc7 on 6x6 RoIs (py-faster-rcnn); all layers tuned (§3.1.3)."""
    hidden = num_hidden or 4096
    return Backbone(
        body=_zf_body(),
        head=fc6_fc7_head(256 * 6 * 6, hidden, dropout),  # [R, 256, 6, 6] -> [R, hidden]
        out_channels=256,
        representation_size=hidden,
        roi_output_size=6,
        frozen_prefix=(),
        name="zf",
    )


_ZF_BODY_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
_ZF_HEAD_LAYERS = ("fc6", "fc7")


def map_zf_key(key: str) -> str | None:
    """Flat ZF keys (e.g. converted from Caffe): convN.* -> body.convN.*, fc6/fc7.* -> head.*, fc8 dropped."""
    layer = key.split(".", 1)[0]
    if layer in _ZF_BODY_LAYERS:
        return f"body.{key}"
    if layer in _ZF_HEAD_LAYERS:
        return f"head.{key}"
    return None if layer == "fc8" else key
