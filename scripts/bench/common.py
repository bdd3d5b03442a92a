"""Settings of a benchmark run (device, autocast, the pre-issue-6 baseline), the sizes, and the timing
helpers: alternating A B A B runs, medians, report lines."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from frcnn.layers.fast_paths import torch_layers_only
from frcnn.lit.optim import fused


@dataclass
class RunSettings:
    """What the command line chose for the whole run (scripts/benchmark.py sets it once)."""

    baseline: bool = False  # --baseline: frcnn as before issue 6 (NCHW conv, full NMS then top-N)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # --device: infer / train / warp on a GPU
    autocast_bf16: bool = False  # --bf16: infer / train under torch.autocast(bfloat16)


SETTINGS = RunSettings()

SIZES = {
    # name: backbone, image (H, W), anchor scales, classes (with bg), images per training batch, head width
    "paper": dict(backbone="vgg16", image_hw=(600, 1000), scales=(128, 256, 512), num_classes=20, train_batch=1,
                  hidden=None, infer_repeats=5, train_repeats=3, breakdown_repeats=3),
    "small": dict(backbone="small", image_hw=(256, 256), scales=(32, 64, 128), num_classes=5, train_batch=4,
                  hidden=None, infer_repeats=30, train_repeats=20, breakdown_repeats=30),
    # experiment=cpu_own_data on the README's trees: EfficientNet-Lite0 (timm), 400-px tiles at scale 600, 2 per step
    "lite0": dict(backbone="efficientnet_lite0", image_hw=(600, 600), scales=(27, 53, 107), num_classes=1,
                  train_batch=2, hidden=None, infer_repeats=10, train_repeats=8, breakdown_repeats=10),
}


TORCHVISION_MIN_PROPOSAL_SIZE = 1e-3  # torchvision's RPN drops boxes under 1e-3 px (hard-coded)


def sync() -> None:
    if SETTINGS.device.type == "cuda":
        torch.cuda.synchronize(SETTINGS.device)


def autocast():
    return torch.autocast(SETTINGS.device.type, dtype=torch.bfloat16, enabled=SETTINGS.autocast_bf16)


def on_device(images, targets=None):
    images = [img.to(SETTINGS.device) for img in images]
    if targets is None:
        return images
    return images, [{k: v.to(SETTINGS.device) for k, v in t.items()} for t in targets]


def peak_memory_line() -> str:
    if SETTINGS.device.type != "cuda":
        return ""
    return f"; peak GPU memory {torch.cuda.max_memory_allocated(SETTINGS.device) / 2**30:.2f} GiB"


def alternate_wall_and_cpu(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
                           ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run the callables in turn (A B A B ...) ``warmup`` + ``repeats`` times: (wall seconds,
    process CPU seconds of all threads) per call."""
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            sync()  # a GPU's queued kernels belong to the call that queued them
            if i >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def alternate(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """:func:`alternate_wall_and_cpu`'s wall seconds per call."""
    return alternate_wall_and_cpu(fns, repeats, warmup)[0]


def frcnn_sgd(model: nn.Module) -> torch.optim.Optimizer:
    """frcnn's optimizer (frcnn.lit.optim.build_optimizer: torch's fused SGD, the same floats as the
    default one) on the trainable parameters, at the benchmark's settings."""
    return fused(torch.optim.SGD, [p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9,
                 weight_decay=5e-4)


def median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


def report_pair(title: str, times: dict[str, list[float]], per: str) -> dict[str, float]:
    ours, theirs = median_ms(times["frcnn"]), median_ms(times["torchvision"])
    print(f"{title}: frcnn {ours:.1f} ms, torchvision {theirs:.1f} ms {per}; ratio frcnn/torchvision = "
          f"{ours / theirs:.3f}  (medians of {len(times['frcnn'])})", flush=True)
    return {"frcnn_ms": ours, "torchvision_ms": theirs, "ratio": ours / theirs}


PLAIN = "frcnn, torch layers"  # frcnn with its layers' CPU fast paths off (frcnn.layers.fast_paths.torch_layers_only)


def report_plain_layers(title: str, times: dict[str, list[float]], per: str) -> None:
    """The PLAIN entry (frcnn's fc layers on F.linear instead of oneDNN, VGG's pools on
    F.max_pool2d) against torchvision and frcnn, from the same alternating run."""
    if PLAIN not in times:  # a GPU: the fast paths are CPU-only, nothing to compare
        return
    plain, ours, theirs = (median_ms(times[name]) for name in (PLAIN, "frcnn", "torchvision"))
    print(f"{title}: frcnn with torch's layers (F.linear, F.max_pool2d) {plain:.1f} ms {per}; ratio to torchvision = "
          f"{plain / theirs:.3f}; frcnn's layers / torch's = {ours / plain:.3f}", flush=True)


def cpu_only_plain(fns: dict[str, Callable[[], object]]) -> dict[str, Callable[[], object]]:
    """Drop the PLAIN entry on a GPU, where it would time the same code again."""
    return fns if SETTINGS.device.type == "cpu" else {name: fn for name, fn in fns.items() if name != PLAIN}


def torch_layers(fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        with torch_layers_only():
            return fn()

    return run


def precision_label() -> str:
    return f"{SETTINGS.device.type}{', bf16 autocast' if SETTINGS.autocast_bf16 else ''}"
