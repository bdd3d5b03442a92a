import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def compose_config(overrides, run_dir):
    """Compose the training config like `python train.py <overrides>` would, as a plain dict."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "conf")):
        cfg = compose("train", overrides=list(overrides) + [f"run_dir={run_dir}"])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture
def compose_cfg():
    return compose_config
