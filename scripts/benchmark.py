"""Speed of frcnn against torchvision's Faster R-CNN on the same architecture (issue 6).

    python scripts/benchmark.py                          # everything (~10 min on 2 idle cores)
    python scripts/benchmark.py --size small --mode infer --repeats 20
    python scripts/benchmark.py --size paper --mode breakdown
    python scripts/benchmark.py --mode data
    python scripts/benchmark.py --mode warp --size small   # non-approximate vs approximate joint step
    python scripts/benchmark.py --mode svd --size paper    # truncated SVD of fc6 / fc7 (Fast R-CNN §3.1)
    python scripts/benchmark.py --mode scale               # COCO-size data: time and memory vs images (not in all)
    python scripts/benchmark.py --mode jobs                # reproduce.py --jobs 2 against --jobs 1 (not in all)
    python scripts/benchmark.py --device cuda --size paper --mode infer --bf16   # on a GPU (scripts/gpu_check.sh)

Modes (default: all of them):
  infer      inference latency per image (batch of 1), frcnn vs torchvision, alternating A B A B ...
  train      one training step (forward + backward + SGD step), alternating
  breakdown  the paper's Table 5 split: shared conv, proposal (RPN head + proposal layer + NMS),
             region-wise (RoI pooling + head + post-processing), total; ms and ratios of conv
  data       images/s through the albumentations transforms and the DataLoader, against the
             model's training throughput at the same size
  nms        the proposal layer's NMS alone: full NMS + cut against nms_top_n (no size)
  warp       one training step of non-approximate joint training (§3.2 iii: proposals keep their
             graph, RoI warping) against approximate joint training (RoI max pooling), same model
             weights and batch, alternating; the ratio's floor is 1.3 (issue 15). Then the peak
             memory of one step of each, each in a fresh process (peak RSS above the RSS before
             the step: activations, gradients and temporaries; Linux /proc only)
  export     one image's inference: eager frcnn against its TorchScript file and its ONNX file in
             onnxruntime (scripts/export.py), alternating
  svd        region-wise and total inference time with the RoI head's fc layers plain and
             compressed by truncated SVD (Fast R-CNN §3.1; --svd-rank, default 1024 256 for
             VGG-16's fc6 / fc7 as in Fast R-CNN, 64 32 for the small net), alternating
  scale      how the time and peak memory of the parts that see every image (COCO index, proposal files
             written / merged / read, an epoch of proposal loading, COCO AP per backend) grow with the number
             of images, 1k / 10k / 118k generated COCO-like images (scripts/bench/scale.py; not part of all)

Sizes: ``paper`` = one 600 x 1000 image, VGG-16, anchors 128/256/512, 21 classes;
``small`` = the built-in data (256 x 256, 4 images per training batch), small backbone,
anchors 32/64/128, 6 classes. Weights are random init (identical in both models: torchvision's
model receives copies of frcnn's modules' state dicts).

What is the same in both models: backbone body (same weights), RPN head (3x3 conv + 1x1 cls/reg,
same weights), anchors (sizes, ratios, stride 16, k = 9), RoI max pooling 7x7 at 1/16 (torchvision
gets ``torchvision.ops.roi_pool`` on the single feature map), the per-RoI head (the same fc
module) and predictor (same weights), pre/post-NMS top N (train 12000/2000, test 6000/300),
NMS 0.7 / 0.3, score threshold 0.05, 100 detections, 256 anchors / 128 RoIs sampled per image,
box coder weights (1,1,1,1) / (10,10,5,5), the minimum proposal size (frcnn is set to
torchvision's fixed 1e-3 px), already-resized inputs (torchvision's transform is told not to
resize: frcnn resizes in the data pipeline, not in the model), padding to a multiple of 16.
Remaining differences (rules of the paper that frcnn keeps): anchor centres at (i + 0.5) * 16 in
frcnn vs i * 16 in torchvision; cross-boundary anchors ignored in frcnn's RPN loss (§3.3);
torchvision rescales its detections back to the (identical) original size.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import platform
import sys
from pathlib import Path

import torch
import torchvision

from bench.breakdown import bench_breakdown
from bench.common import SETTINGS, SIZES
from bench.data import bench_data
from bench.export import bench_export
from bench.infer import bench_infer
from bench.jobs import bench_jobs
from bench.nms import bench_nms
from bench.scale import BACKENDS, DATA_PARTS, EVAL_IMAGES, SCALE_IMAGES, bench_scale
from bench.svd import SVD_RANKS, bench_svd
from bench.train import bench_train
from bench.warp import WARP_SCHEMES, bench_warp, warp_memory_child
from frcnn.utils.host_info import cpu_description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("paper", "small", "lite0", "all"), default="all")
    parser.add_argument("--head", choices=("c4", "fc"), default=None,
                        help="--size lite0: the per-RoI head (backbone.head; default c4)")
    parser.add_argument("--mode", choices=("infer", "train", "breakdown", "data", "nms", "warp", "svd", "export", "scale",
                                           "jobs", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per model (default: per size)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--jobs", type=int, default=2, help="--mode jobs: reproduce.py --jobs N against --jobs 1")
    parser.add_argument("--jobs-steps", type=int, default=40, help="--mode jobs: mini-batches per training")
    parser.add_argument("--data-batches", type=int, default=32)
    parser.add_argument("--head-width", type=int, default=None,
                        help="fc width of the per-RoI head (default: VGG-16's 4096 / small's 256; torchvision's "
                             "TwoMLPHead default is 1024)")
    parser.add_argument("--svd-rank", type=int, nargs="+", default=None,
                        help="--mode svd: ranks of the head's fc layers (default: 1024 256 paper, 64 32 small)")
    parser.add_argument("--baseline", action="store_true",
                        help="frcnn as before issue 6: NCHW conv and full NMS before the post-NMS cut")
    parser.add_argument("--device", default="cpu",
                        help="infer / train / warp modes: cpu (default) or cuda[:i] (scripts/gpu_check.sh)")
    parser.add_argument("--bf16", action="store_true", help="infer / train modes under torch.autocast(bfloat16)")
    parser.add_argument("--warp-memory-child", choices=WARP_SCHEMES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scale-images", type=int, nargs="+", default=list(SCALE_IMAGES),
                        help="--mode scale: dataset sizes (default: 1000 10000 118287)")
    parser.add_argument("--eval-images", type=int, nargs="+", default=list(EVAL_IMAGES),
                        help="--mode scale: images of the COCO AP parts (default: 1000 5000)")
    parser.add_argument("--scale-parts", nargs="+", default=[*DATA_PARTS, "coco_ap"],
                        choices=[*DATA_PARTS, "coco_ap", *(f"coco_ap_{b}" for b in BACKENDS)],
                        help="--mode scale: the parts to measure (default: all)")
    parser.add_argument("--scale-dir", default="/tmp/frcnn_scale",
                        help="--mode scale: where the generated data goes (~15 GB free needed at 118k images)")
    args = parser.parse_args(argv)
    SETTINGS.baseline = args.baseline
    SETTINGS.device, SETTINGS.autocast_bf16 = torch.device(args.device), args.bf16
    if SETTINGS.device.type != "cpu" and args.mode not in ("infer", "train", "warp"):
        parser.error(f"--device {args.device}: only --mode infer, train or warp run on a GPU")
    if SETTINGS.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.head:
        SIZES["lite0"]["head"] = args.head
    if args.head_width:
        for spec in SIZES.values():
            spec["hidden"] = args.head_width

    logging.disable(logging.WARNING)  # random-init warnings
    torch.set_num_threads(args.threads)
    if args.warp_memory_child:  # internal: one step of --mode warp's memory measurement
        warp_memory_child("small" if args.size == "all" else args.size, args.warp_memory_child)
        return 0
    torch.manual_seed(0)
    print(f"frcnn benchmark {_dt.datetime.now().isoformat(timespec='seconds')} | torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, python {platform.python_version()}, threads "
          f"{torch.get_num_threads()} | CPU: {cpu_description()}"
          f"{f' | GPU: {torch.cuda.get_device_name(SETTINGS.device)}' if SETTINGS.device.type == 'cuda' else ''}"
          f"{f' | head width {args.head_width}' if args.head_width else ''}"
          f"{' | frcnn BASELINE (before issue 6)' if SETTINGS.baseline else ''}", flush=True)
    sizes = ("small", "paper", "lite0") if args.size == "all" else (args.size,)
    if args.mode == "jobs":
        bench_jobs(args.jobs, args.repeats or 1, args.jobs_steps, num_val=50)
        return 0
    if args.mode == "scale":
        bench_scale(args.scale_images, args.eval_images, Path(args.scale_dir), args.scale_parts)
        return 0
    modes = ("infer", "breakdown", "train", "data") if args.mode == "all" else (args.mode,)
    train_ms_small = None
    for size in sizes:
        spec = SIZES[size]
        for mode in modes:
            if mode == "infer":
                bench_infer(size, args.repeats or spec["infer_repeats"])
            elif mode == "train":
                result = bench_train(size, args.repeats or spec["train_repeats"])
                if size == "small":
                    train_ms_small = result["frcnn_ms"]
            elif mode == "breakdown":
                bench_breakdown(size, args.repeats or spec["breakdown_repeats"])
            elif mode == "warp":
                bench_warp(size, args.repeats or spec["train_repeats"])
            elif mode == "export":
                bench_export(size, args.repeats or spec["breakdown_repeats"])
            elif mode == "svd":
                bench_svd(size, args.repeats or spec["breakdown_repeats"], tuple(args.svd_rank or SVD_RANKS[size]))
    if args.mode in ("nms", "all"):
        bench_nms(args.repeats or 5)
    if "data" in modes:
        if train_ms_small is None:
            train_ms_small = bench_train("small", args.repeats or SIZES["small"]["train_repeats"])["frcnn_ms"]
        bench_data(args.data_batches, train_ms_small)
    return 0


if __name__ == "__main__":
    sys.exit(main())

