"""--mode nms: the proposal layer's NMS alone, full NMS + cut against nms_top_n."""

from __future__ import annotations

import torch
from torchvision.ops import nms

from bench.common import alternate, median_ms
from frcnn.layers.nms import nms_top_n


def bench_nms(repeats: int) -> None:
    """Full NMS then the post-NMS cut (torchvision's RPN, frcnn before issue 6) against
    ``nms_top_n`` on the proposal layer's candidate counts: random boxes, IoU 0.7."""
    gen = torch.Generator().manual_seed(0)
    for num, top_n, what in ((2304, 300, "small, test"), (6000, 300, "paper, test"), (12000, 2000, "paper, train")):
        xy = torch.rand(num, 2, generator=gen) * torch.tensor([1000.0, 600.0])
        boxes = torch.cat((xy, xy + 16 + torch.rand(num, 2, generator=gen) * 300), dim=1)
        scores = torch.rand(num, generator=gen)
        times = alternate({"full": lambda: nms(boxes, scores, 0.7)[:top_n],
                           "top_n": lambda: nms_top_n(boxes, scores, 0.7, top_n)}, repeats)
        full, early = median_ms(times["full"]), median_ms(times["top_n"])
        print(f"[nms] {num} -> {top_n} ({what}): full NMS + cut {full:.1f} ms, nms_top_n {early:.1f} ms "
              f"({full / early:.0f}x)", flush=True)
