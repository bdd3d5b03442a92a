"""Proposal quality as the paper's Fig. 4 plots it: recall of ground truth vs. IoU, for the top N proposals.

Rule (Faster R-CNN §4.1, Fig. 4, after Hosang et al., "How good are detection proposals, really?"):
for every image keep the RPN's N highest-ranked proposals (N = 300 / 1000 / 2000); a ground-truth
box counts as recalled at threshold t if some kept proposal has IoU >= t with it. Recall at t is
(recalled gts) / (gts), pooled over the whole split; the average recall (AR) of N is the mean of
the recalls over the thresholds 0.50, 0.55, ..., 0.95. As in the VOC protocol, ``difficult``
ground truths are left out of both the numerator and the denominator.

The top N are a prefix of one ranked list: the proposal layer ranks by objectness, applies NMS and
only then truncates (``rpn.propose``), so running it once with ``post_nms_top_n = max(top_ns)`` and
slicing gives exactly what a run with ``post_nms_top_n = N`` would give for every smaller N. An
image with fewer than N proposals (after NMS and the minimum-size rule) simply uses all it has.

Two entry points: :func:`recall_at_iou` on hand-made lists of boxes (pure, testable), and
:func:`proposal_recall` which runs a detector's shared conv layers + RPN over a dataloader.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from frcnn.data import transforms

PAPER_TOP_NS: tuple[int, ...] = (300, 1000, 2000)
# 0.50, 0.55, ..., 0.95 written out (np.arange would give 0.6000000000000001 and keys like that)
PAPER_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _iou_key(threshold: float) -> str:
    """JSON key of an IoU threshold: two decimals ("0.50", "0.55", ...)."""
    return f"{threshold:.2f}"


def _check_settings(top_ns: Sequence[int], iou_thresholds: Sequence[float]) -> tuple[list[int], list[float]]:
    top_ns = [int(n) for n in top_ns]
    iou_thresholds = [float(t) for t in iou_thresholds]
    if not top_ns or min(top_ns) <= 0:
        raise ValueError(f"top_ns must hold numbers of proposals > 0, got {top_ns}")
    if not iou_thresholds or not all(0.0 < t <= 1.0 for t in iou_thresholds):
        raise ValueError(f"iou_thresholds must hold values in (0, 1], got {iou_thresholds}")
    return sorted(set(top_ns)), sorted(set(iou_thresholds))


class ProposalRecallAccumulator:
    """Collects, per image and per N, the best IoU of every non-difficult gt with the top-N proposals.

    ``update`` takes one batch; ``compute`` returns the JSON-ready result (see :func:`recall_at_iou`).
    Memory: one float per (gt, N), so a whole VOC / COCO split is fine.
    """

    def __init__(self, top_ns: Sequence[int] = PAPER_TOP_NS, iou_thresholds: Sequence[float] = PAPER_IOU_THRESHOLDS):
        self.top_ns, self.iou_thresholds = _check_settings(top_ns, iou_thresholds)
        self.reset()

    def reset(self) -> None:
        self._best_iou: dict[int, list[Tensor]] = {n: [] for n in self.top_ns}  # N -> per image [G']
        self._num_kept: dict[int, list[int]] = {n: [] for n in self.top_ns}  # N -> per image min(N, P)
        self._num_images = 0

    def update(self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor],
               gt_difficult: Sequence[Tensor] | None = None) -> None:
        """proposals: per image [P, 4] sorted by rank (best first); gt_boxes: per image [G, 4];
        gt_difficult: per image bool [G] (None: nothing is difficult). Same coordinates for both."""
        if len(proposals) != len(gt_boxes):
            raise ValueError(f"{len(proposals)} images of proposals but {len(gt_boxes)} of ground truth")
        if gt_difficult is not None and len(gt_difficult) != len(gt_boxes):
            raise ValueError(f"{len(gt_difficult)} images of difficult flags but {len(gt_boxes)} of ground truth")
        for i, (image_proposals, image_gt) in enumerate(zip(proposals, gt_boxes)):
            image_proposals = torch.as_tensor(image_proposals, dtype=torch.float32).detach().cpu().reshape(-1, 4)
            image_gt = torch.as_tensor(image_gt, dtype=torch.float32).detach().cpu().reshape(-1, 4)
            if gt_difficult is not None:
                difficult = torch.as_tensor(gt_difficult[i], dtype=torch.bool).cpu().reshape(-1)
                if difficult.numel() != image_gt.shape[0]:
                    raise ValueError(f"image {i}: {image_gt.shape[0]} gt boxes but {difficult.numel()} difficult flags")
                image_gt = image_gt[~difficult]  # VOC protocol: difficult gts are not counted
            top = image_proposals[: self.top_ns[-1]]  # [P', 4]
            iou = box_iou(top, image_gt) if top.numel() and image_gt.numel() else None  # [P', G']
            for n in self.top_ns:
                if iou is None:  # no proposal: every gt has best IoU 0
                    best = torch.zeros(image_gt.shape[0])
                else:
                    best = iou[:n].max(dim=0).values  # [G'] best IoU of each gt over the top n
                self._best_iou[n].append(best)
                self._num_kept[n].append(min(n, image_proposals.shape[0]))
            self._num_images += 1

    def compute(self) -> dict:
        """JSON-ready result (see :func:`recall_at_iou`)."""
        num_gt = sum(int(b.numel()) for b in self._best_iou[self.top_ns[0]])
        recall, average_recall, mean_kept = {}, {}, {}
        for n in self.top_ns:
            best = torch.cat(self._best_iou[n]) if self._best_iou[n] else torch.zeros(0)  # [num_gt]
            per_threshold = {
                _iou_key(t): (float((best >= t).float().mean()) if num_gt else None) for t in self.iou_thresholds
            }
            recall[str(n)] = per_threshold
            average_recall[str(n)] = (
                float(sum(per_threshold.values()) / len(per_threshold)) if num_gt else None
            )
            kept = self._num_kept[n]
            mean_kept[str(n)] = float(sum(kept) / len(kept)) if kept else 0.0
        return {
            "recall": recall,
            "average_recall": average_recall,
            "mean_proposals_per_image": mean_kept,
            "num_gt": num_gt,
            "num_images": self._num_images,
        }


def recall_at_iou(
    proposals: Sequence[Tensor],
    gt_boxes: Sequence[Tensor],
    gt_difficult: Sequence[Tensor] | None = None,
    top_ns: Sequence[int] = PAPER_TOP_NS,
    iou_thresholds: Sequence[float] = PAPER_IOU_THRESHOLDS,
) -> dict:
    """Recall of ground truth at each IoU threshold for the top N proposals of each image (Fig. 4).

    Args:
        proposals: per image [P_i, 4] (x1, y1, x2, y2), best-ranked first.
        gt_boxes: per image [G_i, 4], same coordinates.
        gt_difficult: per image bool [G_i]; difficult gts are excluded (VOC protocol).
        top_ns: numbers of proposals per image to score.
        iou_thresholds: a gt is recalled at t if its best IoU with the top N is >= t.

    Returns:
        ``{"recall": {"300": {"0.50": r, ..., "0.95": r}, ...},
        "average_recall": {"300": mean of those recalls, ...},
        "mean_proposals_per_image": {"300": mean of min(N, P_i), ...}, "num_gt": int, "num_images": int}``.
        Recalls are None when there is no (non-difficult) ground truth.
    """
    accumulator = ProposalRecallAccumulator(top_ns, iou_thresholds)
    accumulator.update(proposals, gt_boxes, gt_difficult)
    return accumulator.compute()


@torch.no_grad()
def ranked_proposals(model, images: list[Tensor], max_n: int, image_scales: list[float] | None = None) -> list[Tensor]:
    """RPN proposals of a detector at its test settings but with ``post_nms_top_n = max_n``.

    Works for ``FasterRCNN`` and ``UnsharedFasterRCNN`` (both expose ``rpn`` and ``propose``). The
    proposal layer's settings are restored afterwards, even on error. -> per image [<= max_n, 4],
    sorted by objectness, in network-input pixels. ``image_scales``: the images' resize factors
    (the minimum proposal size is in original pixels; None: 1).
    """
    rpn = model.rpn
    saved = rpn.test_proposals
    rpn.test_proposals = dataclasses.replace(saved, post_nms_top_n=int(max_n))
    was_training = model.training
    model.eval()  # the proposal layer reads the test settings only in eval mode
    try:
        proposals, _ = model.propose(images, image_scales)
    finally:
        rpn.test_proposals = saved
        model.train(was_training)
    return proposals


@torch.no_grad()
def proposal_recall(
    model,
    dataloader,
    top_ns: Sequence[int] = PAPER_TOP_NS,
    iou_thresholds: Sequence[float] = PAPER_IOU_THRESHOLDS,
    device: torch.device | str = "cpu",
) -> dict:
    """Fig. 4 for a trained detector on a split: its RPN's top-N proposals vs. the ground truth.

    ``dataloader`` yields ``(list of images [3, H, W], list of targets)`` (``collate_detection``)
    with the eval transform; proposals and ``target["boxes"]`` are both in network-input pixels
    (recall is IoU based, so the rescale does not change it). Returns :func:`recall_at_iou`'s dict.
    """
    accumulator = ProposalRecallAccumulator(top_ns, iou_thresholds)
    for images, targets in dataloader:
        proposals = ranked_proposals(model, [image.to(device) for image in images], accumulator.top_ns[-1],
                                     transforms.image_scales(images, targets))
        update_from_targets(accumulator, proposals, targets)
    return accumulator.compute()


def update_from_targets(accumulator: ProposalRecallAccumulator, proposals: list[Tensor], targets: list[dict]) -> None:
    """Feed one batch of proposals with the dataset's target dicts (boxes, optional difficult)."""
    accumulator.update(
        proposals,
        [t["boxes"] for t in targets],
        [t.get("difficult", torch.zeros(len(t["boxes"]), dtype=torch.bool)) for t in targets],
    )


def format_recall_table(result: dict) -> str:
    """Plain-text table: one row per N, recall (%) at IoU 0.5 / 0.7 (where measured) and AR (%)."""
    shown = [key for key in ("0.50", "0.70") if key in next(iter(result["recall"].values()), {})]

    def pct(value: float | None) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"

    header = ["proposals"] + [f"recall@{k}" for k in shown] + ["average recall"]
    rows = [[n] + [pct(per_iou[k]) for k in shown] + [pct(result["average_recall"][n])]
            for n, per_iou in result["recall"].items()]
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    return "\n".join("  ".join(str(cell).rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows])
