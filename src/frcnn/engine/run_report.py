"""What the console says about a run's stages: a banner as each stage of the recipe starts, the
stages' wall times at the end, and the closing summary (scores, the detector file, the commands
that use it, the ``wandb sync`` line of offline W&B runs)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from frcnn.utils.progress import format_duration

ALTERNATING_RUN_ORDER = ("stage1_rpn", "stage1_proposals", "stage1_det", "stage2_rpn", "stage2_proposals", "stage2_det")
UNSHARED_RUN_ORDER = ALTERNATING_RUN_ORDER[:3]  # recipe.unshared: the paper's Table 2/3 "unshared" stops after step 2
STAGE_DESCRIPTIONS = {
    "stage1_rpn": "RPN + shared conv from the backbone's initial weights (§3.2 step 1)",
    "stage1_proposals": "the stage-1 RPN proposes boxes for every training image",
    "stage1_det": "Fast R-CNN on stage-1 proposals, its own conv (§3.2 step 2)",
    "stage2_rpn": "RPN layers on stage1_det's conv, frozen (§3.2 step 3)",
    "stage2_proposals": "the stage-2 RPN proposes boxes for every training image",
    "stage2_det": "Fast R-CNN fc + output layers, shared conv frozen (§3.2 step 4)",
}
STAGE_ORDER = (*ALTERNATING_RUN_ORDER, "joint", "evaluation")  # metrics.json stores stage_seconds by name
JOINT_DESCRIPTIONS = {True: "approximate joint training (§3.2 ii)",
                      False: "non-approximate joint training, RoI warping (§3.2 iii)"}


def recipe_stages(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The stages the configured recipe runs, in order."""
    recipe = cfg["recipe"]
    if recipe["name"] == "joint":
        return ("joint",)
    return UNSHARED_RUN_ORDER if recipe.get("unshared", False) else ALTERNATING_RUN_ORDER


def stage_banner(cfg: Mapping[str, Any], stage_name: str, amount: str) -> str:
    """'stage 3/6 stage1_det: Fast R-CNN on stage-1 proposals, its own conv (§3.2 step 2), 500 steps'."""
    stages = recipe_stages(cfg)
    if stage_name == "joint":
        description = JOINT_DESCRIPTIONS[bool(cfg["recipe"].get("approximate", True))]
    else:
        description = STAGE_DESCRIPTIONS.get(stage_name, stage_name)
    position = f"{stages.index(stage_name) + 1}/{len(stages)} " if stage_name in stages else ""
    return f"stage {position}{stage_name}: {description}, {amount}"


def format_stage_times(stage_seconds: Mapping[str, float]) -> str:
    """The stages' wall times (metrics.json's stage_seconds) and their total, one line each."""
    if not stage_seconds:
        return ""
    names = sorted(stage_seconds, key=lambda name: STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER))
    width = max(len(name) for name in [*names, "total"])
    lines = ["wall time of each stage (this invocation):"]
    lines += [f"  {name:<{width}}  {format_duration(stage_seconds[name]):>7}" for name in names]
    lines.append(f"  {'total':<{width}}  {format_duration(sum(stage_seconds.values())):>7}")
    return "\n".join(lines)


def _percent(value: Any) -> str:
    return "-" if value is None or float(value) < 0 else f"{100 * float(value):.1f}"


def score_line(metrics: Mapping[str, Any]) -> str:
    """'mAP@0.5 90.1 (VOC07 11-point 85.4), COCO AP@[.5:.95] 61.2 on 128 val images'."""
    line = f"mAP@0.5 {_percent(metrics.get('map_50'))} (VOC07 11-point {_percent(metrics.get('map_voc07'))})"
    if isinstance(metrics.get("coco"), Mapping) and "map" in metrics["coco"]:
        line += f", COCO AP@[.5:.95] {_percent(metrics['coco']['map'])}"
    if metrics.get("num_images") is not None:
        line += f" on {metrics['num_images']} validation images"
    return line


def closing_summary(metrics: Mapping[str, Any], run_dir: str | Path, data_overrides: Sequence[str] = ()) -> str:
    """The last screen of a run: stage wall times, the scores, where the detector is, the commands
    that use it (detect, eval with the run's data overrides, export) and, when W&B logged offline,
    the one ``wandb sync`` command that uploads every stage's run."""
    run_dir = Path(run_dir)
    detector = run_dir / "final" / "model.pt"
    quoted = shlex.quote(str(detector))
    exported = shlex.quote(str(run_dir / "final" / "detector.pt"))
    evaluate = " ".join(["python scripts/eval.py", f"checkpoint={quoted}", *map(shlex.quote, data_overrides),
                         f"out_dir={shlex.quote(str(run_dir / 'eval'))}"])
    lines = [format_stage_times(metrics.get("stage_seconds") or {}),
             f"result: {score_line(metrics)}",
             f"detector: {detector}",
             "use it:",
             f"  frcnn-detect {quoted} <pictures or folder> --out-dir {shlex.quote(str(run_dir / 'detections'))}",
             f"  {evaluate}",
             f"  frcnn-export {quoted} --format torchscript --out {exported}"]
    if any((run_dir / "wandb").glob("offline-run-*")):
        lines.append(f"W&B logged offline; upload with: wandb sync {shlex.quote(str(run_dir / 'wandb'))}/offline-run-*")
    return "\n".join(line for line in lines if line)
