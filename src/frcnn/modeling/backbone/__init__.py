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
folded to our input convention by :func:`frcnn.checkpoint.pretrained.fold_caffe_input`; or a state dict saved
from a :class:`Backbone` with "body."/"head." keys), or nowhere (``None``: random init, with a
warning -- the paper always starts from ImageNet pre-training, §3.1.3).

Feature-map size for an ``H x W`` image:

* ``vgg16``: ``floor(H / 16) x floor(W / 16)`` (four 2x2/2 max pools floor odd sizes);
* ``zf``, ``resnet50_c4``, ``small``: ``ceil(H / 16) x ceil(W / 16)`` (every stride-2 layer is
  padded so that it maps n -> ceil(n / 2)).
"""

from frcnn.modeling.backbone.base import Backbone, freeze_prefix, has_training_batchnorm, set_trainable
from frcnn.modeling.backbone.build import (
    BUILTIN_SMALL_VOCLIKE_WEIGHTS,
    BUILTIN_SMALL_WEIGHTS,
    BUILTIN_WEIGHT_NAMES,
    WEIGHTS_BUILTIN,
    WEIGHTS_BUILTIN_VOCLIKE,
    WEIGHTS_FROM_DETECTOR,
    available_backbones,
    backbones_with_builtin_weights,
    build_backbone,
    check_weights_available,
)
from frcnn.modeling.backbone.weights import load_backbone_weights
from frcnn.modeling.backbone.zf import WithinChannelLRN

__all__ = [
    "Backbone",
    "WithinChannelLRN",
    "BUILTIN_SMALL_VOCLIKE_WEIGHTS",
    "BUILTIN_SMALL_WEIGHTS",
    "BUILTIN_WEIGHT_NAMES",
    "WEIGHTS_BUILTIN",
    "WEIGHTS_BUILTIN_VOCLIKE",
    "WEIGHTS_FROM_DETECTOR",
    "available_backbones",
    "backbones_with_builtin_weights",
    "build_backbone",
    "check_weights_available",
    "freeze_prefix",
    "has_training_batchnorm",
    "load_backbone_weights",
    "set_trainable",
]
