"""Hydra multirun sweeps: one dir and metrics.json per job, the sweep summary (csv / md, failed
jobs shown as failed), list-valued sweeps, one W&B group per sweep, DDP refused inside a sweep."""

import csv
import json

import pytest
import yaml

from frcnn.cli import train as cli_train
from frcnn.engine.loggers import build_logger, sweep_group_name, sweep_run_name
from frcnn.engine.sweep_summary import sweep_keys, write_summary
from frcnn.errors import ConfigError
from tests.cli_runner import run_script

TINY = ["recipe=joint", "schedule.joint.max_steps=2", "data.num_train=8", "data.num_val=4", "logger=csv"]


def run_sweep(sweep_dir, *overrides, timeout=300):
    return run_script(["train.py", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"], timeout=timeout)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------
# The summary from files
# ----------------------------------------------------------------------------------------------
def test_sweep_keys_come_from_command_line_sweeps_and_sweeper_params():
    task = ["rpn.lambda=1,10", "recipe=joint", "rpn.anchor_scales=[128],[128,256,512]", "backbone=choice(zf,vgg16)",
            "+experiment/paper/x=a,b", "data.num_train=8"]
    assert sweep_keys(task) == ["rpn.lambda", "rpn.anchor_scales", "backbone", "experiment/paper/x"]
    assert sweep_keys(["recipe=joint"], {"optim.lr": "tag(log, interval(1e-4, 1e-2))"}) == ["optim.lr"]


def make_job(sweep_dir, num, overrides, metrics=None, failed=None):
    job = sweep_dir / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if failed is not None:
        (job / "FAILED").write_text(failed + "\n\nTraceback ...")


def test_summary_lists_every_job_and_shows_failures(tmp_path):
    make_job(tmp_path, 0, ["rpn.lambda=1", "recipe=joint"], {"map_50": 0.5, "map_voc07": 0.25})
    make_job(tmp_path, 1, ["rpn.lambda=10", "recipe=joint"], failed="ConfigError: rpn.lambda=-1 is out of range")
    make_job(tmp_path, 2, ["rpn.lambda=100", "recipe=joint"])  # killed: no metrics.json
    make_job(tmp_path, 10, ["rpn.lambda=1000", "recipe=joint"], {"map_50": 0.125, "map_voc07": 0.0})
    text = write_summary(tmp_path, ["rpn.lambda"])
    rows = read_csv(tmp_path / "sweep_summary.csv")
    assert [(r["job"], r["rpn.lambda"], r["status"]) for r in rows] == [
        ("0", "1", "ok"), ("1", "10", "failed"), ("2", "100", "failed"), ("10", "1000", "ok")]
    assert (rows[0]["map_50"], rows[0]["map_voc07"], rows[1]["map_50"]) == ("0.5", "0.25", "")
    assert rows[1]["reason"] == "ConfigError: rpn.lambda=-1 is out of range" and "no metrics.json" in rows[2]["reason"]
    md = (tmp_path / "sweep_summary.md").read_text()
    assert "| job | rpn.lambda | map_50 (%) | map_voc07 (%) | status |" in md
    assert "| 0 | 1 | 50.0 | 25.0 | ok |" in md and "| 10 | 1000 | 12.5 | 0.0 | ok |" in md
    assert "| 1 | 10 | failed | failed | failed: ConfigError: rpn.lambda=-1 is out of range |" in md
    assert "4 jobs, 2 failed" in text and "50.0" in text


# ----------------------------------------------------------------------------------------------
# Sweeps through the CLI
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_job_sweep_writes_one_dir_per_job_and_the_summary(tmp_path):
    result = run_sweep(tmp_path, "rpn.lambda=1,10", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    for num, lam in ((0, 1), (1, 10)):
        job = tmp_path / str(num)
        assert yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["rpn"]["lambda"] == lam
        metrics = json.loads((job / "metrics.json").read_text())
        assert {"map_50", "map_voc07", "ap_per_class"} <= set(metrics)
        assert (job / "final" / "model.pt").exists() and (job / "csv" / "joint").is_dir()
    rows = read_csv(tmp_path / "sweep_summary.csv")
    assert [(r["job"], r["rpn.lambda"], r["status"], r["job_dir"]) for r in rows] == [
        ("0", "1", "ok", "0"), ("1", "10", "ok", "1")]
    for row, num in zip(rows, (0, 1)):
        metrics = json.loads((tmp_path / str(num) / "metrics.json").read_text())
        assert float(row["map_50"]) == pytest.approx(metrics["map_50"])
        assert float(row["map_voc07"]) == pytest.approx(metrics["map_voc07"])
    md = (tmp_path / "sweep_summary.md").read_text()
    assert md.startswith(f"# Sweep {tmp_path.as_posix()}: 2 jobs, 0 failed")
    assert "| job | rpn.lambda | map_50 (%) | map_voc07 (%) | status |" in md and md.count("| ok |") == 2
    assert "job  rpn.lambda  map_50 (%)  map_voc07 (%)  status" in result.stdout  # printed too


@pytest.mark.slow
def test_list_valued_sweep_and_failed_jobs(tmp_path):
    result = run_sweep(tmp_path, "rpn.anchor_scales=[32],[32,64,128]", "rpn.lambda=-1,10", *TINY,
                       "schedule.joint.max_steps=1")
    assert result.returncode == 1, result.stderr[-3000:]  # a job failed: the sweep ran on, then exit 1
    rows = read_csv(tmp_path / "sweep_summary.csv")
    assert [(r["rpn.anchor_scales"], r["rpn.lambda"], r["status"]) for r in rows] == [
        ("[32]", "-1", "failed"), ("[32]", "10", "ok"), ("[32,64,128]", "-1", "failed"), ("[32,64,128]", "10", "ok")]
    assert rows[0]["reason"].startswith("ConfigError: rpn.lambda=-1 is out of range")
    cfg3 = (tmp_path / "3" / ".hydra" / "config.yaml").read_text()
    assert "anchor_scales:\n  - 32\n  - 64\n  - 128" in cfg3
    assert "failed" in (tmp_path / "sweep_summary.md").read_text()


# ----------------------------------------------------------------------------------------------
# W&B: one group per sweep, one run per job and stage
# ----------------------------------------------------------------------------------------------
def test_sweep_group_and_run_names():
    assert sweep_group_name("/home/u/frcnn/multirun/2026-11-25/10-00-00", "/home/u/frcnn") == \
        "multirun/2026-11-25/10-00-00"
    assert sweep_group_name("/scratch/sweeps/lambda", "/home/u/frcnn") == "/scratch/sweeps/lambda"
    assert len(sweep_group_name("/x/" + "a" * 300)) == 128
    assert sweep_run_name("rpn.lambda=10", 1) == "rpn.lambda=10" and sweep_run_name("", 3) == "job3"


def test_jobs_of_a_sweep_share_a_wandb_group(compose_cfg, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("frcnn.engine.recipes.run_recipe", lambda cfg, run_dir: seen.append(cfg) or {"map_50": 0.5})
    for num, lam in ((0, 1), (1, 10)):
        monkeypatch.setattr(cli_train, "_hydra_run", lambda num=num, lam=lam: {
            "multirun": True, "sweep_dir": str(tmp_path / "multirun" / "s1"), "cwd": str(tmp_path),
            "override_dirname": f"rpn.lambda={lam}", "job_num": num, "launcher": "BasicLauncher"})
        cli_train.train(compose_cfg([f"rpn.lambda={lam}"], tmp_path / str(num)))
    assert [c["logger"]["group"] for c in seen] == ["multirun/s1", "multirun/s1"]
    assert [c["logger"]["run_name"] for c in seen] == ["rpn.lambda=1", "rpn.lambda=10"]


def test_wandb_run_of_a_stage_carries_group_job_type_and_name(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = {"name": "wandb", "project": "frcnn", "group": "multirun/s1", "mode": "offline", "run_name": "rpn.lambda=10"}
    logger = build_logger(cfg, tmp_path, "0", "stage2_rpn")
    init = logger._wandb_init  # what wandb.init will receive (the run itself starts lazily)
    assert (init["group"], init["job_type"], init["name"]) == ("multirun/s1", "stage2_rpn", "rpn.lambda=10/stage2_rpn")


# ----------------------------------------------------------------------------------------------
# DDP inside a multirun
# ----------------------------------------------------------------------------------------------
def trainer(**kw):
    return {"trainer": {"accelerator": "cpu", "devices": 2, "num_nodes": 1, "strategy": "ddp", **kw}}


def test_ddp_inside_an_in_process_multirun_is_refused(monkeypatch):
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    multirun = {"multirun": True, "launcher": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
    with pytest.raises(ConfigError, match=r"trainer\.strategy=ddp with 2 processes cannot run inside a multirun"):
        cli_train.check_ddp_in_multirun(trainer(), multirun)
    cli_train.check_ddp_in_multirun(trainer(), {"multirun": False})  # a single DDP run is fine
    cli_train.check_ddp_in_multirun(trainer(devices=1), multirun)  # one process per job is fine
    monkeypatch.setenv("SLURM_NTASKS", "2")  # SLURM started the ranks (hydra/launcher=slurm)
    cli_train.check_ddp_in_multirun(trainer(), multirun)
