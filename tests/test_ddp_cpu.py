"""DDP on CPU through the CLI (`trainer=ddp trainer.accelerator=cpu trainer.devices=2`, gloo):
Lightning re-runs train.py for rank 1; the run dir gets one complete metrics.json, the
checkpoints, and logs from rank 0 only. Inside a -m sweep DDP is refused before training."""

import csv
import json

import pytest

from tests.cli_runner import run_script

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.enable_progress_bar=false",
       "trainer.log_every_n_steps=1", "logger=csv", "data.num_train=8", "data.num_val=4"]
ALT = "schedule.alternating"
RECIPES = {
    "joint": (["recipe=joint", "schedule.joint.max_steps=4", "schedule.joint.images_per_batch=2",
               "recipe.val_every_n_epochs=null"], {"joint": 4}),
    "alternating": (["recipe=alternating"] + [f"{ALT}.{s}.{k}={v}" for s in ("stage1_rpn", "stage1_det", "stage2_rpn",
                                                                              "stage2_det")
                                              for k, v in (("max_steps", 2), ("images_per_batch", 2))],
                    {"stage1_rpn": 2, "stage1_det": 2, "stage2_rpn": 2, "stage2_det": 2}),
}


def run_cli(*args, timeout=300):
    return run_script(["train.py", *args], timeout=timeout)  # Lightning starts rank 1 as `python train.py ...`


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_ddp_on_two_cpu_processes_writes_each_output_once(tmp_path, recipe):
    overrides, stage_steps = RECIPES[recipe]
    result = run_cli(*DDP, *overrides, f"hydra.run.dir={tmp_path}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "GLOBAL_RANK: 1" in output and "distributed_backend=gloo" in output  # two processes really ran
    assert (tmp_path / "train_ddp_process_1.log").exists()  # rank 1 was train.py re-run by Lightning
    # metrics.json: written once (by rank 0), complete
    assert result.stdout.count("metrics written to") == 1
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"map_50", "map_voc07", "ap_per_class", "num_images"} <= set(metrics) and metrics["num_images"] == 4
    assert metrics["recipe"] == recipe and set(stage_steps) <= set(metrics["stage_seconds"])
    assert not list(tmp_path.glob("**/*.tmp"))
    assert (tmp_path / ".frcnn.lock").read_text() == ""  # rank 0 held the run-dir lock (rank 1 did not try), released
    # checkpoints: the unified detector and every stage's resumable state
    assert (tmp_path / "final" / "model.pt").exists()
    for stage, steps in stage_steps.items():
        assert (tmp_path / stage / "checkpoints" / "last.ckpt").exists() and (tmp_path / stage / "model.pt").exists()
        assert (tmp_path / stage / "DONE").read_text().strip() == str(steps)
        # only rank 0 logged: one CSV per stage, one row per step (two writers would double them)
        with open(tmp_path / "csv" / stage / "metrics.csv") as f:
            steps_logged = [r["step"] for r in csv.DictReader(f) if any(k.endswith("/lr") and v for k, v in r.items())]
        assert len(steps_logged) == len(set(steps_logged)) == steps, steps_logged
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == sorted([*stage_steps, "final"])  # + final metrics
    assert (tmp_path / "csv" / "final" / "metrics.csv").read_text().count("\n") == 2  # header + one row: rank 0 only
    assert len(list(tmp_path.glob("**/.hydra"))) == 1  # rank 1 ran with hydra.output_subdir=null


@pytest.mark.slow
def test_ddp_inside_a_sweep_stops_at_once_with_an_explanation(tmp_path):
    result = run_cli("-m", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "rpn.lambda=1,10",
                     "recipe=joint", "logger=csv", f"hydra.sweep.dir={tmp_path}", timeout=120)
    assert result.returncode == 2
    assert "trainer.strategy=ddp with 2 processes cannot run inside a multirun (-m)" in result.stderr
    assert "hydra/launcher=slurm" in result.stderr  # says what to do instead
    assert not list(tmp_path.glob("*/joint")) and not list(tmp_path.glob("*/metrics.json"))  # nothing trained
    assert not (tmp_path / "1").exists()  # the second job never started
