"""VGG-16 (Simonyan & Zisserman): conv1_1..conv5_3 shared, fc6/fc7 per RoI; torchvision key map."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from frcnn.layers.max_pool import MaxPool2x2
from frcnn.modeling.backbone.base import Backbone, conv_layer, fc6_fc7_head

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
            layers[f"conv{stage}_{k}"] = conv_layer(in_ch, out_ch, 3, padding=1)
            layers[f"relu{stage}_{k}"] = nn.ReLU(inplace=True)
            in_ch = out_ch
        if stage < 5:
            layers[f"pool{stage}"] = MaxPool2x2()  # nn.MaxPool2d(2, 2), faster without gradient on CPUs
    return nn.Sequential(layers)


def build_vgg16(num_hidden: int | None, dropout: float) -> Backbone:
    """VGG-16: 13 shared conv layers (§3.2), fc6/fc7 on 7x7 RoIs; conv1_1..conv2_2 frozen (§3.1.3)."""
    hidden = num_hidden or 4096
    return Backbone(
        body=_vgg16_body(),
        head=fc6_fc7_head(512 * 7 * 7, hidden, dropout),  # [R, 512, 7, 7] -> [R, hidden]
        out_channels=512,
        representation_size=hidden,
        roi_output_size=7,
        frozen_prefix=("conv1_1", "conv1_2", "conv2_1", "conv2_2"),
        name="vgg16",
    )


# Caffe layer names of VGG-16 (the authors' VGG16.v2.caffemodel, and caffe -> pytorch conversions
# that keep them: "conv1_1.weight", "fc6.weight", ...); fc8 is the ImageNet classifier, dropped.
_VGG16_CAFFE_CONVS = tuple(f"conv{stage}_{k}" for stage, widths in _VGG16_STAGES for k in range(1, len(widths) + 1))


def map_vgg16_key(key: str) -> str | None:
    module, _, leaf = key.rpartition(".")  # "features.0.weight" -> ("features.0", "weight")
    if module in VGG16_TORCHVISION_KEYS:
        target = VGG16_TORCHVISION_KEYS[module]
        return None if target is None else f"{target}.{leaf}"
    if module in _VGG16_CAFFE_CONVS:
        return f"body.{key}"
    if module in ("fc6", "fc7"):
        return f"head.{key}"
    return None if module == "fc8" else key  # unknown: reported as unexpected
