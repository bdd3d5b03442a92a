"""`python train.py`: compose the config (Hydra), check it, run the recipe."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from frcnn.config import validate_config
from frcnn.recipes import run_recipe


def train(cfg: DictConfig) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=True)
    validate_config(plain)
    logging.getLogger("frcnn").setLevel(logging.INFO)
    return run_recipe(plain, plain["run_dir"])
