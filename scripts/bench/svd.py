"""--mode svd: region-wise and total inference with the RoI head's fc layers plain and truncated by SVD
(Fast R-CNN §3.1)."""

from __future__ import annotations

import copy

import torch

from bench.breakdown import frcnn_stages, time_stages
from bench.common import SIZES, median_ms
from bench.models import build_frcnn, make_inputs

SVD_RANKS = {"paper": (1024, 256), "small": (64, 32)}  # paper: Fast R-CNN's fc6 / fc7 ranks for VGG-16


def bench_svd(size: str, repeats: int, ranks: tuple[int, ...]) -> dict[str, float]:
    """Region-wise time (RoI pooling + head + post-processing) and total inference of one model,
    plain and with its RoI head's fc layers compressed by truncated SVD, alternating; plus the
    number of detections of each (random weights: the mAP change needs trained weights,
    ``scripts/eval.py roi_head.svd_rank=...``)."""
    from frcnn.inference.svd import compress_roi_head

    images, _ = make_inputs(size, 1)
    spec = SIZES[size]
    plain = build_frcnn(size).eval()
    compressed = copy.deepcopy(plain)
    lines = compress_roi_head(compressed, list(ranks))
    times = time_stages({"plain": frcnn_stages(plain, images), "svd": frcnn_stages(compressed, images)}, repeats)
    with torch.inference_mode():
        plain_out, svd_out = plain(images)[0], compressed(images)[0]
    med = {name: {key: median_ms(v) for key, v in stage_times.items()} for name, stage_times in times.items()}
    print(f"[{size}] truncated SVD {list(ranks)} (Fast R-CNN §3.1), 1 image {spec['image_hw']} {spec['backbone']}, "
          f"medians of {repeats}: " + "; ".join(lines), flush=True)
    print(f"    region-wise plain {med['plain']['region']:.1f} ms, svd {med['svd']['region']:.1f} ms "
          f"(x{med['svd']['region'] / med['plain']['region']:.3f}); total plain {med['plain']['total']:.1f} ms, "
          f"svd {med['svd']['total']:.1f} ms (x{med['svd']['total'] / med['plain']['total']:.3f}); detections "
          f"plain {len(plain_out['boxes'])}, svd {len(svd_out['boxes'])} (random weights)", flush=True)
    return {"region_plain_ms": med["plain"]["region"], "region_svd_ms": med["svd"]["region"],
            "total_plain_ms": med["plain"]["total"], "total_svd_ms": med["svd"]["total"]}
