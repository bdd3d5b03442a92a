"""Kill the 4-step recipe with SIGKILL at a random point of each of its six stages (and once with
SIGTERM), rerun the same command each time, and compare the end with an uninterrupted run.

The kill is real: ``FRCNN_FAULT=<stage>:<index>`` (frcnn/utils/fault_injection.py) makes the process send itself
SIGKILL before training step ``index`` of a training stage, or after ``index`` images of a
proposal stage; the points are drawn from a seeded RNG (FRCNN_KILL_SEED, default 2022: steps 3, 2, 3, 3
of the training stages, image 4 of both proposal stages), so the test is random but repeatable.
Tolerance: none. On one CPU, with the seed fixed, a resumed stage replays exactly the batches,
augmentation and sampling of the uninterrupted run (frcnn/data/resumable.py, StepSeed), so the
final weights are bit-identical and metrics.json and the per-stage metrics.csv are equal.
"""

import json
import os
import random

import pytest
import torch

from tests.cli_runner import run_script

MAX_STEPS = 4
STAGES = ("stage1_rpn", "stage1_det", "stage2_rpn", "stage2_det")
ORDER = ("stage1_rpn", "stage1_proposals", "stage1_det", "stage2_rpn", "stage2_proposals", "stage2_det")
NUM_TRAIN, PROPOSAL_BATCH = 8, 4  # proposal stages check for the fault every PROPOSAL_BATCH images
TINY = ["recipe=alternating", "logger=csv", f"data.num_train={NUM_TRAIN}", "data.num_val=4",
        "recipe.checkpoint_every_n_steps=2", "recipe.proposals.post_nms_top_n=50", "trainer.log_every_n_steps=1"] + [
    f"schedule.alternating.{s}.{k}" for s in STAGES
    for k in (f"max_steps={MAX_STEPS}", "lr_steps=[3]", "images_per_batch=2")]


def train(run_dir, fault=None, extra=()):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("FRCNN_FAULT", None)
    if fault:
        env["FRCNN_FAULT"] = fault
    return run_script(["train.py", *TINY, *extra, f"hydra.run.dir={run_dir}"], env=env)


def fault_points(rng):
    """One kill point per stage: a training step in [1, MAX_STEPS) or a proposal batch boundary."""
    points = {}
    for stage in ORDER:
        if stage.endswith("proposals"):
            points[stage] = rng.choice(range(0, NUM_TRAIN, PROPOSAL_BATCH))
        else:
            points[stage] = rng.randrange(1, MAX_STEPS)
    return points


def finished_marks(run_dir):
    """{stage: mtime of its DONE / proposals file} of the stages that are finished."""
    marks = {}
    for stage in ORDER:
        path = run_dir / stage / ("proposals.safetensors" if stage.endswith("proposals") else "DONE")
        if path.exists():
            marks[stage] = path.stat().st_mtime_ns
    return marks


@pytest.mark.slow
def test_sigkill_in_every_stage_then_rerun_ends_equal_to_an_uninterrupted_run(tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "killed"
    result = train(reference)
    assert result.returncode == 0, result.stderr[-3000:]

    points = fault_points(random.Random(int(os.environ.get("FRCNN_KILL_SEED", "2022"))))
    for stage in ORDER:
        before = finished_marks(run)
        result = train(run, f"{stage}:{points[stage]}")
        assert result.returncode == -9, f"{stage}:{points[stage]} not killed\n{result.stderr[-3000:]}"
        after = finished_marks(run)
        assert stage not in after  # killed inside the stage: not finished
        assert {s: after[s] for s in before} == before  # finished stages were not redone
        assert list(after) == list(ORDER[: ORDER.index(stage)])
        if not stage.endswith("proposals") and points[stage] >= 2:  # a mid-stage checkpoint exists
            ckpt = torch.load(run / stage / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
            assert ckpt["global_step"] == points[stage] // 2 * 2

    # SIGTERM (a scheduler's stop) in the last stage: checkpoint at the step it finished, status 143
    result = train(run, f"stage2_det:{MAX_STEPS - 2}:TERM")
    assert result.returncode == 143, result.stderr[-3000:]
    assert "SIGTERM: stage stage2_det stopped at step 3" in result.stderr
    ckpt = torch.load(run / "stage2_det" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == MAX_STEPS - 1

    result = train(run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"stage stage2_det: resuming from {run / 'stage2_det' / 'checkpoints' / 'last.ckpt'} (step 3)" in \
        result.stdout + result.stderr
    assert "ended before the epoch ended" not in result.stderr  # Lightning's "not resumable" warning: ours is

    final = torch.load(run / "final" / "model.pt", map_location="cpu", weights_only=False)["state_dict"]
    expected = torch.load(reference / "final" / "model.pt", map_location="cpu", weights_only=False)["state_dict"]
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    metrics, ref_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run, reference))
    metrics.pop("stage_seconds"), ref_metrics.pop("stage_seconds")
    assert metrics == ref_metrics
    for stage in STAGES:  # the logs keep the rows from before each kill, none twice
        assert (run / "csv" / stage / "metrics.csv").read_text() == (reference / "csv" / stage / "metrics.csv").read_text()

    # rerunning the finished run does nothing but say so; another config in the same dir is refused
    done_mtime = (run / "metrics.json").stat().st_mtime_ns
    result = train(run)
    assert result.returncode == 0 and "is already finished" in result.stdout
    assert (run / "metrics.json").stat().st_mtime_ns == done_mtime
    result = train(run, extra=["rpn.lambda=1"])
    assert result.returncode == 2
    assert "was started with another config: rpn.lambda: 10.0 -> 1" in result.stderr
