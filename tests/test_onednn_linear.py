"""frcnn.layers.onednn_linear: oneDNN's products give F.linear's numbers and gradients up to float
rounding, run only where they should (float32 CPU, no autocast, never in an exported graph),
and do not change with how many rows share a call (the batch-invariance rule)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from frcnn.layers import onednn_linear
from frcnn.layers.fast_paths import torch_layers_only
from frcnn.layers.onednn_linear import OneDNNLinear

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _layer(in_features=96, out_features=40, bias=True, seed=0) -> OneDNNLinear:
    torch.manual_seed(seed)
    return OneDNNLinear(in_features, out_features, bias=bias)


def _rows(num, in_features=96, seed=1):
    return torch.randn(num, in_features, generator=torch.Generator().manual_seed(seed)).relu()


def _count_onednn_calls(monkeypatch) -> list[int]:
    onednn_linear._onednn_works()  # the once-per-process parity check is not counted
    calls = [0]
    real = onednn_linear._onednn_matmul

    def counting(*args):
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(onednn_linear, "_onednn_matmul", counting)
    return calls


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_inference_runs_in_onednn_and_matches_f_linear(bias, mode, monkeypatch):
    calls = _count_onednn_calls(monkeypatch)
    layer, rows = _layer(bias=bias), _rows(37)
    with mode():
        out = layer(rows)
    assert calls[0] == 1
    torch.testing.assert_close(out, F.linear(rows, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_training_gradients_match_f_linear(bias, monkeypatch):
    calls = _count_onednn_calls(monkeypatch)
    layer, rows = _layer(bias=bias), _rows(29).requires_grad_()
    reference = copy.deepcopy(layer)
    reference_rows = rows.detach().clone().requires_grad_()
    upstream = torch.randn(29, 40, generator=torch.Generator().manual_seed(2))
    (layer(rows) * upstream).sum().backward()
    assert calls[0] == 3  # forward, input gradient, weight gradient
    (F.linear(reference_rows, reference.weight, reference.bias) * upstream).sum().backward()
    torch.testing.assert_close(rows.grad, reference_rows.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_gradcheck_in_float32_scale():
    """torch.autograd.gradcheck needs float64, which runs F.linear; so compare the oneDNN backward
    with central finite differences of the float32 forward on a tiny, well-scaled layer."""
    layer, rows = _layer(6, 3), _rows(4, 6).requires_grad_()
    layer(rows).pow(2).sum().backward()
    eps = 1e-2
    for i, j in [(0, 0), (1, 3), (2, 5)]:
        with torch.no_grad():
            original = layer.weight[i, j].item()
            layer.weight[i, j] = original + eps
            plus = layer(rows).pow(2).sum().item()
            layer.weight[i, j] = original - eps
            minus = layer(rows).pow(2).sum().item()
            layer.weight[i, j] = original
        assert layer.weight.grad[i, j].item() == pytest.approx((plus - minus) / (2 * eps), rel=1e-2, abs=1e-3)


@needs_onednn
def test_frozen_weight_computes_only_the_input_gradient(monkeypatch):
    calls = _count_onednn_calls(monkeypatch)
    layer, rows = _layer(), _rows(8).requires_grad_()
    layer.requires_grad_(False)
    layer(rows).sum().backward()
    assert calls[0] == 2 and layer.weight.grad is None and rows.grad is not None


@needs_onednn
def test_result_of_a_row_does_not_depend_on_how_many_rows_share_the_call():
    layer, rows = _layer(512, 256), _rows(333, 512)
    with torch.inference_mode():
        together = layer(rows)
        for num in (2, 7, 64, 300):
            assert torch.equal(layer(rows[:num]), together[:num]), num
        assert torch.equal(layer(rows), together)  # and deterministic


def test_the_torch_layers_only_switch_gives_f_linear_bit_for_bit(monkeypatch):
    calls = _count_onednn_calls(monkeypatch)
    layer, rows = _layer(), _rows(21)
    with torch_layers_only():
        with torch.inference_mode():
            out = layer(rows)
        trained = layer(rows)
    assert calls[0] == 0
    assert torch.equal(out, F.linear(rows, layer.weight, layer.bias)) and torch.equal(trained, out)


def test_inputs_outside_the_onednn_path_run_f_linear(monkeypatch):
    calls = _count_onednn_calls(monkeypatch)
    layer = _layer()
    rows3d = torch.randn(2, 5, 96)
    with torch.no_grad():
        assert torch.equal(layer(rows3d), F.linear(rows3d, layer.weight, layer.bias))
        double = copy.deepcopy(layer).double()
        assert torch.equal(double(rows3d.double()), F.linear(rows3d.double(), double.weight, double.bias))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(_rows(3))
        assert out.dtype == torch.bfloat16  # autocast's rule, as nn.Linear
    assert calls[0] == 0


def test_same_state_dict_as_nn_linear_and_copies_work():
    layer = _layer()
    plain = torch.nn.Linear(96, 40)
    plain.load_state_dict(layer.state_dict())
    assert list(layer.state_dict()) == ["weight", "bias"]
    restored = pickle.loads(pickle.dumps(layer))
    assert torch.equal(restored.weight, layer.weight) and isinstance(restored, OneDNNLinear)


def test_a_scripted_or_traced_layer_holds_plain_linear_ops():
    layer, rows = _layer(), _rows(6)
    with torch.no_grad():
        scripted = torch.jit.script(torch.nn.Sequential(layer, torch.nn.ReLU()))
        traced = torch.jit.trace(layer, rows)
    expected = F.linear(rows, layer.weight, layer.bias)
    assert torch.equal(scripted(rows), expected.relu())
    assert "mkldnn" not in str(traced.graph) and torch.equal(traced(rows), expected)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    assert buffer.tell() > 0


def test_a_failed_parity_check_falls_back_with_a_warning(monkeypatch):
    def wrong_kernel(inputs, weight, bias, *args):
        return torch.zeros(inputs.shape[0], weight.shape[0])

    monkeypatch.setattr(onednn_linear, "_onednn_usable", None)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", wrong_kernel, raising=False)
    layer, rows = _layer(40, 24), _rows(3, 40)
    with pytest.warns(UserWarning, match="parity check"), torch.no_grad():
        out = layer(rows)
    assert torch.equal(out, F.linear(rows, layer.weight, layer.bias))
    assert onednn_linear._onednn_usable is False


def _kernel_broken_where(monkeypatch, broken):
    """oneDNN's product, off by 1.0 wherever ``broken(inputs, weight)``: right on the once-per-process 5 x 40
    check, wrong at the shapes a model uses."""
    onednn_linear._onednn_works()
    monkeypatch.setattr(onednn_linear, "_shape_verdicts", {})
    real = onednn_linear._onednn_matmul
    calls = [0]

    def kernel(inputs, weight, bias):
        calls[0] += 1
        out = real(inputs, weight, bias)
        return out + 1.0 if broken(inputs, weight) else out

    monkeypatch.setattr(onednn_linear, "_onednn_matmul", kernel)
    return calls


@needs_onednn
def test_a_kernel_wrong_at_the_models_shape_is_caught_at_its_first_call(monkeypatch):
    """The first call of a 512 -> 256 layer compares oneDNN's forward with torch's: the mismatch warns naming
    the product and the layer, that call returns torch's result, later calls of that shape skip oneDNN;
    a layer of another shape keeps oneDNN."""
    calls = _kernel_broken_where(monkeypatch, lambda inputs, weight: inputs.shape[1] == 512)
    layer, rows = _layer(512, 256), _rows(300, 512)
    with torch.inference_mode():
        with pytest.warns(UserWarning, match=r"forward product of a 512 -> 256 fc layer differs from torch's by 1"):
            first = layer(rows)
        assert torch.equal(first, F.linear(rows, layer.weight, layer.bias))
        calls[0] = 0
        assert torch.equal(layer(rows[:7]), F.linear(rows[:7], layer.weight, layer.bias)) and calls[0] == 0
        other, other_rows = _layer(), _rows(5)
        torch.testing.assert_close(other(other_rows), F.linear(other_rows, other.weight, other.bias))
        assert calls[0] == 1


@needs_onednn
def test_a_gradient_kernel_wrong_at_the_models_shape_is_caught_at_its_first_backward(monkeypatch):
    """Only the input-gradient product (grad [N, 256] @ W [256, 512]) is broken: the first backward gets
    torch's input gradient, with a warning naming it; the forward and the weight gradient stay in oneDNN."""
    _kernel_broken_where(monkeypatch, lambda inputs, weight: tuple(weight.shape) == (512, 256))
    layer, rows = _layer(512, 256), _rows(64, 512).requires_grad_()
    reference, reference_rows = copy.deepcopy(layer), rows.detach().clone().requires_grad_()
    upstream = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match=r"input gradient of a 512 -> 256 fc layer differs"):
        (layer(rows) * upstream).sum().backward()
    (F.linear(reference_rows, reference.weight, reference.bias) * upstream).sum().backward()
    torch.testing.assert_close(rows.grad, reference_rows.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
    assert onednn_linear._shape_verdicts == {("forward product", 256, 512): True, ("input gradient", 256, 512): False,
                                             ("weight gradient", 256, 512): True}
