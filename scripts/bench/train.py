"""--mode train: one training step (forward + backward + SGD), frcnn against its torchvision twin."""

from __future__ import annotations

import torch

from bench.common import (
    PLAIN,
    SETTINGS,
    SIZES,
    alternate,
    autocast,
    cpu_only_plain,
    frcnn_sgd,
    on_device,
    peak_memory_line,
    precision_label,
    report_pair,
    report_plain_layers,
    torch_layers,
)
from bench.models import build_frcnn, build_torchvision_twin, make_inputs


def bench_train(size: str, repeats: int) -> dict[str, float]:
    spec = SIZES[size]
    ours = build_frcnn(size).train()
    theirs = build_torchvision_twin(ours, size).train()
    ours, theirs = ours.to(SETTINGS.device), theirs.to(SETTINGS.device)
    images, targets = on_device(*make_inputs(size, spec["train_batch"]))
    # each framework's own SGD: frcnn's build_optimizer takes torch's fused kernel (the same floats),
    # torchvision's reference script (references/detection/train.py) the default one
    opt_ours = frcnn_sgd(ours)
    opt_theirs = torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], lr=1e-4, momentum=0.9,
                                 weight_decay=5e-4)

    def step_ours():
        opt_ours.zero_grad(set_to_none=True)
        with autocast():
            loss = ours(images, targets)["total"]
        loss.backward()
        opt_ours.step()

    def step_theirs():
        opt_theirs.zero_grad(set_to_none=True)
        with autocast():
            loss = sum(theirs(images, targets).values())
        loss.backward()
        opt_theirs.step()

    torch.manual_seed(0)
    times = alternate(cpu_only_plain({"frcnn": step_ours, PLAIN: torch_layers(step_ours), "torchvision": step_theirs}),
                      repeats)
    title = f"[{size}] training step, {spec['train_batch']} image(s) {spec['image_hw']} {spec['backbone']} ({precision_label()})"
    result = report_pair(title, times, "per step")
    report_plain_layers(title, times, "per step")
    if SETTINGS.device.type == "cuda":  # one more step of each alone: its own peak memory
        for name, step in (("frcnn", step_ours), ("torchvision", step_theirs)):
            torch.cuda.reset_peak_memory_stats(SETTINGS.device)
            step()
            print(f"[{size}] training step {name}{peak_memory_line()}", flush=True)
    return result
