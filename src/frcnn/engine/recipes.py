"""Training recipes: chains of (LightningModule, Trainer.fit) stages writing into the run dir.

Run directory layout:
    <run_dir>/<stage>/checkpoints/last.ckpt   resumable state of the stage
    <run_dir>/<stage>/DONE                    marker: the stage finished
    <run_dir>/<stage>/checkpoints/best.ckpt   recipe.keep_best: the stage's best validation checkpoint
    <run_dir>/<stage>/best.json               ... the step and score the stage ended with (frcnn.lit.selection)
    <run_dir>/final/model.pt                  the unified detector
    <run_dir>/metrics.json                    final evaluation
    <run_dir>/.frcnn.lock                     held by the process training here (frcnn.utils.run_lock)
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from frcnn.checkpoint.safe_load import read_torch_file
from frcnn.data.build import build_dataset
from frcnn.data.datamodule import DetectionDataModule, resolve_num_workers
from frcnn.engine.fit_to_data import fit_config_to_data
from frcnn.engine.loggers import build_logger, finish_logger, log_final_results
from frcnn.engine.proposal_files import (
    PROPOSAL_FILE_NAME,
    ProposalDataset,
    generate_proposal_file,
    images_of_this_rank,
    load_proposal_file,
)
from frcnn.engine.proposal_store import ProposalFile
from frcnn.engine.resume import check_run_config, finished_metrics, resume_checkpoint
from frcnn.engine.run_report import stage_banner
from frcnn.engine.target_stats import use_empirical_targets
from frcnn.evaluation.evaluate import evaluate_split
from frcnn.evaluation.proposal_recall import format_recall_table
from frcnn.evaluation.report import write_evaluation_report
from frcnn.evaluation.voc_ap import format_table
from frcnn.inference.detector_file import save_detector
from frcnn.lit.averaging import weight_averaging_callbacks
from frcnn.lit.callbacks import CheckpointOnSigterm, FaultPoint, StepSeed, seed_stage
from frcnn.lit.checkpoint_io import AtomicCheckpointIO
from frcnn.lit.guards import LossGuard
from frcnn.lit.joint import JointModule
from frcnn.lit.progress import stage_progress
from frcnn.lit.selection import (
    SELECTION_FILE,
    finish_selection,
    read_selection,
    selection_callbacks,
    selection_summary,
)
from frcnn.lit.stages import StageModule
from frcnn.lit.val_images import PictureCollector, ValidationPictureLogger
from frcnn.modeling.faster_rcnn import UnsharedFasterRCNN
from frcnn.modeling.rpn import ProposalSettings
from frcnn.utils.atomic_io import atomic_torch_save, atomic_write_json, atomic_write_text
from frcnn.utils.fault_injection import fault_point
from frcnn.utils.progress import configure_progress, start_progress
from frcnn.utils.run_lock import RunDirLock

log = logging.getLogger(__name__)
# Lightning's PossibleUserWarning when a module is in eval mode at fit start: frcnn's frozen layers are, by design
EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"
# ... and ModelCheckpoint's (recipe.keep_best) when a resumed stage's checkpoint folder holds last.ckpt: expected
NOT_EMPTY_WARNING = r"Checkpoint directory .* exists and is not empty"
SIGTERM_EXIT_STATUS = 143  # 128 + SIGTERM: stopped, not finished (a scheduler must not read it as success)


def model_config(cfg: Mapping[str, Any]) -> dict:
    """The backbone / rpn / roi_head nodes the model is built from. ``recipe=joint
    recipe.approximate=false`` (non-approximate joint training, §3.2 iii) adds
    ``roi_head.warp_boxes: true``: RoI warping at training and test time (the saved detector
    records it); the approximate default adds nothing, so its model and files are unchanged."""
    roi_head = dict(cfg["roi_head"])
    recipe = cfg.get("recipe", {})
    if recipe.get("name") == "joint" and not recipe.get("approximate", True):
        roi_head["warp_boxes"] = True
    return {"backbone": dict(cfg["backbone"]), "rpn": dict(cfg["rpn"]), "roi_head": roi_head}


def build_datamodule(cfg: Mapping[str, Any], images_per_batch: int, train_factory=None) -> DetectionDataModule:
    data_cfg = cfg["data"]
    return DetectionDataModule(
        train_dataset_factory=train_factory or (lambda: build_dataset(data_cfg, "train")),
        val_dataset_factory=lambda: build_dataset(data_cfg, "val"),
        batch_size=int(images_per_batch),
        val_batch_size=max(int(images_per_batch), 4),
        num_workers=resolve_num_workers(data_cfg.get("num_workers", 0)),
        pin_memory=bool(data_cfg.get("pin_memory", False)) and cfg["trainer"]["accelerator"] != "cpu",
        seed=int(cfg.get("seed", 0)),
        aspect_ratio_grouping=bool(data_cfg.get("aspect_ratio_grouping", False)),
        sampler=str(data_cfg.get("sampler", "uniform")),
        repeat_thresh=float(data_cfg.get("repeat_thresh", 0.3)),
    )


def build_trainer(cfg: Mapping[str, Any], stage_dir: Path, stage_name: str, max_steps: int, logger,
                  val_every_n_epochs: int | None, extra_callbacks: list | None = None,
                  use_distributed_sampler: bool = True) -> L.Trainer:
    """The stage's Trainer. ``use_distributed_sampler=False`` when the data module deals out each rank's
    share itself (repeat-factor sampling: frcnn.data.datamodule)."""
    trainer_cfg = cfg["trainer"]
    progress, enable_progress_bar = stage_progress(stage_name, trainer_cfg)  # a bar in a terminal, else lines
    checkpoint = ModelCheckpoint(
        dirpath=stage_dir / "checkpoints", save_last=True, save_top_k=0,
        every_n_train_steps=int(cfg["recipe"].get("checkpoint_every_n_steps", 200)),
    )
    return L.Trainer(
        accelerator=trainer_cfg["accelerator"], devices=trainer_cfg["devices"], num_nodes=trainer_cfg["num_nodes"],
        strategy=trainer_cfg["strategy"], precision=trainer_cfg["precision"],
        max_steps=int(max_steps), max_epochs=-1,
        check_val_every_n_epoch=int(val_every_n_epochs) if val_every_n_epochs else None,
        limit_val_batches=None if val_every_n_epochs else 0,  # None: all batches, without Lightning's note
        log_every_n_steps=int(trainer_cfg["log_every_n_steps"]),
        enable_progress_bar=enable_progress_bar,
        deterministic=bool(trainer_cfg.get("deterministic", False)),
        gradient_clip_val=cfg["optim"].get("gradient_clip_norm"),
        default_root_dir=str(stage_dir), logger=logger, callbacks=[checkpoint, *progress, *(extra_callbacks or [])],
        num_sanity_val_steps=0, enable_model_summary=False, use_distributed_sampler=use_distributed_sampler,
        plugins=[AtomicCheckpointIO()],  # last.ckpt: .tmp beside it, fsync, rename; the old one survives a failed write
    )


def validation_callbacks(cfg: Mapping[str, Any], stage_dir: Path, stage_name: str, module: L.LightningModule,
                         val_every_n_epochs: int | None) -> list:
    """The validation-picture logger when the stage validates and ``recipe.val_pictures`` > 0."""
    num_pictures = int(cfg["recipe"].get("val_pictures", 0) or 0)
    if not val_every_n_epochs or num_pictures <= 0:
        return []
    return [ValidationPictureLogger(num_pictures, module.class_names, key=f"{stage_name}/val_pictures",
                                    fallback_dir=stage_dir)]


def fit_stage(cfg: Mapping[str, Any], run_dir: Path, stage_name: str, module: L.LightningModule,
              datamodule: L.LightningDataModule, schedule: Mapping[str, Any], timings: dict[str, float],
              val_every_n_epochs: int | None = None) -> L.LightningModule:
    """Train one stage unless it is DONE; resume it from its last checkpoint if interrupted.

    Writes <run_dir>/<stage>/checkpoints/last.ckpt (Lightning state, every
    recipe.checkpoint_every_n_steps and on SIGTERM), <stage>/model.pt (the stage's weights) and
    <stage>/DONE. A finished stage is loaded from model.pt instead. A resumed stage continues with
    the batches, augmentation and sampling an uninterrupted run would have used (frcnn.data.resumable,
    StepSeed). SIGTERM: the checkpoint is written and the process exits with status 143.

    A stage that validates with ``recipe.keep_best`` / ``recipe.early_stop_patience`` (frcnn.lit.selection)
    ends with its best validation checkpoint's weights (model.pt holds them) and leaves <stage>/best.json;
    ``module.selection`` is that record (None without selection).
    """
    stage_dir = run_dir / stage_name
    weights = stage_dir / "model.pt"
    if rank_zero_only.rank == 0:
        log.info("%s", stage_banner(cfg, stage_name, f"{int(schedule['max_steps'])} steps"))
    if (stage_dir / "DONE").exists() and weights.exists():
        log.info("stage %s already finished; loading %s", stage_name, weights)
        module.model.load_state_dict(read_torch_file(weights, "stage weights file"))
        module.selection = read_selection(stage_dir)
        return module
    last, resume_step = resume_checkpoint(stage_dir)  # an unreadable checkpoint is moved aside, never used
    datamodule.resume_step = resume_step
    module.loss_guard = LossGuard(str(cfg["recipe"].get("on_nonfinite_loss", "error")), stage_name)
    on_sigterm = CheckpointOnSigterm(stage_dir / "checkpoints" / "last.ckpt")
    reliability = [StepSeed(int(cfg.get("seed", 0)), stage_name), on_sigterm, FaultPoint(stage_name)]
    logger = build_logger(cfg["logger"], run_dir, run_dir.name, stage_name, config=dict(cfg), resume_step=resume_step)
    selection = selection_callbacks(cfg["recipe"], stage_dir / "checkpoints") if val_every_n_epochs else []
    averaging = weight_averaging_callbacks(cfg["recipe"])
    trainer = build_trainer(cfg, stage_dir, stage_name, schedule["max_steps"], logger, val_every_n_epochs,
                            [*reliability, *averaging, *selection,
                             *validation_callbacks(cfg, stage_dir, stage_name, module, val_every_n_epochs)],
                            use_distributed_sampler=not getattr(datamodule, "shards_itself", False))
    if last is not None:
        log.info("stage %s: resuming from %s (step %d)", stage_name, last, resume_step)
    start = time.perf_counter()
    try:
        # Lightning reads the run's own last.ckpt; weights_only=True keeps even that file from running code
        # (frcnn's checkpoints hold only tensors and plain values; resume_checkpoint checked it the same way)
        with warnings.catch_warnings():  # frozen BatchNorms / conv are in eval mode on purpose (set_trainable)
            warnings.filterwarnings("ignore", message=EVAL_MODE_WARNING)
            warnings.filterwarnings("ignore", message=NOT_EMPTY_WARNING)
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last is not None else None,
                        weights_only=True)
    except SIGTERMException:
        finish_logger(logger)
        raise stopped_by_sigterm(stage_name, on_sigterm) from None
    timings[stage_name] = time.perf_counter() - start
    module.selection = finish_selection(trainer, module, stage_name, datamodule)  # keep_best: the best's weights
    if module.loss_guard.skipped_steps:
        log.warning("stage %s: %d batches skipped for a non-finite loss (steps %s)", stage_name,
                    len(module.loss_guard.skipped_steps), module.loss_guard.skipped_steps[:10])
    if trainer.is_global_zero:
        atomic_torch_save(module.model.state_dict(), weights)
        if module.selection is not None:
            atomic_write_json(module.selection, stage_dir / SELECTION_FILE)
        atomic_write_text(f"{trainer.global_step}\n", stage_dir / "DONE")
    finish_logger(logger)
    release_training_state(module)
    _barrier()
    return module


def release_training_state(module: L.LightningModule) -> None:
    """Free what a finished stage no longer needs: its gradients and its Trainer, which holds the
    optimiser state (SGD momentum: another copy of every trained weight; ~0.5 GB each for VGG-16).
    The later stages and the final detector use only the weights."""
    module.model.zero_grad(set_to_none=True)
    module.trainer = None


def stopped_by_sigterm(stage_name: str, on_sigterm: CheckpointOnSigterm) -> SystemExit:
    """Exit status 143 (128 + SIGTERM) with one line saying where the run stopped and how to resume."""
    print(f"SIGTERM: stage {stage_name} stopped at step {on_sigterm.saved_step}; checkpoint saved to "
          f"{on_sigterm.last_ckpt}. Rerun the same command to resume there.", file=sys.stderr, flush=True)
    return SystemExit(SIGTERM_EXIT_STATUS)


def _global_rank() -> int:
    """This process's global rank (0 without torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def run_joint(cfg: Mapping[str, Any], run_dir: Path) -> dict:
    """Joint training, approximate (§3.2 ii, the default) or not (§3.2 iii, recipe.approximate=false),
    then evaluation of the final detector."""
    joint = cfg["schedule"]["joint"]
    passes = int(joint.get("batches_per_update", 1))  # Caffe's iter_size: a loader batch holds every pass of an update
    datamodule = build_datamodule(cfg, joint["images_per_batch"] * passes)
    datamodule.setup("fit")
    cfg = fit_config_to_data(cfg, datamodule.train_dataset)  # auto anchors / min size, epochs -> steps
    schedule = cfg["schedule"]["joint"]
    class_names = datamodule.class_names
    seed_stage(int(cfg.get("seed", 0)), "joint")
    module = JointModule(model_config(cfg), dict(cfg["optim"]), list(schedule["lr_steps"]), class_names,
                         images_per_pass=int(joint["images_per_batch"]) if passes > 1 else None)
    timings: dict[str, float] = {}
    fit_stage(cfg, run_dir, "joint", module, datamodule, schedule, timings, cfg["recipe"].get("val_every_n_epochs"))
    return finalize(cfg, run_dir, module.model, class_names, datamodule, timings, module.selection)


def proposal_stage(cfg: Mapping[str, Any], run_dir: Path, stage_name: str, model, dataset,
                   timings: dict[str, float]) -> ProposalFile:
    """Stage 2 / 5: the trained RPN proposes boxes for every training image (no pre-NMS cut,
    NMS 0.7, top 2000 by default), written once to <run_dir>/<stage>/proposals.safetensors
    (atomically; streamed, so memory does not grow with the dataset); a file that does not load
    (damaged) is moved aside and the proposals are computed again."""
    path = run_dir / stage_name / PROPOSAL_FILE_NAME
    if rank_zero_only.rank == 0:
        log.info("%s", stage_banner(cfg, stage_name, f"{len(dataset)} images"))
    if path.exists():
        try:
            return load_proposal_file(path, len(dataset))
        except ValueError as exc:
            log.warning("%s; moved to %s.corrupt, proposing again", exc, path)
            path.replace(path.with_name(path.name + ".corrupt"))
    start = time.perf_counter()
    prop_cfg = cfg["recipe"]["proposals"]
    settings = ProposalSettings(
        pre_nms_top_n=int(prop_cfg["pre_nms_top_n"]), post_nms_top_n=int(prop_cfg["post_nms_top_n"]),
        nms_thresh=float(prop_cfg["nms_thresh"]), min_size_px=float(cfg["rpn"]["min_size"]),
    )
    progress = start_progress(stage_name, images_of_this_rank(len(dataset)), "images")  # rank 0's share under DDP

    def on_progress(done: int) -> None:
        progress.update(done)
        fault_point(stage_name, done)

    generate_proposal_file(model, dataset, settings, path, on_progress=on_progress)
    progress.update(images_of_this_rank(len(dataset)))
    progress.close()
    timings[stage_name] = time.perf_counter() - start
    return load_proposal_file(path, len(dataset))


def run_alternating(cfg: Mapping[str, Any], run_dir: Path) -> dict:
    """The paper's 4-step alternating training (§3.2), each step its own Trainer:

    1 stage1_rpn: RPN + shared conv from ImageNet init.   2 stage1_proposals.
    3 stage1_det: Fast R-CNN on a *fresh* ImageNet backbone, on stage-1 proposals.
    4 stage2_rpn: conv from stage1_det, frozen; only RPN layers train.   5 stage2_proposals.
    6 stage2_det: conv still frozen; only Fast R-CNN unique layers (fc, outputs) fine-tune.
    7 unify: stage-4 conv + RPN with the stage-6 head in one checkpoint -> final/model.pt.
    With recipe.unshared the run stops after step 3 (separate backbones, paper Table 2/3).
    """
    base = build_datamodule(cfg, cfg["schedule"]["alternating"]["stage1_rpn"]["images_per_batch"])
    base.setup("fit")
    cfg = fit_config_to_data(cfg, base.train_dataset)  # auto anchors / min size, epochs -> steps
    stages = cfg["schedule"]["alternating"]
    model_cfg, optim_cfg = model_config(cfg), dict(cfg["optim"])
    class_names = base.class_names
    train_set = base.train_dataset
    timings: dict[str, float] = {}

    def stage_module(name: str, kind: str, freeze_shared: bool) -> StageModule:
        seed_stage(int(cfg.get("seed", 0)), name)  # the model's init does not depend on the stages before
        return StageModule(kind, model_cfg, optim_cfg, list(stages[name]["lr_steps"]), class_names,
                           freeze_shared=freeze_shared, stage_name=name)

    def detector_data(proposals: ProposalFile, name: str) -> DetectionDataModule:
        return build_datamodule(cfg, stages[name]["images_per_batch"],
                                train_factory=lambda: ProposalDataset(train_set, proposals))

    rpn1 = fit_stage(cfg, run_dir, "stage1_rpn", stage_module("stage1_rpn", "rpn", False), base,
                     stages["stage1_rpn"], timings)
    proposals1 = proposal_stage(cfg, run_dir, "stage1_proposals", rpn1.model, train_set, timings)
    det1 = stage_module("stage1_det", "detector", False)  # fresh backbone: not shared yet
    empirical_targets(cfg, det1, train_set, proposals1)
    det1 = fit_stage(cfg, run_dir, "stage1_det", det1, detector_data(proposals1, "stage1_det"),
                     stages["stage1_det"], timings)
    if cfg["recipe"].get("unshared", False):
        model = UnsharedFasterRCNN(rpn1.model, det1.model)
        return finalize(cfg, run_dir, model, class_names, base, timings)

    rpn2 = stage_module("stage2_rpn", "rpn", True)
    copy_weights(det1.model.backbone, rpn2.model.backbone)  # initialised from the detector...
    copy_weights(det1.model.roi_head, rpn2.model.roi_head)  # (carried along for stage 6)
    rpn2.apply_trainable()  # ...whose conv layers are now fixed
    del rpn1, det1  # their weights live on in rpn2 (a VGG-16 copy is ~0.5 GB)
    rpn2 = fit_stage(cfg, run_dir, "stage2_rpn", rpn2, base, stages["stage2_rpn"], timings)
    proposals2 = proposal_stage(cfg, run_dir, "stage2_proposals", rpn2.model, train_set, timings)

    det2 = stage_module("stage2_det", "detector", True)
    start_last_detector(det2.model, rpn2.model, bool(cfg["recipe"].get("reinit_det_outputs", False)))
    empirical_targets(cfg, det2, train_set, proposals2)  # recomputed per stage, as the authors' train_net
    det2.apply_trainable()
    del rpn2
    det2 = fit_stage(cfg, run_dir, "stage2_det", det2, detector_data(proposals2, "stage2_det"),
                     stages["stage2_det"], timings, cfg["recipe"].get("val_every_n_epochs"))  # the whole detector
    return finalize(cfg, run_dir, det2.model, class_names, base, timings, det2.selection)


def empirical_targets(cfg: Mapping[str, Any], stage: StageModule, train_set, proposals: ProposalFile) -> None:
    """roi_head.target_normalization=empirical: the detector stage's per-class target statistics from its
    training RoIs (frcnn.engine.target_stats); nothing for the fixed default."""
    if cfg["roi_head"].get("target_normalization", "fixed") == "empirical":
        use_empirical_targets(stage.model.roi_head, train_set, proposals, float(cfg["data"].get("hflip_prob", 0.0)),
                              stage.hparams.stage_name)


def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    target.load_state_dict(source.state_dict())


DETECTOR_OUTPUT_LAYERS = "roi_head.predictor."  # cls_score, bbox_pred


def start_last_detector(detector: torch.nn.Module, stage4: torch.nn.Module, reinit_outputs: bool) -> None:
    """The start of the last Fast R-CNN step (stage2_det): shared conv + RPN of step 4 and the
    fc layers of step 3 (carried through step 4).

    ``reinit_outputs`` (``recipe.reinit_det_outputs``): the output layers (cls_score, bbox_pred)
    keep ``detector``'s fresh init, N(0, 0.01) / N(0, 0.001), as in the authors' code: their
    step-4 net holds fc6/fc7 only as dummy layers that carry the weights along (py-faster-rcnn
    models/*/faster_rcnn_alt_opt/stage2_rpn_train.pt), so stage2_fast_rcnn_train.pt starts its
    output layers from their fillers. False: step 3's output layers are carried over as well.
    """
    state = stage4.state_dict()
    if not reinit_outputs:
        detector.load_state_dict(state)
        return
    carried = {key: value for key, value in state.items() if not key.startswith(DETECTOR_OUTPUT_LAYERS)}
    missing, unexpected = detector.load_state_dict(carried, strict=False)
    if unexpected or any(not key.startswith(DETECTOR_OUTPUT_LAYERS) for key in missing):
        raise RuntimeError(f"stage2_det start: unexpected keys {unexpected}, missing {missing}")


def _evaluation_device(cfg: Mapping[str, Any]) -> torch.device:
    """The final evaluation runs on one GPU when the trainer uses GPUs, else on the CPU."""
    on_gpu = str(cfg["trainer"]["accelerator"]) in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    return torch.device("cuda" if on_gpu else "cpu")


def finalize(cfg, run_dir: Path, model, class_names, datamodule, timings: dict[str, float],
             selection: Mapping[str, Any] | None = None) -> dict:
    """Save the unified detector, evaluate it on the val split, write metrics.json, print a table.
    ``selection``: the last stage's model selection (frcnn.lit.selection), recorded as ``model_selection``.
    Under DDP only global rank 0 does this; the other ranks wait and read its metrics.json."""
    if _global_rank() != 0:
        _barrier()
        return json.loads((run_dir / "metrics.json").read_text())
    save_detector(model, model_config(cfg), class_names, run_dir / "final" / "model.pt")
    start = time.perf_counter()
    device = _evaluation_device(cfg)
    pictures = PictureCollector(int(cfg["recipe"].get("val_pictures", 0) or 0), list(class_names))
    metrics, pr_curves = evaluate_split(model.to(device), datamodule.evaluation_dataloader(), class_names,
                                        device=device, on_batch=pictures)  # one pass of the conv layers per val image
    model.cpu()
    timings["evaluation"] = time.perf_counter() - start
    metrics["recipe"] = cfg["recipe"]["name"]
    metrics["stage_seconds"] = timings
    if selection is not None:
        metrics["model_selection"] = selection_summary(selection)
    written = write_evaluation_report(metrics, pr_curves, run_dir, write_metrics=False)  # ap_table.md, PR + recall PNGs
    logger = build_logger(cfg["logger"], run_dir, run_dir.name, "final", config=dict(cfg))
    log_final_results(logger, metrics, {name: path for name, path in written.items() if name.endswith(".png")},
                      pictures.pictures)  # W&B: run summary + images; CSV: csv/final/metrics.csv + PNGs
    finish_logger(logger)
    atomic_write_json(metrics, run_dir / "metrics.json")  # last: with final/model.pt it marks the run finished
    print(format_table(metrics))
    print(format_recall_table(metrics["proposal_recall"]))
    if metrics.get("model_selection", {}).get("note"):
        print(metrics["model_selection"]["note"])
    print(f"metrics written to {run_dir / 'metrics.json'}")
    _barrier()
    return metrics


RECIPES = {"joint": run_joint, "alternating": run_alternating}
# Keys of the console a rerun may change, beside frcnn.engine.resume.RESUME_FREE_KEYS; left out of the
# recorded config, so run dirs recorded before the key existed resume too
CONSOLE_KEYS = ("progress_every_s",)  # of the trainer node


def without_console_keys(cfg: Mapping[str, Any]) -> dict:
    trainer = {k: v for k, v in cfg["trainer"].items() if k not in CONSOLE_KEYS}
    return {**cfg, "trainer": trainer}


def run_recipe(cfg: Mapping[str, Any], run_dir: str | Path) -> dict:
    name = cfg["recipe"]["name"]
    if name not in RECIPES:
        raise ValueError(f"recipe={name!r}; allowed: {sorted(RECIPES)}")
    run_dir = Path(run_dir)
    trainer_cfg = cfg["trainer"]
    configure_progress(trainer_cfg.get("progress_every_s"), bool(trainer_cfg.get("enable_progress_bar", True)))
    # one writer per run dir: rank 0 holds the lock for the whole run (the other ranks are its children)
    with RunDirLock(run_dir) if rank_zero_only.rank == 0 else contextlib.nullcontext():
        if rank_zero_only.rank == 0:
            check_run_config(without_console_keys(cfg), run_dir)  # refuses a changed config in a used run dir
        done = finished_metrics(run_dir)
        if done is not None:
            print(f"run in {run_dir} is already finished (map_50={done.get('map_50')}, metrics in "
                  f"{run_dir / 'metrics.json'}); nothing to do")
            return done
        L.seed_everything(int(cfg.get("seed", 0)), workers=True)
        return RECIPES[name](cfg, run_dir)
