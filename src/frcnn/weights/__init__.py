"""Weights shipped with the package: small_shapes_pretrained.pt (``backbone.weights=builtin``) and
small_voclike_pretrained.pt (``backbone.weights=builtin_voclike``).

Written by scripts/pretrain_small_backbone.py (frcnn/engine/pretrain_small.py); data, loaded with
``torch.load(weights_only=True)``.
"""
