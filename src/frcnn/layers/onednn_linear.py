"""Fully connected layers whose CPU float32 matrix products run in oneDNN instead of MKL.

The per-RoI fc layers (VGG-16's fc6 / fc7 and the predictor) are most of the region-wise time of
Faster R-CNN's test pass (paper Table 5) and a sixth of a VGG-16 training step. ``F.linear`` on
the CPU is MKL's GEMM, which on our AMD EPYC machines reaches about half of what oneDNN's GEMM
(the library torch already runs every conv in) gets from the same cores. Measured on a 2-core
AMD EPYC (AVX-512), torch 2.14.1, ms per call, MKL -> oneDNN:

* fc6 (25088 -> 4096), 300 test RoIs: 336 -> 152; fc7 (4096 -> 4096): 52 -> 24;
* fc6, 128 training RoIs: forward 151 -> 68, input gradient 172 -> 87, weight gradient 252 -> 191.

When oneDNN runs (everything else is ``F.linear``, bit for bit as before): the input is a 2-D
float32 CPU tensor and so is the weight, autocast is off, fast paths are allowed
(:mod:`frcnn.layers.fast_paths`: not scripting, tracing, exporting or compiling, so an exported file holds
plain ``linear`` ops; not inside ``torch_layers_only()``), and oneDNN's linear op
(``torch.ops.mkldnn._linear_pointwise``, the op ``torch.compile`` itself emits for linear layers
on the CPU) exists and passed a one-time parity check in this process; a torch build without it
falls back to ``F.linear`` with a warning. Forward, input gradient and weight gradient are each one
oneDNN call (:class:`_OneDNNLinearFunction`); the bias gradient is a sum over rows.

Each product is also checked at the shapes the model uses: the first call of each (product, layer
shape) in a process computes torch's result beside oneDNN's on the same operands (one extra MKL
product per fc layer and product, once). A mismatch (beyond ``_PARITY_TOLERANCE`` of the result's
largest value; rounding is ~1e-6) warns once, naming the product, the layer and the difference;
that call returns torch's result, and that product of layers of that shape runs torch's from then
on, so a kernel broken at one shape never feeds a wrong number into training or detection.

Results differ from ``F.linear`` by float rounding only (another summation order, ~1e-6
relative), are deterministic, and a row's result does not depend on how many rows share the call
(from two rows up; MKL's GEMM needs ~40: tests/test_onednn_linear.py), so the batch-invariance
rule of inference holds as before.
"""

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from frcnn.layers.fast_paths import fast_paths_allowed

_PARITY_TOLERANCE = 1e-4  # a broken kernel is off by O(1), rounding by ~1e-6
_onednn_usable: bool | None = None  # None: not checked yet in this process
# (product, out_features, in_features) -> oneDNN agreed with torch at its first call in this process
_shape_verdicts: dict[tuple[str, int, int], bool] = {}


def _onednn_matmul(inputs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """inputs [N, K] @ weight [M, K]^T (+ bias [M]) -> [N, M] in oneDNN; strided views are read in place."""
    return torch.ops.mkldnn._linear_pointwise(inputs, weight, bias, "none", [], "")


def _onednn_works() -> bool:
    """Once per process: oneDNN's linear op exists and agrees with ``F.linear`` on a small input
    (forward and the two transposed products the backward uses)."""
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
                    grad_output = torch.randn(5, 24, generator=generator)
                    pairs = [(_onednn_matmul(inputs, weight, bias), F.linear(inputs, weight, bias)),
                             (_onednn_matmul(grad_output, weight.t(), None), grad_output @ weight),
                             (_onednn_matmul(grad_output.t(), inputs.t(), None), grad_output.t() @ inputs)]
                    _onednn_usable = all(torch.allclose(fast, plain, rtol=_PARITY_TOLERANCE, atol=_PARITY_TOLERANCE)
                                         for fast, plain in pairs)
            except (RuntimeError, AttributeError) as error:
                warnings.warn(f"frcnn.layers.onednn_linear: oneDNN's linear op is unavailable ({error}); "
                              "the fc layers run F.linear", stacklevel=2)
                return False
        if not _onednn_usable:
            warnings.warn("frcnn.layers.onednn_linear: oneDNN's linear op failed its parity check in this torch "
                          "build; the fc layers run F.linear", stacklevel=2)
    return _onednn_usable


def _checked_product(product: str, layer_shape: tuple[int, int], onednn, torch_product) -> Tensor:
    """``onednn()``, checked against ``torch_product()`` at the first call per (product, layer shape)
    [out, in] in this process; torch's result (now and from then on for that key) where they differ."""
    key = (product, *layer_shape)
    verdict = _shape_verdicts.get(key)
    if verdict is False:
        return torch_product()
    fast = onednn()
    if verdict is None:
        with torch.no_grad():
            plain = torch_product()
            scale = max(float(plain.abs().max()), 1.0) if plain.numel() else 1.0
            difference = float((fast.detach() - plain).abs().max()) if plain.numel() else 0.0
        _shape_verdicts[key] = difference <= _PARITY_TOLERANCE * scale
        if not _shape_verdicts[key]:
            warnings.warn(f"frcnn.layers.onednn_linear: oneDNN's {product} of a {layer_shape[1]} -> {layer_shape[0]} "
                          f"fc layer differs from torch's by {difference:.3g} (tolerance {_PARITY_TOLERANCE} x "
                          f"{scale:.3g}); this product runs torch's for layers of this shape from now on",
                          stacklevel=3)
            return plain if not torch.is_grad_enabled() else torch_product()
    return fast


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b with each product in oneDNN: forward x [N, K] W [M, K] -> [N, M]; backward
    dx = dy W ([N, M] @ [M, K]), dW = dy^T x ([M, N] @ [N, K]), db = sum over rows of dy."""

    @staticmethod
    def forward(ctx, inputs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(inputs, weight)
        ctx.has_bias = bias is not None
        return _onednn_matmul(inputs, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        inputs, weight = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        grad_inputs = grad_weight = grad_bias = None
        layer_shape = tuple(weight.shape)
        if ctx.needs_input_grad[0]:
            grad_inputs = _checked_product("input gradient", layer_shape,
                                           lambda: _onednn_matmul(grad_output, weight.t(), None),
                                           lambda: grad_output @ weight)
        if ctx.needs_input_grad[1]:
            grad_weight = _checked_product("weight gradient", layer_shape,
                                           lambda: _onednn_matmul(grad_output.t(), inputs.t(), None),
                                           lambda: grad_output.t() @ inputs)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(0)
        return grad_inputs, grad_weight, grad_bias


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose CPU float32 products run in
    oneDNN (module docstring). [N, in] -> [N, out]."""

    def forward(self, inputs: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self._onednn_applies(inputs):
            return self._onednn_forward(inputs)
        return F.linear(inputs, self.weight, self.bias)

    @torch.jit.unused
    def _onednn_applies(self, inputs: Tensor) -> bool:
        return (
            fast_paths_allowed()  # first: a trace must not record the tests below
            and inputs.dim() == 2
            and inputs.dtype == torch.float32
            and inputs.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and self.weight.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and _onednn_works()
        )

    @torch.jit.unused
    def _onednn_forward(self, inputs: Tensor) -> Tensor:
        inputs = inputs.contiguous()
        if torch.is_grad_enabled() and (inputs.requires_grad or self.weight.requires_grad
                                        or (self.bias is not None and self.bias.requires_grad)):
            def onednn():
                return _OneDNNLinearFunction.apply(inputs, self.weight, self.bias)
        else:
            def onednn():
                return _onednn_matmul(inputs, self.weight, self.bias)
        return _checked_product("forward product", tuple(self.weight.shape), onednn,
                                lambda: F.linear(inputs, self.weight, self.bias))
