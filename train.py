"""Train Faster R-CNN: `python train.py [overrides]`, `python train.py -m key=a,b` (sweep),
`python train.py --help`, `python train.py --cfg job` (see README and conf/)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from frcnn.cli.train import run_job

    return run_job(cfg)


if __name__ == "__main__":
    from frcnn.cli.train import LOCKED_EXIT_STATUS, failed_jobs, preflight, run_dir_in_use

    problem = preflight(sys.argv[1:], CONFIG_DIR)
    if problem:
        print(f"Config error: {problem}", file=sys.stderr)
        sys.exit(2)
    holder = run_dir_in_use(sys.argv[1:])  # before Hydra writes into that run dir
    if holder:
        print(f"Run dir locked: {holder}", file=sys.stderr)
        sys.exit(LOCKED_EXIT_STATUS)
    main()
    sys.exit(1 if failed_jobs() else 0)
