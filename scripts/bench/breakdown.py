"""--mode breakdown: the paper's Table 5 split (shared conv, proposals, region-wise) for frcnn and
torchvision."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
from torchvision.models.detection import FasterRCNN as TVFasterRCNN

from bench.common import PLAIN, SIZES, median_ms
from bench.models import build_frcnn, build_torchvision_twin, make_inputs
from frcnn.layers.fast_paths import torch_layers_only
from frcnn.modeling.faster_rcnn import FasterRCNN


def frcnn_stages(model: FasterRCNN, images, fast_layers: bool = True):
    """``fast_layers=False``: torch's own layers (frcnn.layers.fast_paths.torch_layers_only)."""
    state = {}
    layers = contextlib.nullcontext if fast_layers else torch_layers_only

    def conv():
        with layers():
            state["features"], state["sizes"] = model.features(images)

    def proposal():
        state["proposals"], _, _ = model.rpn(state["features"], state["sizes"])

    def region():
        with layers():
            model.roi_head(state["features"], state["proposals"], state["sizes"])

    return {"conv": conv, "proposal": proposal, "region": region}


def torchvision_stages(model: TVFasterRCNN, images):
    state = {}

    def conv():
        image_list, _ = model.transform(images)
        state["images"], state["features"] = image_list, {"0": model.backbone(image_list.tensors)}

    def proposal():
        state["proposals"], _ = model.rpn(state["images"], state["features"])

    def region():
        model.roi_heads(state["features"], state["proposals"], state["images"].image_sizes)

    return {"conv": conv, "proposal": proposal, "region": region}


def time_stages(stage_fns: dict[str, dict[str, Callable[[], None]]], repeats: int) -> dict[str, dict[str, list[float]]]:
    """{model: {stage: fn}} -> {model: {stage and "total": seconds per repeat}}: the stages of a model
    in order each repeat, the models alternating, one warm-up repeat, under inference_mode."""
    times = {name: {stage: [] for stage in (*stages, "total")} for name, stages in stage_fns.items()}
    with torch.inference_mode():
        for i in range(1 + repeats):
            for name, stages in stage_fns.items():
                total = 0.0
                for stage, fn in stages.items():
                    start = time.perf_counter()
                    fn()
                    elapsed = time.perf_counter() - start
                    total += elapsed
                    if i:
                        times[name][stage].append(elapsed)
                if i:
                    times[name]["total"].append(total)
    return times


def bench_breakdown(size: str, repeats: int, heads: tuple[int | None, ...] = (None,)) -> dict[str, dict[str, float]]:
    """Per-stage medians; stages run in order each repeat (conv, proposal, region), models alternate."""
    results = {}
    images, _ = make_inputs(size, 1)
    spec = SIZES[size]
    ours = build_frcnn(size).eval()
    theirs = build_torchvision_twin(ours, size).eval()
    stage_fns = {"frcnn": frcnn_stages(ours, images), PLAIN: frcnn_stages(ours, images, fast_layers=False),
                 "torchvision": torchvision_stages(theirs, images)}
    times = time_stages(stage_fns, repeats)
    print(f"[{size}] breakdown (paper Table 5), 1 image {spec['image_hw']} {spec['backbone']}, "
          f"medians of {repeats}; '{PLAIN}': frcnn's fc layers on F.linear (MKL) instead of oneDNN, VGG's "
          "pools on F.max_pool2d (frcnn.layers.fast_paths):",
          flush=True)
    print("    model                conv ms  proposal ms  region ms  total ms | proposal/conv region/conv total/conv "
          "proposal/total")
    for name, stage_times in times.items():
        med = {stage: median_ms(v) for stage, v in stage_times.items()}
        print(f"    {name:<19} {med['conv']:8.1f} {med['proposal']:12.1f} {med['region']:10.1f} {med['total']:9.1f} |"
              f" {med['proposal'] / med['conv']:13.3f} {med['region'] / med['conv']:11.3f}"
              f" {med['total'] / med['conv']:10.3f} {med['proposal'] / med['total']:14.3f}", flush=True)
        results[name] = med
    return results
