"""The built-in pre-trained small backbone: the shipped file, `weights=builtin`, the pre-training."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from frcnn.config.schema import BACKBONE
from frcnn.engine.pretrain_small import (
    PretrainConfig,
    pretrain_small_backbone,
    render_crop,
    save_pretrained,
    weights_sha256,
)
from frcnn.errors import ConfigError
from frcnn.modeling.backbone import BUILTIN_SMALL_VOCLIKE_WEIGHTS, BUILTIN_SMALL_WEIGHTS, build_backbone

REPO = Path(__file__).resolve().parents[1]
TINY = PretrainConfig(seed=3, steps=2, batch_size=4, num_eval=0)


SHIPPED = {"builtin": BUILTIN_SMALL_WEIGHTS, "builtin_voclike": BUILTIN_SMALL_VOCLIKE_WEIGHTS}


def _shipped(weights: str = "builtin") -> dict:
    return torch.load(SHIPPED[weights], map_location="cpu", weights_only=True)


@pytest.mark.parametrize("weights", sorted(SHIPPED))
def test_builtin_weights_load_exactly_the_shipped_file(weights):
    shipped = _shipped(weights)["state_dict"]
    backbone = build_backbone("small", weights=weights)
    loaded = backbone.state_dict()
    assert sorted(loaded) == sorted(shipped)
    for key, value in shipped.items():
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key


@pytest.mark.parametrize("weights", sorted(SHIPPED))
def test_shipped_file_metadata_is_sane(weights):
    meta = _shipped(weights)["meta"]
    assert SHIPPED[weights].stat().st_size < 5 * 2**20  # a few MB at most
    assert (REPO / "scripts" / meta["script"]).is_file()
    assert re.fullmatch(r"[0-9a-f]{64}", meta["script_sha256"]) and re.fullmatch(r"[0-9a-f]{64}", meta["module_sha256"])
    assert meta["weights_sha256"] == weights_sha256(_shipped(weights)["state_dict"])  # the tensors are the ones trained
    assert isinstance(meta["config"]["seed"], int) and meta["config"]["steps"] > 0
    assert re.match(r"\d+\.\d+", meta["torch_version"])
    assert meta["config"].get("data", "shapes") == {"builtin": "shapes", "builtin_voclike": "voclike"}[weights]
    assert 0.5 < meta["metrics"]["eval_accuracy"] <= 1.0  # 6 or 21 classes: chance is 1/6 or 1/21


def test_builtin_is_refused_for_backbones_without_shipped_weights():
    with pytest.raises(ValueError, match=r"weights='builtin' exists only for \['small'\]"):
        build_backbone("zf", weights="builtin")
    with pytest.raises(ConfigError, match=r"backbone.weights='builtin' is only shipped for backbone small, not 'vgg16'"):
        BACKBONE.check({"name": "vgg16", "weights": "builtin"}, "backbone")
    BACKBONE.check({"name": "small", "weights": "builtin"}, "backbone")


def test_start_up_check_accepts_builtin_and_names_a_missing_shipped_file(monkeypatch, tmp_path):
    """train.py's start-up check (check_backbone_weights) must take `backbone.weights=builtin`
    (it once looked for a file literally named "builtin"), and name the shipped file if it is gone."""
    from frcnn.config.checks import check_backbone_weights
    from frcnn.modeling.backbone import build as backbones

    check_backbone_weights({"backbone": {"name": "small", "weights": "builtin"}})
    gone = tmp_path / "small_shapes_pretrained.pt"
    monkeypatch.setitem(backbones._SPECS, "small", replace(backbones._SPECS["small"], builtin={"builtin": gone}))
    with pytest.raises(ConfigError, match=re.escape(f"the built-in weights file {gone} is missing")):
        check_backbone_weights({"backbone": {"name": "small", "weights": "builtin"}})
    with pytest.raises(ConfigError, match="weights='builtin_voclike' exists only for"):
        check_backbone_weights({"backbone": {"name": "small", "weights": "builtin_voclike"}})


@pytest.fixture
def one_thread():
    """The script's thread count (make_deterministic); also 7x faster than 2 threads on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_pretraining_is_deterministic_and_moves_the_weights(tmp_path, one_thread):
    torch.manual_seed(TINY.seed)
    initial = build_backbone("small", weights="<detector checkpoint>").state_dict()
    first, metrics = pretrain_small_backbone(TINY, log_every=0)
    second, _ = pretrain_small_backbone(TINY, log_every=0)
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    assert not torch.equal(initial["body.stage1.0.weight"], first.state_dict()["body.stage1.0.weight"])
    assert metrics["train_loss"] > 0
    # the same run saves the same bytes, and build_backbone reads the file back
    script = REPO / "scripts" / "pretrain_small_backbone.py"
    sha_a = save_pretrained(first, TINY, metrics, script, tmp_path / "a.pt")
    sha_b = save_pretrained(second, TINY, metrics, script, tmp_path / "b.pt")
    assert sha_a == sha_b and (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    reloaded = build_backbone("small", weights=tmp_path / "a.pt").state_dict()
    assert torch.equal(reloaded["head.fc1.weight"], first.state_dict()["head.fc1.weight"].half().float())


def test_crops_hold_one_shape_or_only_clutter():
    cfg = replace(TINY, background_fraction=0.5)
    labels = [render_crop(cfg, i)[1] for i in range(40)]
    assert 0 in labels and set(labels) - {0}  # both kinds occur
    image, _ = render_crop(cfg, 0)
    assert image.shape == (112, 112, 3) and image.dtype.name == "uint8"
    assert (render_crop(cfg, 7)[0] == render_crop(cfg, 7)[0]).all()  # item i is the same on every call


def test_voclike_crops_hold_one_of_the_20_classes_or_only_stuff():
    cfg = replace(TINY, data="voclike")
    labels = [render_crop(cfg, i)[1] for i in range(60)]
    assert 0 in labels and len(set(labels) - {0}) >= 10 and max(labels) <= 20
    assert (render_crop(cfg, 7)[0] == render_crop(cfg, 7)[0]).all()
    with pytest.raises(ValueError, match="PretrainConfig.data='imagenet'"):
        pretrain_small_backbone(replace(TINY, data="imagenet"), log_every=0)
