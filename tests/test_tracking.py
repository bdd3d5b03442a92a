"""Loggers: W&B falls back to offline by itself and the run's closing summary says how to sync; csv/none work."""

import os

import pytest

from frcnn.engine.loggers import build_logger, resolve_wandb_mode
from frcnn.engine.recipes import run_recipe
from frcnn.engine.run_report import closing_summary

TINY = ["recipe=joint", "data.num_train=4", "data.num_val=2", "schedule.joint.max_steps=2",
        "schedule.joint.images_per_batch=2", "recipe.val_every_n_epochs=null"]


def test_auto_mode_is_offline_without_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert resolve_wandb_mode("auto") == "offline"
    assert resolve_wandb_mode("disabled") == "disabled"
    with pytest.raises(ValueError, match="logger.mode"):
        resolve_wandb_mode("sometimes")


def test_empty_wandb_mode_variable_counts_as_unset_and_a_bad_one_is_named(monkeypatch, tmp_path):
    """`WANDB_MODE= python train.py` once crashed inside W&B's settings validation."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_MODE", "")
    assert resolve_wandb_mode("auto") == "offline"
    assert "WANDB_MODE" not in os.environ  # W&B will not read the empty value
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(ValueError, match=r"environment variable WANDB_MODE='ofline'; allowed: .*offline"):
        resolve_wandb_mode("auto")


def test_unknown_logger_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="allowed"):
        build_logger({"name": "mlflow"}, tmp_path, "r", "joint")
    assert build_logger({"name": "none"}, tmp_path, "r", "joint") is False


@pytest.mark.slow
def test_default_wandb_logger_runs_offline_and_prints_sync_command(compose_cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = compose_cfg(TINY, tmp_path / "run")
    assert cfg["logger"]["name"] == "wandb"
    metrics = run_recipe(cfg, tmp_path / "run")
    captured = capsys.readouterr()
    assert "anonymous setting" not in captured.out + captured.err  # wandb's answer to Lightning's anonymous=None
    assert "wandb sync" not in captured.out  # not once per stage: once, in the run's closing summary
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(any(run.glob("*.wandb")) for run in runs)  # the joint stage + the final evaluation
    summary = closing_summary(metrics, tmp_path / "run")
    assert summary.count("wandb sync") == 1 and f"wandb sync {tmp_path / 'run' / 'wandb'}/offline-run-*" in summary
