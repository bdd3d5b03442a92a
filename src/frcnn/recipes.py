"""Training recipes: chains of (LightningModule, Trainer.fit) stages writing into the run dir.

Run directory layout:
    <run_dir>/<stage>/checkpoints/last.ckpt   resumable state of the stage
    <run_dir>/<stage>/DONE                    marker: the stage finished
    <run_dir>/final/model.pt                  the unified detector
    <run_dir>/metrics.json                    final evaluation
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from frcnn.checkpoints import atomic_write_json, save_detector
from frcnn.data.build import build_dataset
from frcnn.data.datamodule import DetectionDataModule
from frcnn.evaluation.evaluate import evaluate_detector
from frcnn.evaluation.voc_ap import format_table
from frcnn.lit.joint import JointModule
from frcnn.tracking import build_logger, finish_logger

log = logging.getLogger(__name__)


def model_config(cfg: Mapping[str, Any]) -> dict:
    return {"backbone": dict(cfg["backbone"]), "rpn": dict(cfg["rpn"]), "roi_head": dict(cfg["roi_head"])}


def build_datamodule(cfg: Mapping[str, Any], images_per_batch: int) -> DetectionDataModule:
    data_cfg = cfg["data"]
    return DetectionDataModule(
        train_dataset_factory=lambda: build_dataset(data_cfg, "train"),
        val_dataset_factory=lambda: build_dataset(data_cfg, "val"),
        batch_size=int(images_per_batch),
        val_batch_size=max(int(images_per_batch), 4),
        num_workers=int(data_cfg.get("num_workers", 0)),
        seed=int(cfg.get("seed", 0)),
    )


def build_trainer(cfg: Mapping[str, Any], stage_dir: Path, stage_name: str, max_steps: int, logger,
                  val_every_n_epochs: int | None) -> L.Trainer:
    trainer_cfg = cfg["trainer"]
    checkpoint = ModelCheckpoint(
        dirpath=stage_dir / "checkpoints", save_last=True, save_top_k=0,
        every_n_train_steps=int(cfg["recipe"].get("checkpoint_every_n_steps", 200)),
    )
    return L.Trainer(
        accelerator=trainer_cfg["accelerator"], devices=trainer_cfg["devices"], num_nodes=trainer_cfg["num_nodes"],
        strategy=trainer_cfg["strategy"], precision=trainer_cfg["precision"],
        max_steps=int(max_steps), max_epochs=-1,
        check_val_every_n_epoch=int(val_every_n_epochs) if val_every_n_epochs else None,
        limit_val_batches=1.0 if val_every_n_epochs else 0,
        log_every_n_steps=int(trainer_cfg["log_every_n_steps"]),
        enable_progress_bar=bool(trainer_cfg["enable_progress_bar"]),
        deterministic=bool(trainer_cfg.get("deterministic", False)),
        gradient_clip_val=cfg["optim"].get("gradient_clip_norm"),
        default_root_dir=str(stage_dir), logger=logger, callbacks=[checkpoint],
        num_sanity_val_steps=0, enable_model_summary=False,
    )


def run_joint(cfg: Mapping[str, Any], run_dir: Path) -> dict:
    """Approximate joint training (§3.2 ii), then evaluation of the final detector."""
    stage_name = "joint"
    stage_dir = run_dir / stage_name
    schedule = cfg["schedule"]["joint"]
    datamodule = build_datamodule(cfg, schedule["images_per_batch"])
    datamodule.setup("fit")
    class_names = datamodule.class_names
    module = JointModule(model_config(cfg), dict(cfg["optim"]), list(schedule["lr_steps"]), class_names)
    timings: dict[str, float] = {}
    if not (stage_dir / "DONE").exists():
        logger = build_logger(cfg["logger"], run_dir, run_dir.name, stage_name, config=dict(cfg))
        trainer = build_trainer(cfg, stage_dir, stage_name, schedule["max_steps"], logger,
                                cfg["recipe"].get("val_every_n_epochs"))
        last = stage_dir / "checkpoints" / "last.ckpt"
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
        timings[stage_name] = time.perf_counter() - start
        if trainer.is_global_zero:
            (stage_dir / "DONE").write_text(f"{trainer.global_step}\n")
        finish_logger(logger)
    else:
        log.info("stage %s already finished; loading its last checkpoint", stage_name)
        state = torch.load(stage_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
    return finalize(cfg, run_dir, module.model, class_names, datamodule, timings)


def finalize(cfg, run_dir: Path, model, class_names, datamodule, timings: dict[str, float]) -> dict:
    """Save the unified detector, evaluate it on the val split, write metrics.json, print a table."""
    save_detector(model, model_config(cfg), class_names, run_dir / "final" / "model.pt")
    start = time.perf_counter()
    metrics = evaluate_detector(model.cpu(), datamodule.val_dataloader(), class_names)
    timings["evaluation"] = time.perf_counter() - start
    metrics["recipe"] = cfg["recipe"]["name"]
    metrics["stage_seconds"] = timings
    atomic_write_json(metrics, run_dir / "metrics.json")
    print(format_table(metrics))
    print(f"metrics written to {run_dir / 'metrics.json'}")
    return metrics


RECIPES = {"joint": run_joint}


def run_recipe(cfg: Mapping[str, Any], run_dir: str | Path) -> dict:
    name = cfg["recipe"]["name"]
    if name not in RECIPES:
        raise ValueError(f"recipe={name!r}; allowed: {sorted(RECIPES)}")
    L.seed_everything(int(cfg.get("seed", 0)), workers=True)
    return RECIPES[name](cfg, Path(run_dir))
