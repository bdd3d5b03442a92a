"""frcnn.modeling.backbone where the suite left mutants alive (scripts/mutation_test.sh).

mutmut runs, for a mutant, the tests that called its function in its first pass; a network built by a
module-scoped fixture is seen by the first test only. The tests here build what they check themselves, and
check values (the torchvision net's own forward, Caffe's LRN worked out by hand), not shapes alone."""

from __future__ import annotations

import math
import urllib.error

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn.checkpoint.pretrained import WeightsUnavailableError
from frcnn.modeling.backbone import (WEIGHTS_FROM_DETECTOR, WithinChannelLRN, build_backbone, check_weights_available,
                                     freeze_prefix)
from frcnn.modeling.backbone.resnet import map_resnet50_key
from frcnn.modeling.backbone.timm_net import create_timm_net, load_timm_pretrained
from frcnn.modeling.backbone.weights import load_backbone_weights

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


@pytest.fixture
def offline_torch_hub(monkeypatch, tmp_path):
    """An empty torch hub cache and no network."""
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


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
                                         r"dict instead, backbone.weights=/path/to/file.pth \(local path; our Backbone"):
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


def test_timm_pretrained_loading_reads_the_given_file_not_the_hub(monkeypatch, tmp_path):
    """load_timm_pretrained gets the file frcnn.checkpoint.timm_hub found (start-up check): timm must read that file,
    not look in the hub itself (here an empty cache, offline); its 1000-way classifier is dropped."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(6)
    source = timm.create_model("resnet18")  # with its classifier, as timm's ImageNet files are
    save_file(source.state_dict(), str(tmp_path / "elsewhere.safetensors"))
    net = create_timm_net("resnet18")
    load_timm_pretrained(net, str(tmp_path / "elsewhere.safetensors"))
    torch.testing.assert_close(net.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert not any(key.startswith("fc.") for key in net.state_dict())
