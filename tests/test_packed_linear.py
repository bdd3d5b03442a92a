"""frcnn.packed_linear: the packed oneDNN path gives F.linear's numbers up to float rounding,
runs only where no gradient is recorded, follows weight changes, never reaches an exported file,
and does not change which RoIs share a call (the batch-invariance rule)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from frcnn import packed_linear
from frcnn.packed_linear import PackedLinear, plain_linear

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _layer(in_features=96, out_features=40, bias=True, seed=0) -> PackedLinear:
    torch.manual_seed(seed)
    return PackedLinear(in_features, out_features, bias=bias)


def _rows(num, in_features=96, seed=1):
    return torch.randn(num, in_features, generator=torch.Generator().manual_seed(seed)).relu()


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_inference_runs_packed_and_matches_f_linear(bias, mode):
    layer, rows = _layer(bias=bias), _rows(37)
    with mode():
        out = layer(rows)
    assert layer._packed_weight is not None  # the packed path ran
    expected = F.linear(rows, layer.weight, layer.bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_a_training_forward_is_f_linear_bit_for_bit_and_drops_the_packed_copy():
    layer, rows = _layer(), _rows(16)
    with torch.no_grad():
        layer(rows)
    assert layer._packed_weight is not None
    out = layer(rows)  # grad enabled, the weight requires grad: a training forward
    assert out.requires_grad and torch.equal(out, F.linear(rows, layer.weight, layer.bias))
    assert layer._packed_weight is None
    out.sum().backward()
    assert layer.weight.grad is not None


@needs_onednn
def test_result_of_a_row_does_not_depend_on_how_many_rows_share_the_call():
    layer, rows = _layer(512, 256), _rows(333, 512)
    with torch.inference_mode():
        together = layer(rows)
        for num in (2, 7, 64, 300):
            assert torch.equal(layer(rows[:num]), together[:num]), num


@needs_onednn
def test_a_weight_changed_in_place_is_repacked():
    layer, rows = _layer(), _rows(8)
    with torch.no_grad():
        before = layer(rows)
        layer.weight.mul_(-2.0)
        after = layer(rows)
    torch.testing.assert_close(after, -2.0 * (before - layer.bias) + layer.bias, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        layer.load_state_dict({"weight": torch.zeros_like(layer.weight), "bias": torch.ones_like(layer.bias)})
        torch.testing.assert_close(layer(rows), torch.ones(8, 40))


def test_plain_linear_switch_gives_f_linear_bit_for_bit():
    layer, rows = _layer(), _rows(21)
    with torch.inference_mode(), plain_linear():
        out = layer(rows)
    assert torch.equal(out, F.linear(rows, layer.weight, layer.bias)) and layer._packed_weight is None


def test_inputs_outside_the_packed_path_run_f_linear():
    layer = _layer()
    rows3d = torch.randn(2, 5, 96)
    with torch.no_grad():
        assert torch.equal(layer(rows3d), F.linear(rows3d, layer.weight, layer.bias))
        double = copy.deepcopy(layer).double()
        assert torch.equal(double(rows3d.double()), F.linear(rows3d.double(), double.weight, double.bias))
    assert layer._packed_weight is None


def test_same_state_dict_as_nn_linear_and_copies_carry_no_packed_cache():
    layer, rows = _layer(), _rows(4)
    plain = torch.nn.Linear(96, 40)
    plain.load_state_dict(layer.state_dict())
    assert list(layer.state_dict()) == ["weight", "bias"]
    with torch.no_grad():
        layer(rows)
    clone = copy.deepcopy(layer)
    restored = pickle.loads(pickle.dumps(layer))
    assert clone._packed_weight is None and restored._packed_weight is None
    assert torch.equal(restored.weight, layer.weight)


def test_a_scripted_or_traced_layer_holds_plain_linear():
    layer, rows = _layer(), _rows(6)
    with torch.no_grad():
        layer(rows)
        scripted = torch.jit.script(torch.nn.Sequential(layer, torch.nn.ReLU()))
        traced = torch.jit.trace(layer, rows)
    expected = F.linear(rows, layer.weight, layer.bias)
    assert torch.equal(scripted(rows), expected.relu())
    assert "mkldnn" not in str(traced.graph) and torch.equal(traced(rows), expected)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)  # nothing unsaveable (the packed copy) in the module
    assert buffer.tell() > 0


def test_a_failed_parity_check_falls_back_with_a_warning(monkeypatch):
    def wrong_kernel(inputs, packed, bias, *args):
        return torch.zeros(inputs.shape[0], 24)

    monkeypatch.setattr(packed_linear, "_onednn_usable", None)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", wrong_kernel, raising=False)
    layer, rows = _layer(40, 24), _rows(3, 40)
    with pytest.warns(UserWarning, match="parity check"), torch.no_grad():
        out = layer(rows)
    assert torch.equal(out, F.linear(rows, layer.weight, layer.bias))
    assert packed_linear._onednn_usable is False
