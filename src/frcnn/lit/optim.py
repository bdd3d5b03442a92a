"""SGD and the step learning-rate schedule of the paper (§3.3), for any stage."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")


def parameter_groups(module: nn.Module, lr: float, weight_decay: float, bias_lr_factor: float, bias_weight_decay: float):
    """Trainable parameters only; biases at ``bias_lr_factor`` x lr and their own weight decay
    (the reference Caffe solver's convention). Frozen layers are left out entirely."""
    weights, biases = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (biases if name.endswith(".bias") or param.ndim == 1 else weights).append(param)
    groups = []
    if weights:
        groups.append({"params": weights, "lr": lr, "weight_decay": weight_decay})
    if biases:
        groups.append({"params": biases, "lr": lr * bias_lr_factor, "weight_decay": bias_weight_decay})
    return groups


def fused(optimizer_class: type[torch.optim.Optimizer], params, **options) -> torch.optim.Optimizer:
    """The optimizer with torch's fused kernel (one pass over each parameter's data, gradient and
    momentum instead of a chain of foreach ops), where torch has one for these parameters (CPU and
    CUDA, torch >= 2.4); otherwise the default implementation. Used for SGD, whose fused kernel
    gives the foreach / for-loop SGD's floats bit for bit (tests/test_configs.py); fused AdamW
    does not (it rounds differently), so AdamW stays the default implementation. VGG-16's 134 M trained
    parameters on a 2-core AMD EPYC: 280 -> 55 ms per SGD step (BENCHMARKS.md)."""
    try:
        return optimizer_class(params, fused=True, **options)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device / dtype / torch
        return optimizer_class(params, **options)


def step_lr_factor(step: int, lr_steps: Sequence[int], gamma: float, warmup_steps: int) -> float:
    """lr multiplier at a training step: gamma^(number of lr_steps passed), with an optional
    linear warmup from 1/10 over the first ``warmup_steps`` (0 in the paper)."""
    factor = gamma ** bisect_right(sorted(lr_steps), step)
    if warmup_steps > 0 and step < warmup_steps:
        alpha = step / warmup_steps
        factor *= 0.1 * (1 - alpha) + alpha
    return factor


def build_optimizer(module: nn.Module, optim_cfg: Mapping[str, Any], lr_steps: Sequence[int]):
    """Lightning's ``configure_optimizers`` answer: SGD + per-step LambdaLR."""
    groups = parameter_groups(
        module, float(optim_cfg["lr"]), float(optim_cfg["weight_decay"]),
        float(optim_cfg["bias_lr_factor"]), float(optim_cfg["bias_weight_decay"]),
    )
    if not groups:
        raise ValueError("no trainable parameters: every layer of this stage is frozen")
    name = str(optim_cfg.get("name", "sgd"))
    if name == "sgd":  # the paper's
        optimizer = fused(torch.optim.SGD, groups, lr=float(optim_cfg["lr"]), momentum=float(optim_cfg["momentum"]))
    elif name == "adamw":
        # not fused: torch's fused AdamW rounds differently (~1e-7) from the default one
        optimizer = torch.optim.AdamW(groups, lr=float(optim_cfg["lr"]))
    else:
        raise ValueError(f"optim.name={name!r}; allowed: {list(OPTIMIZERS)}")
    gamma, warmup = float(optim_cfg["lr_gamma"]), int(optim_cfg.get("warmup_steps", 0))
    steps = [int(s) for s in lr_steps]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step_lr_factor(step, steps, gamma, warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
