"""Pictures of detections: boxes, class names and scores drawn on a copy of an image.

Used by ``scripts/detect.py`` (detections only) and by the validation-picture callback
(ground truth in white under the detections in class colours).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

# distinct, saturated colours; class c uses PALETTE[(c - 1) % len]
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40))
GROUND_TRUTH_COLOUR = (255, 255, 255)


def _font(size_px: int):
    try:
        return ImageFont.load_default(size=size_px)  # Pillow >= 10.1 (scalable)
    except TypeError:
        return ImageFont.load_default()


def _class_name(label: int, class_names: Sequence[str]) -> str:
    return class_names[label - 1] if 1 <= label <= len(class_names) else f"class {label}"


def _sorted_corners(box: Sequence[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    return x1, y1, x2, y2


def _draw_tagged_boxes(out: Image.Image, boxes: torch.Tensor, tags: Sequence[str],
                       colours: Sequence[tuple[int, int, int]]) -> None:
    """Outline each box (x1, y1, x2, y2 px) in its colour with its tag on a filled label above it
    (inside the box at the image's top border)."""
    draw = ImageDraw.Draw(out)
    width, height = out.size
    line_px = max(2, round(min(width, height) / 200))
    font = _font(max(10, round(min(width, height) / 40)))
    for box, tag, colour in zip(boxes.tolist(), tags, colours):
        x1, y1, x2, y2 = _sorted_corners(box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line_px)
        left, top, right, bottom = draw.textbbox((0, 0), tag, font=font)
        text_w, text_h = right - left + 4, bottom - top + 4
        tag_y = y1 - text_h if y1 - text_h >= 0 else y1
        draw.rectangle((x1, tag_y, x1 + text_w, tag_y + text_h), fill=colour)
        draw.text((x1 + 2 - left, tag_y + 2 - top), tag, fill=(0, 0, 0), font=font)


def draw_detections(image: Image.Image, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                    class_names: Sequence[str]) -> Image.Image:
    """A copy of ``image`` with each detection (boxes [N, 4] px, labels [N] in 1..C, scores [N])
    outlined in its class colour and tagged "<class> <score>"."""
    out = image.copy()
    labels_list = [int(label) for label in labels.tolist()]
    tags = [f"{_class_name(label, class_names)} {score:.2f}" for label, score in zip(labels_list, scores.tolist())]
    _draw_tagged_boxes(out, boxes, tags, [PALETTE[(label - 1) % len(PALETTE)] for label in labels_list])
    return out


def draw_ground_truth_and_detections(image: Image.Image, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                                     boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                                     class_names: Sequence[str]) -> Image.Image:
    """A copy of ``image`` with the ground truth (white, tagged "gt <class>") and, over it, the
    detections in class colours (see :func:`draw_detections`)."""
    out = image.copy()
    gt_tags = [f"gt {_class_name(int(label), class_names)}" for label in gt_labels.tolist()]
    _draw_tagged_boxes(out, gt_boxes, gt_tags, [GROUND_TRUTH_COLOUR] * len(gt_tags))
    return draw_detections(out, boxes, labels, scores, class_names)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """A float [3, H, W] image in [0, 1] (the data pipeline's output) as an 8-bit RGB PIL image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")
