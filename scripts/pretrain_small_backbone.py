"""Pre-train the `small` backbone on generated crops: the built-in data's ImageNet analogue.

    python scripts/pretrain_small_backbone.py                 # rewrites src/frcnn/weights/small_shapes_pretrained.pt
    python scripts/pretrain_small_backbone.py --data voclike  # rewrites src/frcnn/weights/small_voclike_pretrained.pt

`backbone=small backbone.weights=builtin` (the default run's choice) loads the shapes file,
`backbone.weights=builtin_voclike` (experiment=cpu_voclike) the VOC-like one. The run is
deterministic (fixed seeds, deterministic kernels, one thread): on the same machine and library
versions it rebuilds the same weights (compare the printed weights sha256). See
frcnn/engine/pretrain_small.py for the task and the file's layout.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from frcnn.engine.pretrain_small import (
    PretrainConfig,
    make_deterministic,
    pretrain_small_backbone,
    save_pretrained,
    timed,
)
from frcnn.modeling.backbone import BUILTIN_SMALL_VOCLIKE_WEIGHTS, BUILTIN_SMALL_WEIGHTS

DEFAULT_OUT = {"shapes": BUILTIN_SMALL_WEIGHTS, "voclike": BUILTIN_SMALL_VOCLIKE_WEIGHTS}


def metrics_sha(path: Path) -> str:
    """The weights' own sha256 (meta.weights_sha256), read back with the restricted reader."""
    from frcnn.checkpoint.safe_load import read_torch_file

    return read_torch_file(path, "built-in weights")["meta"]["weights_sha256"]


def main(argv: list[str] | None = None) -> None:
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(DEFAULT_OUT), default=defaults.data, help="which crops")
    parser.add_argument("--out", type=Path, default=None, help="weights file to write (default: the package's)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    args = parser.parse_args(argv)
    args.out = args.out or DEFAULT_OUT[args.data]
    cfg = replace(defaults, seed=args.seed, steps=args.steps, data=args.data)
    make_deterministic(threads=1)
    (backbone, metrics), seconds = timed(lambda: pretrain_small_backbone(cfg))
    sha = save_pretrained(backbone, cfg, metrics, Path(__file__), args.out)
    size_kb = args.out.stat().st_size / 1024
    print(f"{args.out}: {size_kb:.0f} KiB, sha256 {sha}, weights sha256 {metrics_sha(args.out)}")
    print(f"held-out accuracy {metrics['eval_accuracy']:.3f}, train loss {metrics['train_loss']:.4f}; "
          f"wall time {seconds:.0f} s (training + held-out evaluation, 1 thread)")


if __name__ == "__main__":
    main()
