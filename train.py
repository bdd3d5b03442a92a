"""Train Faster R-CNN: `python train.py [overrides]` (see README and conf/)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from frcnn.cli.train import train

    metrics = train(cfg)
    return metrics.get("map_50")


if __name__ == "__main__":
    main()
