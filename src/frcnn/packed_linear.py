"""Fully connected layers that run inference on the CPU through oneDNN with their weights packed
once: the per-RoI fc layers (VGG-16's fc6 / fc7 and the predictor) are most of the region-wise
time of Faster R-CNN's test pass (paper Table 5), and ``F.linear`` (an MKL GEMM on a transposed
weight) reaches about half of what the same cores give a pre-packed oneDNN GEMM.

Measured on a 2-core AMD EPYC (AVX-512), torch 2.14.1, 300 RoIs (``scripts/benchmark.py --mode
breakdown --size paper`` shows it in the region-wise column): fc6 (25088 -> 4096) 326 -> 140 ms,
fc7 (4096 -> 4096) 51 -> 22 ms.

When the packed path runs (everything else is ``F.linear``, bit for bit today's result):
no autograd graph is being recorded (``torch.no_grad`` / ``torch.inference_mode``, or no tensor
that needs a gradient), the input is a 2-D float32 CPU tensor, the process is not scripting,
tracing, exporting or compiling (an exported file holds plain ``linear`` ops), and oneDNN's
packed-linear ops exist and passed a one-time parity check in this process (they are the ops
``torch.compile`` itself uses on the CPU; a torch build without them falls back, with a warning).

Results differ from ``F.linear`` by float rounding only (another summation order: ~1e-6 relative)
and, like MKL's GEMM, do not depend on how many RoIs share the call (tests/test_packed_linear.py).
The packed copy costs as much memory as the weight (VGG-16's fc6 + fc7: ~470 MB); it is made once
per weight version, so a layer trained between validations is repacked once, and dropped as soon
as a training (gradient-recording) forward runs.
"""


import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PACKING_ROWS_HINT = 256  # oneDNN packs for about this many rows; fixed, so results never depend on the first call
_PARITY_TOLERANCE = 1e-4  # a broken kernel is off by O(1), rounding by ~1e-6
_onednn_usable: bool | None = None  # None: not checked yet in this process
_switched_off = False  # inside plain_linear()


@contextmanager
def plain_linear() -> Iterator[None]:
    """Inside the block every :class:`PackedLinear` runs ``F.linear`` (benchmarks' side-by-side
    row; a result bit for bit as before packing existed). Not thread-safe."""
    global _switched_off
    saved, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = saved


def _onednn_packed_ops_work() -> bool:
    """Once per process: the packed ops exist and agree with ``F.linear`` on a small input."""
    global _onednn_usable
    if _onednn_usable is None:
        _onednn_usable = False
        if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            try:
                with torch.no_grad():
                    generator = torch.Generator().manual_seed(0)
                    weight = torch.randn(24, 40, generator=generator)
                    bias = torch.randn(24, generator=generator)
                    inputs = torch.randn(5, 40, generator=generator)
                    packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKING_ROWS_HINT)
                    fast = torch.ops.mkldnn._linear_pointwise(inputs, packed, bias, "none", [], "")
                    plain = F.linear(inputs, weight, bias)
                    _onednn_usable = bool(torch.allclose(fast, plain, rtol=_PARITY_TOLERANCE, atol=_PARITY_TOLERANCE))
            except (RuntimeError, AttributeError) as error:
                warnings.warn(f"frcnn.packed_linear: oneDNN's packed linear is unavailable ({error}); "
                              "the fc layers run F.linear", stacklevel=2)
        if not _onednn_usable:
            warnings.warn("frcnn.packed_linear: oneDNN's packed linear failed its parity check in this torch "
                          "build; the fc layers run F.linear", stacklevel=2)
    return _onednn_usable


class PackedLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose no-grad CPU float32 forward uses
    a oneDNN GEMM on weights packed once (module docstring). [N, in] -> [N, out]."""

    __jit_ignored_attributes__ = ["_packed_weight", "_packed_key"]

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._packed_weight: Tensor | None = None
        self._packed_key: tuple | None = None

    def __getstate__(self):  # copies and pickles carry the weights, not the packed cache
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_packed_weight": None, "_packed_key": None}

    def forward(self, inputs: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self._packed_path_applies(inputs):
            return self._packed_forward(inputs)
        return F.linear(inputs, self.weight, self.bias)

    @torch.jit.unused
    def _packed_path_applies(self, inputs: Tensor) -> bool:
        records_graph = torch.is_grad_enabled() and (inputs.requires_grad or self.weight.requires_grad)
        if records_graph:
            self._packed_weight = self._packed_key = None  # training: the weights are about to change
            return False
        return (
            not _switched_off
            and inputs.dim() == 2
            and inputs.dtype == torch.float32
            and inputs.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and self.weight.device.type == "cpu"
            and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export()
            and not torch.compiler.is_compiling()
            and _onednn_packed_ops_work()
        )

    @torch.jit.unused
    def _packed_forward(self, inputs: Tensor) -> Tensor:
        key = (self.weight.data_ptr(), self.weight._version, tuple(self.weight.shape))
        if self._packed_key != key:
            with torch.no_grad():
                self._packed_weight = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACKING_ROWS_HINT)
            self._packed_key = key
        return torch.ops.mkldnn._linear_pointwise(inputs.contiguous(), self._packed_weight, self.bias, "none", [], "")
