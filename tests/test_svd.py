"""Truncated SVD of the RoI head's fc layers (Fast R-CNN §3.1): the factorisation, the head surgery,
and the Detector / eval.py / detect.py options."""

import json

import pytest
import torch
from PIL import Image
from torch import nn

from frcnn.inference.detector_file import save_detector
from frcnn.inference.predictor import Detector
from frcnn.inference.svd import compress_roi_head, truncated_svd_linear
from frcnn.modeling.build import build_model
from tests.cli_runner import run_script
from tests.conftest import compose_config


def test_rank_t_layer_is_the_best_rank_t_approximation_and_full_rank_is_exact():
    torch.manual_seed(0)
    fc = nn.Linear(40, 24)
    x = torch.randn(16, 40)
    full = truncated_svd_linear(fc, 24)
    torch.testing.assert_close(full(x), fc(x), atol=1e-5, rtol=0)
    low = truncated_svd_linear(fc, 6)
    assert [tuple(layer.weight.shape) for layer in low] == [(6, 40), (24, 6)] and low[0].bias is None
    product = low[1].weight @ low[0].weight  # [24, 40], rank 6
    singular = torch.linalg.svdvals(fc.weight.double())
    error = torch.linalg.matrix_norm(product.double() - fc.weight.double())
    torch.testing.assert_close(error, singular[6:].pow(2).sum().sqrt(), atol=1e-5, rtol=1e-4)  # Eckart-Young
    torch.testing.assert_close(low(x), x @ product.T + fc.bias, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="allowed: 1..24"):
        truncated_svd_linear(fc, 25)


@pytest.fixture
def detector_file(tmp_path):
    cfg = compose_config(["backbone.weights=null"], tmp_path)
    model_cfg = {key: cfg[key] for key in ("backbone", "rpn", "roi_head")}
    torch.manual_seed(0)
    model = build_model(model_cfg, 5)
    path = tmp_path / "model.pt"
    save_detector(model, model_cfg, ["circle", "square", "triangle", "bar", "ring"], path)
    return path


def test_head_surgery_replaces_each_fc_layer_and_names_bad_ranks(detector_file):
    model = Detector.from_checkpoint(detector_file).model
    head = model.roi_head.head
    fc1, fc2 = head.fc1, head.fc2
    lines = compress_roi_head(model, [64, 0])
    assert isinstance(head.fc1, nn.Sequential) and head.fc2 is fc2  # 0 keeps a layer
    assert lines == [f"fc1: {fc1.in_features} -> {fc1.out_features}, rank 64: "
                     f"{fc1.in_features * fc1.out_features / 1e6:.1f} M -> "
                     f"{64 * (fc1.in_features + fc1.out_features) / 1e6:.1f} M multiply-adds per RoI"]
    with pytest.raises(ValueError, match=r"roi_head.svd_rank: 3 ranks for the 2 fully connected layers .*fc1, fc2"):
        compress_roi_head(Detector.from_checkpoint(detector_file).model, [8, 8, 8])
    with pytest.raises(ValueError, match="roi_head.svd_rank for fc2: rank 100000"):
        compress_roi_head(Detector.from_checkpoint(detector_file).model, [8, 100000])


def test_full_rank_detector_gives_the_same_detections_and_a_low_rank_one_runs(detector_file):
    image = torch.rand(3, 200, 240)
    plain = Detector.from_checkpoint(detector_file)(image)
    head = Detector.from_checkpoint(detector_file).model.roi_head.head
    full_ranks = [min(fc.in_features, fc.out_features) for fc in (head.fc1, head.fc2)]
    full = Detector.from_checkpoint(detector_file, svd_rank=full_ranks)(image)
    assert len(full.boxes) == len(plain.boxes)
    torch.testing.assert_close(full.boxes, plain.boxes, atol=1e-2, rtol=0)
    torch.testing.assert_close(full.scores, plain.scores, atol=1e-4, rtol=0)
    low = Detector.from_checkpoint(detector_file, svd_rank=16)(image)
    assert low.boxes.shape[1] == 4


@pytest.mark.slow
def test_eval_and_detect_take_the_svd_rank(detector_file, tmp_path):
    result = run_script(["scripts/eval.py", f"checkpoint={detector_file}", f"out_dir={tmp_path / 'eval'}",
                         "data.num_val=2", "proposal_recall.top_ns=[]", "roi_head.svd_rank=[32,16]"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "truncated SVD: fc1:" in result.stderr + result.stdout
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["svd_rank"] == [32, 16]
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48)).save(image)
    result = run_script(["scripts/detect.py", str(detector_file), str(image), "--out-dir", str(tmp_path / "det"),
                         "--svd-rank", "32", "16", "16"])
    assert result.returncode == 2 and "roi_head.svd_rank: 3 ranks for the 2 fully connected layers" in result.stderr


def test_exported_file_holds_the_compressed_head_and_matches_it(detector_file, tmp_path, capsys):
    from frcnn.cli.export_detector import main as export_main

    # exit 0: the file met the parity rule against the compressed eager model (beyond it: 1, file removed)
    assert export_main([str(detector_file), "--format", "torchscript", "--out", str(tmp_path / "d.pt"),
                        "--svd-rank", "32", "16"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "truncated SVD: fc1:" in printed and "truncated SVD: fc2:" in printed
    assert "max_box_diff_px" in printed  # the parity check ran against the compressed eager model
    exported = torch.jit.load(str(tmp_path / "d.pt"))
    names = {name for name, _ in exported.named_parameters()}
    assert any(name.endswith("fc1.0.weight") for name in names) and any(name.endswith("fc2.1.bias") for name in names)
