"""Train with the proposal layer's own-area rule switched off: the A/B of issue 38's first item.

With the rule (frcnn's default, :func:`frcnn.modeling.anchors.centred_on_own_area`) the anchors centred
over the padding a larger batch-mate adds do not compete for a picture's proposals; without it they do,
as in torchvision and detectron2. Everything else is train.py's:

    python scripts/ablate_own_area.py <train.py overrides> hydra.run.dir=<run dir>

Compare its metrics.json (map_voc07, proposal_recall) with the same overrides through train.py.
docs/REPRODUCING_CPU.md gives the measured pairs.
"""

import runpy
import sys
from pathlib import Path

import torch

import frcnn.modeling.rpn as rpn

TRAIN_PY = Path(__file__).resolve().parent.parent / "train.py"


def every_anchor(anchors_xyxy: torch.Tensor, image_sizes, stride: int) -> torch.Tensor:
    """Every anchor of the padded batch for every picture: bool [B, A], all true."""
    return torch.ones(len(image_sizes), anchors_xyxy.shape[0], dtype=torch.bool, device=anchors_xyxy.device)


if __name__ == "__main__":
    rpn.centred_on_own_area = every_anchor
    sys.argv = [str(TRAIN_PY), *sys.argv[1:]]
    runpy.run_path(str(TRAIN_PY), run_name="__main__")
