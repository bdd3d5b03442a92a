"""--mode infer: inference latency per image, frcnn against its torchvision twin."""

from __future__ import annotations

import torch

from bench.common import (
    PLAIN,
    SETTINGS,
    SIZES,
    alternate,
    autocast,
    cpu_only_plain,
    on_device,
    peak_memory_line,
    precision_label,
    report_pair,
    report_plain_layers,
    torch_layers,
)
from bench.models import build_frcnn, build_torchvision_twin, make_inputs


def bench_infer(size: str, repeats: int) -> dict[str, float]:
    ours = build_frcnn(size).eval()
    theirs = build_torchvision_twin(ours, size).eval()
    ours, theirs = ours.to(SETTINGS.device), theirs.to(SETTINGS.device)
    images = on_device(make_inputs(size, 1)[0])
    with torch.inference_mode(), autocast():
        fns = {"frcnn": lambda: ours(images), PLAIN: torch_layers(lambda: ours(images)),
               "torchvision": lambda: theirs(images)}
        times = alternate(cpu_only_plain(fns), repeats)
    spec = SIZES[size]
    title = f"[{size}] inference, 1 image {spec['image_hw']} {spec['backbone']} ({precision_label()})"
    result = report_pair(title, times, "per image")
    report_plain_layers(title, times, "per image")
    print(f"[{size}] images/s: frcnn {1e3 / result['frcnn_ms']:.2f}, torchvision {1e3 / result['torchvision_ms']:.2f}"
          f"{peak_memory_line()}", flush=True)
    return result
