"""--mode warp: a non-approximate joint training step (RoI warping, §3.2 iii) against an approximate one,
and each one's peak memory in a fresh process."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import SETTINGS, SIZES, alternate_wall_and_cpu, frcnn_sgd, median_ms, on_device
from bench.models import build_frcnn, make_inputs
from frcnn.modeling.faster_rcnn import FasterRCNN

BENCHMARK_SCRIPT = Path(__file__).resolve().parents[1] / "benchmark.py"  # the child runs one step


WARP_SCHEMES = ("approximate", "nonapproximate")


WARP_FLOOR = 1.3  # issue 15: a non-approximate step costs at most 1.3x an approximate one


def _joint_step(model: FasterRCNN, images, targets) -> Callable[[], None]:
    opt = frcnn_sgd(model)

    def step():
        opt.zero_grad(set_to_none=True)
        model(images, targets)["total"].backward()
        opt.step()

    return step


def _warp_model(size: str, scheme: str) -> FasterRCNN:
    torch.manual_seed(0)
    model = build_frcnn(size).to(SETTINGS.device).train()
    model.roi_head.warp_boxes = scheme == "nonapproximate"  # RoI warping (max of 2 x 2 samples) + proposal graph
    return model


def bench_warp(size: str, repeats: int) -> dict[str, float]:
    spec = SIZES[size]
    images, targets = on_device(*make_inputs(size, spec["train_batch"]))
    steps = {scheme: _joint_step(_warp_model(size, scheme), images, targets) for scheme in WARP_SCHEMES}
    torch.manual_seed(0)
    wall, cpu = alternate_wall_and_cpu(steps, repeats)
    approx_ms, exact_ms = median_ms(wall["approximate"]), median_ms(wall["nonapproximate"])
    approx_cpu_ms, exact_cpu_ms = median_ms(cpu["approximate"]), median_ms(cpu["nonapproximate"])
    ratio, cpu_ratio = exact_ms / approx_ms, exact_cpu_ms / approx_cpu_ms
    print(f"[{size}] joint training step, {spec['train_batch']} image(s) {spec['image_hw']} {spec['backbone']} "
          f"(medians of {repeats}, A B A B): wall approximate {approx_ms:.1f} ms, non-approximate {exact_ms:.1f} ms, "
          f"ratio {ratio:.3f} (floor {WARP_FLOOR}: {'ok' if ratio <= WARP_FLOOR else 'OVER'}); process CPU time "
          f"{approx_cpu_ms:.1f} / {exact_cpu_ms:.1f} ms, ratio {cpu_ratio:.3f} (steadier than wall on a shared machine)",
          flush=True)
    peaks = {}
    for scheme in WARP_SCHEMES:
        cmd = [sys.executable, str(BENCHMARK_SCRIPT), "--warp-memory-child", scheme, "--size", size, "--threads",
               str(torch.get_num_threads()), "--device", str(SETTINGS.device)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode != 0 or not lines:
            print(f"[{size}] memory of one {scheme} step: not measured ({result.stderr.strip()[-300:]})", flush=True)
            continue
        peaks[scheme] = json.loads(lines[-1])["peak_step_mib"]
    if peaks:
        what = "GPU memory allocated above the pre-step" if SETTINGS.device.type == "cuda" else "RSS above the pre-step RSS"
        print(f"[{size}] peak memory of one training step ({what}, fresh process): "
              + ", ".join(f"{k} {v:.0f} MiB" for k, v in peaks.items()), flush=True)
    return {"approximate_ms": approx_ms, "nonapproximate_ms": exact_ms, "ratio": ratio, "cpu_ratio": cpu_ratio,
            **{f"{k}_peak_mib": v for k, v in peaks.items()}}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def warp_memory_child(size: str, scheme: str) -> None:
    """One training step in this (fresh) process; prints {"peak_step_mib": ...} as JSON: the peak
    RSS above the pre-step RSS, or on a GPU the peak allocated memory above the pre-step's."""
    spec = SIZES[size]
    images, targets = on_device(*make_inputs(size, spec["train_batch"]))
    step = _joint_step(_warp_model(size, scheme), images, targets)
    gc.collect()
    if SETTINGS.device.type == "cuda":
        torch.cuda.synchronize(SETTINGS.device)
        before = torch.cuda.memory_allocated(SETTINGS.device)
        torch.cuda.reset_peak_memory_stats(SETTINGS.device)
        step()
        torch.cuda.synchronize(SETTINGS.device)
        peak_mib = (torch.cuda.max_memory_allocated(SETTINGS.device) - before) / 2**20
    else:
        with open("/proc/self/clear_refs", "w") as clear:  # "5": reset the peak RSS (VmHWM) to the current RSS
            clear.write("5")
        before = _proc_status_kib("VmRSS")
        step()
        peak_mib = (_proc_status_kib("VmHWM") - before) / 1024
    print(json.dumps({"scheme": scheme, "size": size, "peak_step_mib": peak_mib}), flush=True)
