"""The run as a user watches it (issue 37): progress with an ETA on every long phase, a bar in a terminal
and a rate-limited line when stdout is piped (frcnn.utils.progress, frcnn.lit.progress), stage banners,
the stages' wall times and the closing summary (frcnn.engine.run_report)."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from types import SimpleNamespace

import pytest
import torch

from frcnn.engine.recipes import without_console_keys
from frcnn.engine.resume import check_run_config
from frcnn.engine.run_report import closing_summary, format_stage_times, stage_banner
from frcnn.engine.sweep_summary import count_sweep_jobs
from frcnn.lit.progress import StageProgressBar, StageProgressLines, stage_progress
from frcnn.utils.progress import Countdown, NoProgress, ProgressLines, start_progress
from tests.cli_runner import run_in_terminal, run_script
from tests.test_console import console_problems

TINY_JOINT = ["train.py", "recipe=joint", "logger=none", "data.num_train=8", "data.num_val=4",
              "schedule.joint.images_per_batch=2", "schedule.joint.max_steps=10", "schedule.joint.lr_steps=[100]"]
EVERY_S = 0.5
HYDRA_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d [\d:]+,\d{3})\]")
TRAIN_LINE = re.compile(r"\[frcnn\.progress\]\[INFO\] - joint: step (\d+)/10 \(\d+%\), loss [\d.]+, [\d.]+ images/s, "
                        r"elapsed \w+, ETA \w+$")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------------------------
# The pieces, with a fake clock
# ----------------------------------------------------------------------------------------------
def test_progress_lines_are_rate_limited_and_name_the_phase_count_rate_and_eta():
    clock, lines = FakeClock(), []
    progress = ProgressLines("stage1_proposals", 100, "images", every_s=30, emit=lines.append, clock=clock)
    for done in range(1, 101):  # one image per second
        clock.now += 1.0
        progress.update(done)
    progress.close()
    assert lines == [
        "stage1_proposals: 30/100 images (30%), 1 images/s, elapsed 30s, ETA 1m10s",
        "stage1_proposals: 60/100 images (60%), 1 images/s, elapsed 1m00s, ETA 40s",
        "stage1_proposals: 90/100 images (90%), 1 images/s, elapsed 1m30s, ETA 10s",
        "stage1_proposals: 100/100 images (100%), 1 images/s, elapsed 1m40s, ETA 0s",  # close(): where it ended
    ]
    quick = ProgressLines("evaluation", 10, every_s=30, emit=lines.append, clock=clock)
    quick.update(10)
    quick.close()
    assert len(lines) == 4  # a phase shorter than the interval prints nothing


def test_training_lines_give_the_stage_step_mean_loss_images_per_second_and_eta_on_rank_zero_only(caplog):
    clock = FakeClock()
    callback = StageProgressLines("stage1_rpn", every_s=10, clock=clock)
    trainer = SimpleNamespace(is_global_zero=True, max_steps=100, global_step=20)  # resumed at step 20
    callback.on_train_start(trainer, None)
    batch = ([torch.zeros(3, 8, 8)] * 2, [{}] * 2)  # 2 images
    with caplog.at_level(logging.INFO, logger="frcnn.progress"):
        for step, loss in zip(range(21, 31), [1.0, 3.0] * 5):  # 2 s per step
            clock.now += 2.0
            trainer.global_step = step
            callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, batch, step)
        callback.on_train_end(trainer, None)
    assert [r.getMessage() for r in caplog.records] == [
        "stage1_rpn: step 25/100 (25%), loss 1.8, 1 images/s, elapsed 10s, ETA 2m30s",  # mean of 1, 3, 1, 3, 1
        "stage1_rpn: step 30/100 (30%), loss 2.2, 1 images/s, elapsed 20s, ETA 2m20s",  # ETA: 10 steps in 20 s
    ]
    caplog.clear()
    other_rank = StageProgressLines("stage1_rpn", every_s=10, clock=clock)
    trainer.is_global_zero = False
    with caplog.at_level(logging.INFO, logger="frcnn.progress"):
        other_rank.on_train_start(trainer, None)
        clock.now += 20.0
        other_rank.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, batch, 0)
    assert caplog.records == []


def test_a_terminal_gets_lightnings_bar_a_pipe_the_lines_and_the_switch_turns_both_off(monkeypatch):
    trainer_cfg = {"enable_progress_bar": True, "progress_every_s": 7}
    monkeypatch.setattr("frcnn.lit.progress.stdout_is_terminal", lambda: True)
    callbacks, bar = stage_progress("joint", trainer_cfg)
    assert bar and len(callbacks) == 1 and isinstance(callbacks[0], StageProgressBar)
    monkeypatch.setattr("frcnn.lit.progress.stdout_is_terminal", lambda: False)
    callbacks, bar = stage_progress("joint", trainer_cfg)
    assert not bar and isinstance(callbacks[0], StageProgressLines) and callbacks[0].every_s == 7
    assert stage_progress("joint", {**trainer_cfg, "enable_progress_bar": False}) == ([], False)
    assert isinstance(start_progress("evaluation", 10, enabled=False), NoProgress)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert isinstance(start_progress("evaluation", 10, enabled=True), NoProgress)  # DDP: rank 0 only


def test_rows_of_a_table_and_jobs_of_a_sweep_are_counted_with_an_eta():
    clock = FakeClock()
    rows = Countdown(4, "row", "the table", clock=clock)
    clock.now = 60.0
    assert rows.tick() == "row 1 of 4, elapsed 1m00s, ETA of the table 3m00s"
    assert count_sweep_jobs(["rpn.lambda=1,10,100", "seed=0,1", "logger=csv"]) == 6
    assert count_sweep_jobs(["logger=csv"], {"params": {"rpn.lambda": "1,10"}}) == 2
    assert count_sweep_jobs([], {"n_trials": 20, "params": {"optim.lr": "interval(0.0001, 0.01)"}}) == 20
    assert count_sweep_jobs(["optim.lr=interval(0.0001,0.01)"]) is None


def test_banners_name_the_stage_of_the_recipe_and_the_summary_what_to_do_next(compose_cfg, tmp_path):
    cfg = compose_cfg([], tmp_path)
    assert stage_banner(cfg, "stage1_det", "500 steps") == \
        "stage 3/6 stage1_det: Fast R-CNN on stage-1 proposals, its own conv (§3.2 step 2), 500 steps"
    unshared = compose_cfg(["recipe.unshared=true"], tmp_path)
    assert stage_banner(unshared, "stage1_det", "5 steps").startswith("stage 3/3 stage1_det: ")
    assert stage_banner(compose_cfg(["recipe=joint"], tmp_path), "joint", "8 steps") == \
        "stage 1/1 joint: approximate joint training (§3.2 ii), 8 steps"
    times = format_stage_times({"evaluation": 9.0, "stage1_det": 65.0, "stage1_rpn": 30.0})  # metrics.json's order
    assert times.splitlines()[1:] == ["  stage1_rpn      30s", "  stage1_det    1m05s", "  evaluation       9s",
                                      "  total         1m44s"]
    metrics = {"map_50": 0.9012, "map_voc07": 0.8544, "coco": {"map": 0.61}, "num_images": 128,
               "stage_seconds": {"joint": 3.0}}
    summary = closing_summary(metrics, tmp_path, ["data=voc", "data.root=data/my files"])
    assert "result: mAP@0.5 90.1 (VOC07 11-point 85.4), COCO AP@[.5:.95] 61.0 on 128 validation images" in summary
    assert f"detector: {tmp_path}/final/model.pt" in summary
    assert f"python scripts/eval.py checkpoint={tmp_path}/final/model.pt data=voc 'data.root=data/my files'" in summary
    assert "frcnn-detect " in summary and "frcnn-export " in summary and "wandb sync" not in summary
    (tmp_path / "wandb" / "offline-run-1").mkdir(parents=True)
    assert f"wandb sync {tmp_path}/wandb/offline-run-*" in closing_summary(metrics, tmp_path)
    assert len(closing_summary(metrics, tmp_path).splitlines()) <= 12  # with the AP table, one screen


def test_a_changed_progress_interval_resumes_the_run_dir(compose_cfg, tmp_path):
    check_run_config(without_console_keys(compose_cfg([], tmp_path)), tmp_path)
    check_run_config(without_console_keys(compose_cfg(["trainer.progress_every_s=5"], tmp_path)), tmp_path)


# ----------------------------------------------------------------------------------------------
# train.py as a user runs it: piped to a file, and in a terminal
# ----------------------------------------------------------------------------------------------
def _time(line: str) -> datetime:
    return datetime.strptime(HYDRA_TIME.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f")


@pytest.mark.slow
def test_a_run_piped_to_a_file_prints_a_progress_line_every_interval_naming_stage_step_and_eta(tmp_path):
    result = run_script([*TINY_JOINT, f"trainer.progress_every_s={EVERY_S}", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    start = next(line for line in lines if "stage 1/1 joint: approximate joint training (§3.2 ii), 10 steps" in line)
    end = next(line for line in lines if "`Trainer.fit` stopped" in line)
    progress = [line for line in lines if "[frcnn.progress]" in line and " joint: " in line]
    assert len(progress) >= 3 and all(TRAIN_LINE.search(line) for line in progress), progress
    steps = [int(TRAIN_LINE.search(line).group(1)) for line in progress]
    assert steps == sorted(steps) and steps[-1] == 10  # the last line: where the stage ended
    times = [_time(line) for line in [start, *progress[:-1]]]  # the last: at the end, whatever the interval
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    # a line comes at the end of the first step after the interval: up to a step late (2x the mean step: slack)
    mean_step_s = (_time(progress[-1]) - _time(start)).total_seconds() / 10
    assert max(gaps) < EVERY_S + 2 * mean_step_s + 0.25, (gaps, mean_step_s)
    summary = result.stdout[result.stdout.index("wall time of each stage"):]
    assert f"detector: {tmp_path}/final/model.pt" in summary and "frcnn-detect" in summary
    assert "\r" not in result.stdout  # no bar in a file
    assert console_problems(result.stdout, result.stderr) == []


@pytest.mark.slow
def test_a_run_in_a_terminal_shows_lightnings_bar_over_the_stage(tmp_path):
    # 6 steps of 2 of the 8 images: the bar runs over the stage's steps, across its epochs of 4 batches
    result = run_in_terminal([*TINY_JOINT, "schedule.joint.max_steps=6", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-2000:]
    bar = re.compile(r"\rjoint: +\d+%\|[^|]*\| (\d+)/6 \[[\d:]+<[\d:?]+, +[\d.?]+it/s(, loss=[\d.]+)?\]")
    assert {match.group(1) for match in bar.finditer(result.stdout)} >= {"1", "5", "6"}, result.stdout[-3000:]
    assert "[frcnn.progress]" not in result.stdout  # the bar, not the lines
    assert "\revaluation:" in result.stdout
