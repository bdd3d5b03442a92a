"""Re-score a trained detector on a VOCdevkit split under other test-time settings, without retraining.

    python scripts/rescore_detector.py <run dir>/final/model.pt --root data/trees --classes Tree

Prints, one line each: map_50 with the detector as saved; with 1000 proposals; with detection NMS 0.4 and 0.6;
with box voting (each kept box the score-weighted mean of the boxes overlapping it by >= 0.5 / 0.6 / 0.7, Gidaris &
Komodakis 2015); AP at IoU 0.3 / 0.4 / 0.5 / 0.6; and the spread of the detections' boxes around the objects they
overlap (score > 0.5, IoU > 0.3): log size ratio and centre offset over the object's width. docs/CPU_PRESET.md
quotes it for the trees. Single-class data only (the box voting and spread lines take class 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from frcnn.data.voc import VOCDataset  # noqa: E402
from frcnn.data.build import build_transform  # noqa: E402
from frcnn.evaluation.voc_ap import DetectionEvaluator  # noqa: E402
from frcnn.inference.predictor import Detector  # noqa: E402
from frcnn.modeling.boxes import decode_boxes  # noqa: E402
from frcnn.modeling.rpn import ProposalSettings  # noqa: E402


def voting_postprocess(roi_head, vote_iou: float):
    """RoIHead.postprocess for one class with box voting after NMS (module doc)."""
    def postprocess(class_logits, box_deltas, rois, image_sizes):
        probs = F.softmax(class_logits, dim=-1)
        boxes_all = decode_boxes(roi_head.raw_deltas(box_deltas), torch.cat(rois), roi_head.box_weights)
        out = []
        for p, b, hw in zip(probs.split([len(r) for r in rois]), boxes_all.split([len(r) for r in rois]), image_sizes):
            boxes, scores = clip_boxes_to_image(b.unflatten(1, (-1, 4)), hw)[:, 1], p[:, 1]
            keep = scores > roi_head.score_thresh
            boxes, scores = boxes[keep], scores[keep]
            keep = batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.long), roi_head.nms_thresh)
            kept, kept_scores = boxes[keep[: roi_head.detections_per_image]], scores[keep[: roi_head.detections_per_image]]
            if len(kept):
                weights = (box_iou(kept, boxes) >= vote_iou).float() * scores[None]  # [K, R]
                kept = weights @ boxes / weights.sum(1, keepdim=True)
            out.append({"boxes": kept, "scores": kept_scores, "labels": torch.ones_like(kept_scores, dtype=torch.long)})
        return out
    return postprocess


def score(model, batches, iou_thresholds=(0.5,)) -> dict[float, float]:
    evaluators = {t: DetectionEvaluator(num_classes=model.roi_head.num_classes, iou_thresh=t) for t in iou_thresholds}
    with torch.no_grad():
        for images, targets in batches:
            detections = model(images)
            for evaluator in evaluators.values():
                evaluator.update(detections, targets)
    return {t: round(e.compute()["map_50"], 4) for t, e in evaluators.items()}


def box_spread(model, batches) -> str:
    rows = []
    with torch.no_grad():
        for images, targets in batches:
            for found, target in zip(model(images), targets):
                boxes, objects = found["boxes"][found["scores"] > 0.5], target["boxes"]
                if len(boxes) == 0 or len(objects) == 0:
                    continue
                best, index = box_iou(boxes, objects).max(1)
                for box, obj in zip(boxes[best > 0.3], objects[index[best > 0.3]]):
                    bw, bh, ow, oh = box[2] - box[0], box[3] - box[1], obj[2] - obj[0], obj[3] - obj[1]
                    rows.append([float(torch.log(bw / ow)), float(torch.log(bh / oh)),
                                 float((box[0] + box[2] - obj[0] - obj[2]) / 2 / ow),
                                 float((box[1] + box[3] - obj[1] - obj[3]) / 2 / oh)])
    r = torch.tensor(rows)
    return (f"{len(r)} pairs: log size ratio w / h mean {r[:, 0].mean():.3f} / {r[:, 1].mean():.3f}, std "
            f"{r[:, :2].std(0).mean():.3f}; centre offset / width mean {r[:, 2].mean():.3f} / {r[:, 3].mean():.3f}, "
            f"std {r[:, 2:].std(0).mean():.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--root", required=True)
    parser.add_argument("--classes", nargs="+", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--scale", type=int, default=600)
    args = parser.parse_args(argv)
    data = {"scales": [args.scale], "max_size": 1000, "hflip_prob": 0.0}
    dataset = VOCDataset(args.root, args.split, args.classes, keep_difficult=True,
                         transform=build_transform(data, train=False))
    batches = [tuple(zip(*[dataset[i] for i in range(k, min(k + 4, len(dataset)))])) for k in range(0, len(dataset), 4)]
    batches = [(list(images), list(targets)) for images, targets in batches]

    def fresh():
        return Detector.from_checkpoint(args.checkpoint, torch.device("cpu")).model

    print("as saved", score(fresh(), batches))
    model = fresh()
    model.rpn.test_proposals = ProposalSettings(model.rpn.test_proposals.pre_nms_top_n, 1000)
    print("1000 proposals", score(model, batches))
    for nms in (0.4, 0.6):
        model = fresh()
        model.roi_head.nms_thresh = nms
        print(f"detection NMS {nms}", score(model, batches))
    for vote in (0.5, 0.6, 0.7):
        model = fresh()
        model.roi_head.postprocess = voting_postprocess(model.roi_head, vote)
        print(f"box voting >= {vote}", score(model, batches))
    print("AP by IoU", score(fresh(), batches, (0.3, 0.4, 0.5, 0.6)))
    print("box spread", box_spread(fresh(), batches))


if __name__ == "__main__":
    main()
