import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def compose_cfg():
    """Compose the training config like `python train.py <overrides>` would, as a plain dict."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    def _compose(overrides, run_dir):
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "conf")):
            cfg = compose("train", overrides=list(overrides) + [f"run_dir={run_dir}"])
        return OmegaConf.to_container(cfg, resolve=True)

    return _compose
