"""frcnn.layers.max_pool: the no-gradient CPU path gives F.max_pool2d(x, 2, 2) bit for bit; a pool whose
input needs a gradient runs F.max_pool2d (one arg-max cell per bin gets the gradient)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from frcnn.layers import max_pool
from frcnn.layers.max_pool import MaxPool2x2, max_pool_2x2


@pytest.mark.parametrize("shape", [(1, 4, 8, 10), (2, 3, 9, 7), (1, 5, 2, 3), (3, 6, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_tensor_as_f_max_pool2d(shape, channels_last):
    features = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)))
    features[..., 0, 0] = float("nan")
    if features.shape[-1] > 1:
        features[..., -1, 1] = float("-inf")
    if channels_last and features.dim() == 4:
        features = features.contiguous(memory_format=torch.channels_last)
    expected = F.max_pool2d(features, 2, 2)
    got = max_pool_2x2(features)
    assert got.shape == expected.shape
    assert torch.equal(torch.nan_to_num(got, nan=7.0), torch.nan_to_num(expected, nan=7.0))
    assert torch.equal(got.isnan(), expected.isnan())
    if channels_last and features.dim() == 4:
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_an_input_under_2_x_2_gets_f_max_pool2d_s_error():
    with pytest.raises(RuntimeError, match="too small"), torch.no_grad():
        MaxPool2x2()(torch.rand(1, 2, 1, 5))


def test_layer_takes_the_fast_path_only_without_gradient(monkeypatch):
    calls = []
    monkeypatch.setattr(max_pool, "max_pool_2x2", lambda x: calls.append(1) or F.max_pool2d(x, 2, 2))
    pool = MaxPool2x2()
    features = torch.rand(1, 2, 6, 6)
    pool(features)  # input needs no gradient (a frozen layer below)
    with torch.no_grad():
        pool(features.requires_grad_())
    assert len(calls) == 2
    out = pool(features)  # needs a gradient: F.max_pool2d
    assert len(calls) == 2 and out.requires_grad


def test_gradient_goes_to_one_cell_per_bin_as_f_max_pool2d():
    features = torch.ones(1, 1, 4, 4, requires_grad=True)  # every bin a four-way tie
    MaxPool2x2()(features).sum().backward()
    reference = torch.ones(1, 1, 4, 4, requires_grad=True)
    F.max_pool2d(reference, 2, 2).sum().backward()
    assert torch.equal(features.grad, reference.grad) and features.grad.sum() == 4


def test_scripted_and_traced_pools_are_f_max_pool2d():
    features = torch.randn(1, 3, 6, 8)
    scripted = torch.jit.script(MaxPool2x2())
    traced = torch.jit.trace(MaxPool2x2(), features)
    assert "max_pool2d" in str(traced.graph) and "maximum" not in str(traced.graph)
    assert torch.equal(scripted(features), F.max_pool2d(features, 2, 2))
    assert torch.equal(traced(features), F.max_pool2d(features, 2, 2))
