"""Truncated SVD of the detector's fully connected layers (Fast R-CNN §3.1, "Truncated SVD for
faster detection"), applied to a trained detector at load time.

Fast R-CNN's rule: a fully connected layer y = W x + b with W [u, v] is replaced by two layers
without a non-linearity between them, W ≈ U_t Σ_t V_t^T from the t largest singular values:
the first has weights Σ_t V_t^T [t, v] and no bias, the second U_t [u, t] and the original bias.
Its cost drops from u·v to t·(u + v) multiply-adds per RoI; by Eckart–Young it is the best
rank-t approximation of W (Frobenius norm). Fast R-CNN compresses VGG-16's fc6 to t = 1024 and
fc7 to t = 256 (of 4096), at a 0.3 point mAP cost on VOC07 and ~30 % less detection time; the
layers are per-RoI, so the saving grows with the number of proposals.

``roi_head.svd_rank`` (eval.py), ``svd_rank=`` (:meth:`frcnn.Detector.from_checkpoint`) and
``--svd-rank`` (detect.py, export.py) give one rank per fully connected layer of the RoI head
(fc6, fc7 for ZF / VGG-16; fc1, fc2 for the small net), 0 keeping a layer as it is. Training
never uses it: the paper compresses a trained model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from frcnn.layers.onednn_linear import OneDNNLinear


def truncated_svd_linear(fc: nn.Linear, rank: int) -> nn.Sequential:
    """fc (W [u, v], b [u]) -> Sequential(Linear(v, t, bias=False), Linear(t, u)) with W ≈ U_t Σ_t V_t^T."""
    out_features, in_features = fc.weight.shape
    if not 1 <= rank <= min(out_features, in_features):
        raise ValueError(f"rank {rank} for a {in_features} -> {out_features} layer; allowed: 1..{min(out_features, in_features)}")
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(fc.weight.double(), full_matrices=False)  # [u, k], [k], [k, v]
        first = OneDNNLinear(in_features, rank, bias=False, device=fc.weight.device, dtype=fc.weight.dtype)
        second = OneDNNLinear(rank, out_features, bias=fc.bias is not None, device=fc.weight.device,
                              dtype=fc.weight.dtype)
        first.weight.copy_(s[:rank, None] * vh[:rank])  # Σ_t V_t^T [t, v]
        second.weight.copy_(u[:, :rank])  # U_t [u, t]
        if fc.bias is not None:
            second.bias.copy_(fc.bias)
    return nn.Sequential(first, second)


def compress_roi_head(model: nn.Module, ranks: int | Sequence[int]) -> list[str]:
    """Replace the fully connected layers of ``model.roi_head.head`` (in order) by their rank-t
    factorisations; ``ranks``: one per layer (0: keep the layer), or one int for all of them.
    An :class:`frcnn.modeling.faster_rcnn.UnsharedFasterRCNN` is compressed in its detector. -> one line per layer
    ("fc6: 25088 -> 4096, rank 1024: 102.8 M -> 29.9 M multiply-adds per RoI")."""
    detector = getattr(model, "det_net", model)
    head = detector.roi_head.head
    layers = [(name, module) for name, module in head.named_children() if isinstance(module, nn.Linear)]
    if not layers:
        raise ValueError("roi_head.svd_rank: this detector's RoI head has no fully connected layers "
                         "(a ResNet head: layer4 + pooling); truncated SVD applies to ZF / VGG-16 / small heads")
    ranks = [int(ranks)] * len(layers) if isinstance(ranks, int) else [int(rank) for rank in ranks]
    if len(ranks) != len(layers):
        raise ValueError(f"roi_head.svd_rank: {len(ranks)} ranks for the {len(layers)} fully connected layers of "
                         f"the RoI head ({', '.join(name for name, _ in layers)}); give one per layer, 0 to keep one")
    report = []
    for (name, fc), rank in zip(layers, ranks):
        if rank == 0:
            continue
        try:
            setattr(head, name, truncated_svd_linear(fc, rank))
        except ValueError as exc:
            raise ValueError(f"roi_head.svd_rank for {name}: {exc}") from None
        before, after = fc.in_features * fc.out_features, rank * (fc.in_features + fc.out_features)
        report.append(f"{name}: {fc.in_features} -> {fc.out_features}, rank {rank}: {before / 1e6:.1f} M -> "
                      f"{after / 1e6:.1f} M multiply-adds per RoI")
    return report
