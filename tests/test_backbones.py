"""Backbones: stride-16 bodies, per-RoI heads, weight loading and freezing (paper §3.1.3, §3.2)."""

from __future__ import annotations

import logging
import math
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from frcnn import backbones
from frcnn.backbones import (
    WEIGHTS_FROM_DETECTOR,
    Backbone,
    available_backbones,
    build_backbone,
    freeze_prefix,
    set_trainable,
)

ALL = ["resnet50_c4", "small", "vgg16", "zf"]
# VGG's 2x2/2 max pools floor odd sizes; the others pad every stride-2 layer: n -> ceil(n / 2).
ROUND = {"vgg16": math.floor, "zf": math.ceil, "resnet50_c4": math.ceil, "small": math.ceil}


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(min(old, 2))
    yield
    torch.set_num_threads(old)


# --- module fixtures: each big net is built at most once (plus its torchvision reference) -------


@pytest.fixture(scope="module")
def tv_vgg16(tmp_path_factory):
    """A random-init torchvision vgg16 full-model state dict, saved as a local .pth file."""
    torch.manual_seed(0)
    state = torchvision.models.vgg16(weights=None).state_dict()
    path = tmp_path_factory.mktemp("w") / "vgg16-random.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def vgg16(tv_vgg16) -> Backbone:
    return build_backbone("vgg16", weights=tv_vgg16[0])


@pytest.fixture(scope="module")
def tv_resnet50(tmp_path_factory):
    """A torchvision resnet50 state dict (plain BatchNorm, with num_batches_tracked), stats perturbed."""
    torch.manual_seed(1)
    state = torchvision.models.resnet50(weights=None).state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "bias")) and value.is_floating_point():
            value.normal_()
    path = tmp_path_factory.mktemp("w") / "resnet50-random.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def resnet50_c4(tv_resnet50) -> Backbone:
    return build_backbone("resnet50_c4", weights=tv_resnet50[0])


@pytest.fixture(scope="module")
def zf() -> Backbone:
    return build_backbone("zf")


@pytest.fixture(scope="module")
def small() -> Backbone:
    return build_backbone("small")


# --- architecture ---------------------------------------------------------------------------


def test_available_backbones():
    assert available_backbones() == ALL


@pytest.mark.parametrize("name", ALL)
def test_body_has_stride_16_and_declared_channels(name, request):
    bb: Backbone = request.getfixturevalue(name)
    assert bb.name == name and bb.stride == 16
    bb.body.eval()
    with torch.no_grad():
        for h, w in [(64, 80), (72, 100)]:  # divisible by 16, and not
            out = bb.body(torch.randn(1, 3, h, w))
            assert out.shape == (1, bb.out_channels, ROUND[name](h / 16), ROUND[name](w / 16))


def test_small_body_on_224x320(small):
    with torch.no_grad():
        assert small.body.eval()(torch.randn(2, 3, 224, 320)).shape == (2, 128, 14, 20)


@pytest.mark.parametrize(
    ("name", "channels", "pool", "rep"),
    [("vgg16", 512, 7, 4096), ("zf", 256, 6, 4096), ("resnet50_c4", 1024, 14, 2048), ("small", 128, 7, 256)],
)
def test_head_maps_pooled_rois_to_representation(name, channels, pool, rep, request):
    bb: Backbone = request.getfixturevalue(name)
    assert (bb.out_channels, bb.roi_output_size, bb.representation_size) == (channels, pool, rep)
    with torch.no_grad():
        out = bb.head.eval()(torch.randn(3, channels, pool, pool))
    assert out.shape == (3, rep)


def test_resnet_uses_frozen_batchnorm(resnet50_c4):
    mods = list(resnet50_c4.body.modules()) + list(resnet50_c4.head.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in mods)
    assert any(isinstance(m, torchvision.ops.misc.FrozenBatchNorm2d) for m in mods)


def test_num_hidden_sets_representation_size():
    bb = build_backbone("small", num_hidden=64)
    assert bb.representation_size == 64
    assert bb.head(torch.randn(2, 128, 7, 7)).shape == (2, 64)
    with pytest.raises(ValueError, match="2048"):
        build_backbone("resnet50_c4", num_hidden=1024)


# --- weights --------------------------------------------------------------------------------


def test_vgg16_loads_local_torchvision_file(vgg16, tv_vgg16):
    _, ref = tv_vgg16
    body, head = vgg16.body, vgg16.head
    assert torch.equal(body.conv1_1.weight, ref["features.0.weight"])
    assert torch.equal(body.conv3_2.bias, ref["features.12.bias"])
    assert torch.equal(body.conv5_3.weight, ref["features.28.weight"])
    assert torch.equal(head.fc6.weight, ref["classifier.0.weight"])
    assert torch.equal(head.fc7.bias, ref["classifier.3.bias"])


def test_resnet50_loads_local_torchvision_file(resnet50_c4, tv_resnet50):
    _, ref = tv_resnet50
    body, head = resnet50_c4.body, resnet50_c4.head
    assert torch.equal(body.conv1.weight, ref["conv1.weight"])
    assert torch.equal(body.bn1.running_mean, ref["bn1.running_mean"])
    assert torch.equal(body.layer3[5].conv3.weight, ref["layer3.5.conv3.weight"])
    assert torch.equal(head.layer4[0].downsample[1].bias, ref["layer4.0.downsample.1.bias"])


def test_own_state_dict_round_trip(small, tmp_path):
    for m in small.body.modules():  # make BN buffers non-default so the check means something
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
    saved = small.state_dict()
    assert all(k.startswith(("body.", "head.")) for k in saved)
    torch.save(saved, tmp_path / "small.pth")
    torch.save({"state_dict": saved}, tmp_path / "small.ckpt")
    for file in ("small.pth", "small.ckpt"):
        loaded = build_backbone("small", weights=tmp_path / file).state_dict()
        assert loaded.keys() == saved.keys()
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_zf_loads_flat_layer_names(zf, tmp_path):
    flat = {k.split(".", 1)[1]: v for k, v in zf.state_dict().items()}  # "conv1.weight", "fc6.bias", ...
    flat["fc8.weight"] = torch.zeros(1000, 4096)  # ImageNet classifier: dropped
    torch.save(flat, tmp_path / "zf.pth")
    loaded = build_backbone("zf", weights=tmp_path / "zf.pth")
    assert torch.equal(loaded.body.conv5.weight, zf.body.conv5.weight)
    assert torch.equal(loaded.head.fc6.weight, zf.head.fc6.weight)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "vgg16.pth"
    with pytest.raises(FileNotFoundError, match="vgg16.pth") as err:
        build_backbone("small", weights=path)
    assert str(path) in str(err.value)


def test_mismatched_keys_are_listed(small, tmp_path):
    state = small.state_dict()
    del state["body.stage1.0.weight"]
    state["body.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError) as err:
        build_backbone("small", weights=tmp_path / "bad.pth")
    assert "body.stage1.0.weight" in str(err.value) and "body.extra.weight" in str(err.value)

    torch.save(small.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(RuntimeError, match="shape") as err:
        build_backbone("small", weights=tmp_path / "wide.pth", num_hidden=64)
    assert "head.fc1.weight" in str(err.value)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as err:
        build_backbone("alexnet")
    assert all(name in str(err.value) for name in ALL)


@pytest.mark.parametrize("name", ["small", "zf"])
def test_imagenet_without_torchvision_weights_is_a_value_error(name):
    with pytest.raises(ValueError, match="local"):
        build_backbone(name, weights="imagenet")


def test_imagenet_download_failure_explains_the_fix(monkeypatch):
    def offline(enum):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(backbones, "_fetch_torchvision_state_dict", offline)
    with pytest.raises(RuntimeError) as err:
        build_backbone("vgg16", weights="imagenet")
    msg = str(err.value)
    assert "vgg16" in msg and "VGG16_Weights.IMAGENET1K_V1" in msg
    assert torch.hub.get_dir() in msg and "local path" in msg


def test_random_init_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="frcnn.backbones"):
        build_backbone("small")
    assert any("random init" in r.getMessage().lower() for r in caplog.records)


def test_backbone_for_a_saved_detector_does_not_warn_about_random_init(caplog):
    with caplog.at_level(logging.WARNING, logger="frcnn.backbones"):
        build_backbone("small", weights=WEIGHTS_FROM_DETECTOR)  # load_detector loads the weights next
    assert not caplog.records


# --- freezing -------------------------------------------------------------------------------


def test_freeze_prefix_vgg16_freezes_exactly_conv1_conv2(vgg16):
    try:
        freeze_prefix(vgg16)
        frozen = {n for n, p in vgg16.body.named_parameters() if not p.requires_grad}
        expected = {f"conv{s}_{k}.{leaf}" for s in (1, 2) for k in (1, 2) for leaf in ("weight", "bias")}
        assert frozen == expected
        assert all(p.requires_grad for p in vgg16.head.parameters())
    finally:
        set_trainable(vgg16.body, True)


def test_freeze_prefix_resnet_freezes_the_stem(resnet50_c4):
    try:
        freeze_prefix(resnet50_c4)
        for n, p in resnet50_c4.body.named_parameters():
            assert p.requires_grad == (not n.startswith(("conv1.", "layer1."))), n
    finally:
        set_trainable(resnet50_c4.body, True)


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in module.named_buffers() if "running" in n]


def test_frozen_batchnorm_keeps_running_stats_in_train_mode(small):
    body = small.body
    set_trainable(body, False)
    body.train()  # a parent's .train() must not unfreeze the BN layers
    before = _bn_stats(body)
    body(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(body)))
    assert not any(p.requires_grad for p in body.parameters())
    assert not any(m.training for m in body.modules() if isinstance(m, nn.BatchNorm2d))

    set_trainable(body, True)  # reversible: BN follows .train() again and updates its stats
    body.train()
    body(torch.randn(2, 3, 64, 64))
    assert not all(torch.equal(a, b) for a, b in zip(before, _bn_stats(body)))
    assert all(p.requires_grad for p in body.parameters())
