"""What machine a measurement ran on: printed beside every timing (benchmarks, default runs), since
machines of one kind differ 2-4x in speed (AVX2-only vs AVX-512 CPUs)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_description() -> str:
    """"<model>, torch CPU capability <AVX2|AVX512|...>, <n> threads, torch <version>"."""
    return (f"{cpu_model()}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}")
