"""The small CPU net of the built-in data: four conv-BN-ReLU stages (stride 16) and two fc layers per RoI."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from frcnn.modeling.backbone.base import Backbone, conv_layer, linear_layer

# ----------------------------------------------------------------------------------------------
# Small (CPU) net
# ----------------------------------------------------------------------------------------------

_SMALL_WIDTHS = (32, 64, 96, 128)


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    bn = nn.BatchNorm2d(out_ch)  # default init: weight 1, bias 0
    return [conv_layer(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), bn, nn.ReLU(inplace=True)]


def build_small(num_hidden: int | None, dropout: float) -> Backbone:
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
            fc1=linear_layer(in_ch * 7 * 7, hidden, std=None),
            relu1=nn.ReLU(inplace=True),
            fc2=linear_layer(hidden, hidden, std=None),
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
