"""ResNet-50 C4 (He et al. 2016 §4.3 / Appendix A): conv1..layer3 shared, layer4 per RoI."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn.modeling.backbone.base import Backbone

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


def build_resnet50_c4(num_hidden: int | None, dropout: float) -> Backbone:
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


def map_resnet50_key(key: str) -> str | None:
    for prefix, target in RESNET50_TORCHVISION_PREFIXES.items():
        if key.startswith(prefix):
            return None if target is None else target + key[len(prefix) :]
    return key  # unknown: reported as unexpected
