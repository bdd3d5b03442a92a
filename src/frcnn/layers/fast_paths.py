"""When frcnn's CPU fast paths for single layers may run (:mod:`frcnn.layers.onednn_linear`,
:mod:`frcnn.layers.max_pool`), and a switch that turns them all off.

A fast path is Python-side eager code: it must never end up in an exported or compiled graph,
which gets torch's plain op instead. TorchScript scripting is checked in each ``forward`` itself
(``torch.jit.is_scripting()``), since the compiler only skips a branch it can see is dead.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_switched_off = False  # inside torch_layers_only()


@contextmanager
def torch_layers_only() -> Iterator[None]:
    """Inside the block every frcnn layer runs torch's own op (``F.linear``, ``F.max_pool2d``):
    the benchmarks' side-by-side rows, or results bit for bit as torch's layers give them.
    Not thread-safe."""
    global _switched_off
    saved, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = saved


def fast_paths_allowed() -> bool:
    """Not switched off, and not inside torch.jit tracing, ONNX export or torch.compile."""
    return not (_switched_off or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling())
