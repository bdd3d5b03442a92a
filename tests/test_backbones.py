"""Backbones: stride-16 bodies, per-RoI heads, weight loading and freezing (paper §3.1.3, §3.2)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torchvision
from torch import nn

from frcnn.checkpoint.pretrained import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD
from frcnn.modeling.backbone import (
    WEIGHTS_FROM_DETECTOR,
    Backbone,
    available_backbones,
    build_backbone,
    freeze_prefix,
    set_trainable,
    vgg,
)

ALL = ["resnet50_c4", "small", "vgg16", "zf"]
# VGG's 2x2/2 max pools floor odd sizes; the others pad every stride-2 layer: n -> ceil(n / 2).
ROUND = {"vgg16": math.floor, "zf": math.ceil, "resnet50_c4": math.ceil, "small": math.ceil}


pytestmark = pytest.mark.usefixtures("two_torch_threads")


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
    # the timm nets are tested in tests/test_timm_backbone.py
    assert available_backbones() == sorted([*ALL, "timm", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])


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


def caffe_conv_matches_ours(caffe_weight, caffe_bias, our_conv, padding: int, stride: int = 1) -> None:
    """Our folded first conv on our input (RGB [0, 1], ImageNet mean/std) equals the Caffe conv on
    Caffe's input (BGR 0..255 minus py-faster-rcnn's PIXEL_MEANS), away from the zero-padded border."""
    torch.manual_seed(3)
    rgb = torch.rand(1, 3, 40, 40)
    ours_in = (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    caffe_in = 255.0 * rgb.flip(1) - torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = our_conv(ours_in)
        theirs = torch.nn.functional.conv2d(caffe_in, caffe_weight, caffe_bias, stride=stride, padding=padding)
    inner = slice(padding, -padding)  # outputs whose window never touches the padding
    assert not torch.equal(our_conv.weight, caffe_weight)  # the file's weights were rewritten ...
    torch.testing.assert_close(ours[..., inner, inner], theirs[..., inner, inner], rtol=1e-4, atol=1e-3)  # ... to agree


def test_zf_loads_caffe_layer_names(zf, tmp_path):
    """py-faster-rcnn's ZF layer names conv1..conv5, fc6, fc7 (fc8 dropped); conv1 folded to our input."""
    flat = {k.split(".", 1)[1]: v.clone() for k, v in zf.state_dict().items()}  # "conv1.weight", "fc6.bias", ...
    flat["conv1.bias"].normal_()
    flat["fc8.weight"] = torch.zeros(1000, 4096)  # ImageNet classifier: dropped
    torch.save(flat, tmp_path / "zf.pth")
    loaded = build_backbone("zf", weights=tmp_path / "zf.pth")
    for layer in ("conv2", "conv3", "conv4", "conv5"):
        assert torch.equal(getattr(loaded.body, layer).weight, flat[f"{layer}.weight"])
    assert torch.equal(loaded.head.fc6.weight, flat["fc6.weight"])
    assert torch.equal(loaded.head.fc7.bias, flat["fc7.bias"])
    caffe_conv_matches_ours(flat["conv1.weight"], flat["conv1.bias"], loaded.body.conv1, padding=3, stride=2)


def test_vgg16_loads_caffe_layer_names(tv_vgg16, tmp_path):
    """A caffe -> pytorch VGG-16 with Caffe names (conv1_1.weight .. fc7.bias, fc8 dropped) lands in
    the same layers as torchvision's names; conv1_1 is folded from Caffe's BGR 0..255 input to ours."""
    _, ref = tv_vgg16
    caffe = {}
    for key, value in ref.items():  # features.0.weight -> conv1_1.weight, classifier.0.bias -> fc6.bias, ...
        module, _, leaf = key.rpartition(".")
        target = vgg.VGG16_TORCHVISION_KEYS[module]
        caffe[f"{target.split('.')[-1] if target else 'fc8'}.{leaf}"] = value
    assert {"conv1_1.weight", "conv4_3.bias", "fc6.weight", "fc8.weight"} <= set(caffe)
    torch.save(caffe, tmp_path / "vgg16_caffe.pth")
    loaded = build_backbone("vgg16", weights=tmp_path / "vgg16_caffe.pth")
    assert torch.equal(loaded.body.conv3_2.weight, ref["features.12.weight"])
    assert torch.equal(loaded.body.conv5_3.bias, ref["features.28.bias"])
    assert torch.equal(loaded.head.fc6.weight, ref["classifier.0.weight"])
    assert torch.equal(loaded.head.fc7.weight, ref["classifier.3.weight"])
    caffe_conv_matches_ours(caffe["conv1_1.weight"], caffe["conv1_1.bias"], loaded.body.conv1_1, padding=1)


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


def test_imagenet_download_failure_explains_the_fix(offline_torch_hub):
    with pytest.raises(RuntimeError) as err:
        build_backbone("vgg16", weights="imagenet")
    msg = str(err.value)
    assert "vgg16" in msg and "VGG16_Weights.IMAGENET1K_V1" in msg
    assert str(offline_torch_hub / "vgg16-397923af.pth") in msg and "local path" in msg


def test_imagenet_without_network_is_a_start_up_config_error(offline_torch_hub):
    """What train.py checks before any data or training: one message with the file torchvision wanted
    (its URL and the cache path it looked in) and how to pass a local state dict."""
    from frcnn.config.checks import check_backbone_weights
    from frcnn.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        check_backbone_weights({"backbone": {"name": "vgg16", "weights": "imagenet"}})
    msg = str(err.value)
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in msg
    assert str(offline_torch_hub / "vgg16-397923af.pth") in msg
    assert "backbone.weights=/path/to/vgg16-397923af.pth" in msg and "URLError" in msg
    with pytest.raises(ConfigError, match="backbone.weights=/nope/zf.pth: no such file"):
        check_backbone_weights({"backbone": {"name": "zf", "weights": "/nope/zf.pth"}})
    with pytest.raises(ConfigError, match="no torchvision ImageNet weights"):
        check_backbone_weights({"backbone": {"name": "zf", "weights": "imagenet"}})


def test_imagenet_from_the_hub_cache_needs_no_network(offline_torch_hub, tv_vgg16):
    offline_torch_hub.mkdir(parents=True)
    (offline_torch_hub / "vgg16-397923af.pth").symlink_to(tv_vgg16[0])  # as if downloaded earlier
    loaded = build_backbone("vgg16", weights="imagenet")
    assert torch.equal(loaded.body.conv2_1.weight, tv_vgg16[1]["features.5.weight"])


def test_random_init_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="frcnn.modeling.backbone"):
        build_backbone("small")
    assert any("random init" in r.getMessage().lower() for r in caplog.records)


def test_backbone_for_a_saved_detector_does_not_warn_about_random_init(caplog):
    with caplog.at_level(logging.WARNING, logger="frcnn.modeling.backbone"):
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


def test_cli_imagenet_without_network_exits_2_before_training(tmp_path):
    """`python train.py backbone=vgg16` (weights=imagenet) on a machine that cannot download: exit
    status 2 with the one message, no traceback, no stage started."""
    import os

    from tests.cli_runner import run_script

    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}  # port 9: connection refused
    result = run_script(["train.py", "backbone=vgg16", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert "Config error: backbone.weights=imagenet" in result.stderr
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in result.stderr and str(cached) in result.stderr
    assert "backbone.weights=/path/to/vgg16-397923af.pth" in result.stderr
    assert not (tmp_path / "run" / "stage1_rpn").exists()
