"""Short real training runs on the built-in data (CPU)."""

import csv
import json

import pytest
import torch

from frcnn.config.checks import validate_config
from frcnn.data.synthetic import ShapesDataset
from frcnn.engine import recipes
from frcnn.engine.recipes import run_recipe
from frcnn.errors import ConfigError
from frcnn.inference.detector_file import load_detector
from frcnn.inference.predictor import network_input
from tests.cli_runner import run_fresh
from tests.test_console import console_problems

TINY = ["recipe=joint", "data.num_train=64", "data.num_val=24", "schedule.joint.images_per_batch=4", "recipe.val_every_n_epochs=null"]


def read_losses(run_dir):
    with open(run_dir / "csv" / "joint" / "metrics.csv") as f:
        return [float(row["train/total"]) for row in csv.DictReader(f) if row.get("train/total")]


@pytest.mark.slow
def test_joint_training_loss_falls_and_map_beats_untrained(compose_cfg, tmp_path, monkeypatch):
    untrained = run_recipe(compose_cfg(TINY + ["logger=none", "schedule.joint.max_steps=1"], tmp_path / "untrained"),
                           tmp_path / "untrained")
    cfg = compose_cfg(TINY + ["logger=csv", "schedule.joint.max_steps=50", "schedule.joint.lr_steps=[40]",
                             "trainer.log_every_n_steps=5"], tmp_path / "run")
    finalized, finalize = [], recipes.finalize

    def keep_the_model(cfg, run_dir, model, *rest):  # the trained model, as the recipe saves and evaluates it
        finalized.append(model)
        return finalize(cfg, run_dir, model, *rest)

    monkeypatch.setattr(recipes, "finalize", keep_the_model)
    metrics = run_recipe(cfg, tmp_path / "run")
    losses = read_losses(tmp_path / "run")
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3
    assert metrics["map_50"] > untrained["map_50"] + 0.2  # seed 0, built-in weights, 50 steps: 0.389 vs 0.0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["num_images"] == 24 and set(saved["ap_per_class"]) == {"circle", "square", "triangle", "bar", "ring"}
    # the unified detector reloads and gives the trained model's detections on the val images, exactly
    model, class_names = load_detector(tmp_path / "run" / "final" / "model.pt")
    assert class_names == ["circle", "square", "triangle", "bar", "ring"]
    images = [network_input(ShapesDataset("val", num_images=24).raw(i)[0], 256, 1000) for i in range(4)]
    with torch.no_grad():
        reloaded, trained = model(images), finalized[0].cpu().eval()(images)
    assert sum(len(found["scores"]) for found in trained) > 0
    for again, expected in zip(reloaded, trained):
        assert set(again) == {"boxes", "scores", "labels"}
        assert all(torch.equal(again[key], expected[key]) for key in again)


@pytest.mark.slow
def test_rerun_of_finished_run_skips_training(compose_cfg, tmp_path):
    cfg = compose_cfg(TINY + ["logger=none", "schedule.joint.max_steps=3"], tmp_path)
    run_recipe(cfg, tmp_path)
    done_mtime = (tmp_path / "joint" / "DONE").stat().st_mtime
    metrics_mtime = (tmp_path / "metrics.json").stat().st_mtime
    second = run_recipe(cfg, tmp_path)
    assert second == json.loads((tmp_path / "metrics.json").read_text())  # stored: nothing trained or evaluated again
    assert (tmp_path / "joint" / "DONE").stat().st_mtime == done_mtime
    assert (tmp_path / "metrics.json").stat().st_mtime == metrics_mtime


@pytest.mark.slow
def test_cli_runs_with_overrides_and_writes_metrics(tmp_path):
    cmd = ["train.py", "recipe=joint", "logger=csv", "schedule.joint.max_steps=4", "data.num_train=8",
           "data.num_val=4", f"hydra.run.dir={tmp_path}"]
    result = run_fresh(cmd)  # a fresh interpreter: import-time warnings are part of the console checked
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mAP" in result.stdout
    assert console_problems(result.stdout, result.stderr) == []  # each line once, no foreign tips / deprecations
    # frcnn's own log lines are kept: the default loads the built-in weights and says so
    assert "[frcnn.modeling.backbone.build][INFO] - backbone 'small': loaded weights from built-in small_shapes_pretrained.pt" \
        in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"map_50", "map_voc07", "ap_per_class", "num_images"} <= set(metrics)
    assert (tmp_path / ".hydra" / "config.yaml").exists()


@pytest.mark.parametrize("override, key", [
    ("rpn.lambda=-1", "rpn.lambda"),
    ("rpn.anchor_scales=[]", "rpn.anchor_scales"),
    ("rpn.anchor_ratios=[0,1]", "rpn.anchor_ratios"),
    ("rpn.fg_iou=0.2", "rpn.fg_iou"),
    ("backbone.name=alexnet", "backbone"),
    ("logger.name=mlflow", "logger"),
    ("optim.name=rmsprop", "optim.name"),
])
def test_bad_config_values_stop_before_training_naming_the_key(compose_cfg, tmp_path, override, key):
    cfg = compose_cfg([override], tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_default_config_holds_paper_values(compose_cfg, tmp_path):
    cfg = compose_cfg([], tmp_path)
    validate_config(cfg)
    rpn, roi = cfg["rpn"], cfg["roi_head"]
    assert rpn["lambda"] == 10 and rpn["anchor_ratios"] == [0.5, 1.0, 2.0]
    assert (rpn["fg_iou"], rpn["bg_iou"], rpn["batch_size"], rpn["positive_fraction"]) == (0.7, 0.3, 256, 0.5)
    assert rpn["train"] == {"pre_nms_top_n": 12000, "post_nms_top_n": 2000}
    assert (rpn["test"]["pre_nms_top_n"], rpn["test"]["post_nms_top_n"]) == (6000, 300)
    assert (roi["rois_per_minibatch"], roi["positive_fraction"], roi["fg_iou"]) == (512, 0.25, 0.5)  # 128 x 4 images
    assert roi["target_stds"] == [0.1, 0.1, 0.2, 0.2] and roi["nms_thresh"] == 0.3
    assert cfg["recipe"]["name"] == "alternating" and cfg["data"]["name"] == "shapes"
    # the CPU preset's deviations are exactly those docs/CPU_PRESET.md measures
    assert (rpn["anchor_scales"], rpn["min_size"], roi["bg_iou_lo"]) == ([32, 64, 128], 4, 0.0)
    assert (cfg["optim"]["name"], cfg["optim"]["lr"]) == ("adamw", 0.001)
    # the paper's ImageNet initialisation, in the built-in data's version (§3.1.3)
    assert (cfg["backbone"]["name"], cfg["backbone"]["weights"]) == ("small", "builtin")
    # without the preset every group default is the paper's
    paper = compose_cfg(["~experiment"], tmp_path)
    assert paper["rpn"]["anchor_scales"] == [128, 256, 512] and paper["rpn"]["min_size"] == 16
    assert paper["roi_head"]["bg_iou_lo"] == 0.1 and paper["roi_head"]["rois_per_minibatch"] == 128
    optim = paper["optim"]
    assert (optim["name"], optim["lr"], optim["momentum"], optim["weight_decay"]) == ("sgd", 0.001, 0.9, 0.0005)
