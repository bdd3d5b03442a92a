"""Evaluate a saved detector: `python scripts/eval.py checkpoint=<run dir>/final/model.pt [overrides]`.

Config: conf/eval.yaml (data group as in training, out_dir, split, device, ...); logic: frcnn.cli.eval.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from frcnn.cli.eval import run

    return run(cfg).get("map_50")


if __name__ == "__main__":
    main()
