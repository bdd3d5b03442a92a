"""Validation during training: mAP logged, pictures of gt + detections sent to the logger."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn.engine.recipes import run_recipe
from frcnn.inference.drawing import GROUND_TRUTH_COLOUR, PALETTE, draw_ground_truth_and_detections, tensor_to_pil
from frcnn.lit.val_images import log_pictures

CLASSES = ["circle", "square"]


def test_picture_shows_ground_truth_in_white_and_detections_in_class_colour():
    image = Image.new("RGB", (120, 100), (40, 40, 40))
    picture = np.asarray(draw_ground_truth_and_detections(
        image, torch.tensor([[10.0, 60.0, 50.0, 95.0]]), torch.tensor([1]),
        torch.tensor([[60.0, 20.0, 110.0, 80.0]]), torch.tensor([2]), torch.tensor([0.9]), CLASSES))
    assert picture.shape == (100, 120, 3)
    assert tuple(picture[80, 10]) == GROUND_TRUTH_COLOUR  # left edge of the gt box
    assert tuple(picture[60, 60]) == PALETTE[1]  # left edge of the class-2 detection
    assert tuple(picture[5, 5]) == (40, 40, 40)  # untouched background
    assert np.array_equal(np.asarray(image)[5, 5], [40, 40, 40])  # the input is not drawn on


def test_tensor_to_pil_round_trips_8_bit_pixels():
    pixels = torch.randint(0, 256, (3, 7, 5), dtype=torch.uint8)
    assert np.array_equal(np.asarray(tensor_to_pil(pixels.float() / 255)), pixels.permute(1, 2, 0).numpy())


def test_csv_logger_gets_png_files(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    pictures = [np.full((20, 30, 3), 200, np.uint8), np.zeros((20, 30, 3), np.uint8)]
    written = log_pictures(CSVLogger(str(tmp_path), name="csv", version="joint"), pictures, "joint/val_pictures", 12, None)
    assert [p.name for p in written] == ["step0000012_0.png", "step0000012_1.png"]
    assert written[0].parent == tmp_path / "csv" / "joint" / "val_pictures"
    assert np.array_equal(np.asarray(Image.open(written[0])), pictures[0])


def test_wandb_logger_takes_pictures_offline(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="frcnn-test", save_dir=str(tmp_path), mode="offline")
    written = log_pictures(logger, [np.full((20, 30, 3), 90, np.uint8)], "joint/val_pictures", 3, tmp_path)
    run_dir = logger.experiment.dir
    import wandb

    wandb.finish()
    assert written == []  # W&B took them: nothing written beside the run
    assert list((tmp_path / "wandb").rglob("*.png")), f"no picture in the offline run {run_dir}"


def test_final_metrics_become_the_wandb_run_summary(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    from frcnn.engine.loggers import flat_scalar_metrics, log_final_results

    monkeypatch.setenv("WANDB_MODE", "offline")
    metrics = {"map_50": 0.75, "ap_per_class": {"circle": 0.5, "square": 1.0}, "recipe": "joint", "num_images": 4}
    assert flat_scalar_metrics(metrics) == {"final/map_50": 0.75, "final/ap_per_class/circle": 0.5,
                                            "final/ap_per_class/square": 1.0, "final/num_images": 4.0}
    figure = tmp_path / "pr_curves.png"
    Image.new("RGB", (40, 30), (0, 90, 0)).save(figure)
    logger = WandbLogger(project="frcnn-test", save_dir=str(tmp_path), mode="offline")
    log_final_results(logger, metrics, {"pr_curves.png": figure}, [np.zeros((20, 30, 3), np.uint8)])
    summary = dict(logger.experiment.summary)
    import wandb

    wandb.finish()
    assert summary["final/map_50"] == 0.75 and summary["final/ap_per_class/square"] == 1.0
    assert len(list((tmp_path / "wandb").rglob("*.png"))) == 2  # the plot + one detection picture


def csv_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_joint_run_logs_validation_map_and_pictures(compose_cfg, tmp_path):
    cfg = compose_cfg(["recipe=joint", "logger=csv", "data.num_train=8", "data.num_val=4", "schedule.joint.max_steps=4",
                       "schedule.joint.images_per_batch=4", "recipe.val_every_n_epochs=1", "recipe.val_pictures=3"],
                      tmp_path)
    metrics = run_recipe(cfg, tmp_path)
    val_maps = [row["val/map_50"] for row in csv_rows(tmp_path / "csv" / "joint" / "metrics.csv") if row.get("val/map_50")]
    assert len(val_maps) == 2  # 8 images / 4 per batch = 2 steps an epoch: validation after epochs 1 and 2
    pictures = sorted((tmp_path / "csv" / "joint" / "val_pictures").glob("*.png"))
    assert [p.name for p in pictures] == [f"step{s:07d}_{i}.png" for s in (2, 4) for i in range(3)]
    assert Image.open(pictures[0]).size == (256, 256)  # the data's size: drawn on the network input
    final = csv_rows(tmp_path / "csv" / "final" / "metrics.csv")  # the final evaluation, logged as job "final"
    assert float(final[0]["final/map_50"]) == pytest.approx(metrics["map_50"])
    assert "final/ap_per_class/circle" in final[0]
    assert len(list((tmp_path / "csv" / "final" / "val_pictures").glob("*.png"))) == 3


@pytest.mark.slow
def test_alternating_run_validates_its_last_stage_only(compose_cfg, tmp_path):
    steps = [f"schedule.alternating.{s}.{k}" for s in ("stage1_rpn", "stage1_det", "stage2_rpn", "stage2_det")
             for k in ("max_steps=2", "lr_steps=[1]", "images_per_batch=2")]
    cfg = compose_cfg(["recipe=alternating", "logger=csv", "data.num_train=4", "data.num_val=2",
                       "recipe.proposals.post_nms_top_n=50", "recipe.val_every_n_epochs=1", "recipe.val_pictures=1", "trainer.log_every_n_steps=1"]
                      + steps, tmp_path)
    run_recipe(cfg, tmp_path)
    for stage in ("stage1_rpn", "stage1_det", "stage2_rpn"):
        rows = csv_rows(tmp_path / "csv" / stage / "metrics.csv")
        assert rows and not any(row.get("val/map_50") for row in rows)
    last = csv_rows(tmp_path / "csv" / "stage2_det" / "metrics.csv")
    assert [row["val/map_50"] for row in last if row.get("val/map_50")]
    assert len(list((tmp_path / "csv" / "stage2_det" / "val_pictures").glob("*.png"))) == 1
