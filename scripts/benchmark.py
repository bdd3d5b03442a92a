"""Speed of frcnn against torchvision's Faster R-CNN on the same architecture (issue 6).

    python scripts/benchmark.py                          # everything (~10 min on 2 idle cores)
    python scripts/benchmark.py --size small --mode infer --repeats 20
    python scripts/benchmark.py --size paper --mode breakdown
    python scripts/benchmark.py --mode data
    python scripts/benchmark.py --mode warp --size small   # non-approximate vs approximate joint step
    python scripts/benchmark.py --mode svd --size paper    # truncated SVD of fc6 / fc7 (Fast R-CNN §3.1)
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
import contextlib
import copy
import datetime as _dt
import gc
import json
import logging
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVPredictor
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import nms, roi_pool

import frcnn.rpn
from frcnn.backbones import build_backbone, freeze_prefix
from frcnn.fast_paths import torch_layers_only
from frcnn.lit.optim import fused
from frcnn.machine import cpu_description
from frcnn.max_pool import MaxPool2x2
from frcnn.model import FasterRCNN
from frcnn.nms import nms_top_n
from frcnn.onednn_linear import OneDNNLinear
from frcnn.roi_head import RoIHead
from frcnn.rpn import ProposalSettings, RegionProposalNetwork

SIZES = {
    # name: backbone, image (H, W), anchor scales, classes (with bg), images per training batch, head width
    "paper": dict(backbone="vgg16", image_hw=(600, 1000), scales=(128, 256, 512), num_classes=20, train_batch=1,
                  hidden=None, infer_repeats=5, train_repeats=3, breakdown_repeats=3),
    "small": dict(backbone="small", image_hw=(256, 256), scales=(32, 64, 128), num_classes=5, train_batch=4,
                  hidden=None, infer_repeats=30, train_repeats=20, breakdown_repeats=30),
}
TORCHVISION_MIN_PROPOSAL_SIZE = 1e-3  # torchvision's RPN drops boxes under 1e-3 px (hard-coded)


# ---------------------------------------------------------------------------------------------
# The two models
# ---------------------------------------------------------------------------------------------


class _NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform minus the resize: inputs arrive at network size, as frcnn's do."""

    def resize(self, image, target=None):
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        return result  # the sizes are equal: rescaling by 1 is a no-op


class _SingleMapRoIPool(nn.Module):
    """``box_roi_pool`` for torchvision: RoI max pooling on the one stride-16 map (as frcnn)."""

    def __init__(self, output_size: int, spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, features, proposals, image_shapes):
        return roi_pool(features["0"], proposals, self.output_size, self.spatial_scale)


class _BodyWithChannels(nn.Module):
    def __init__(self, body: nn.Module, out_channels: int):
        super().__init__()
        self.body = body
        self.out_channels = out_channels

    def forward(self, x):
        return self.body(x)


BASELINE = False  # --baseline: frcnn as before issue 6 (NCHW conv, full NMS then top-N)
DEVICE = torch.device("cpu")  # --device: infer / train / warp modes on a GPU (scripts/gpu_check.sh)
AUTOCAST_BF16 = False  # --bf16: infer / train under torch.autocast(bfloat16)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _autocast():
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=AUTOCAST_BF16)


def _on_device(images, targets=None):
    images = [img.to(DEVICE) for img in images]
    if targets is None:
        return images
    return images, [{k: v.to(DEVICE) for k, v in t.items()} for t in targets]


def _peak_memory_line() -> str:
    if DEVICE.type != "cuda":
        return ""
    return f"; peak GPU memory {torch.cuda.max_memory_allocated(DEVICE) / 2**30:.2f} GiB"


def _full_nms_then_cut(boxes, scores, iou_thresh, top_n):
    return nms(boxes, scores, iou_thresh)[:top_n]


def build_frcnn(size: str) -> FasterRCNN:
    spec = SIZES[size]
    backbone = build_backbone(spec["backbone"], num_hidden=spec["hidden"])
    freeze_prefix(backbone)  # VGG-16: conv1_1..conv2_2 fixed (§3.1.3), as factory.build_model does
    rpn = RegionProposalNetwork(
        backbone.out_channels, anchor_scales_px=spec["scales"], stride=16,
        train_proposals=ProposalSettings(12000, 2000, 0.7, TORCHVISION_MIN_PROPOSAL_SIZE),
        test_proposals=ProposalSettings(6000, 300, 0.7, TORCHVISION_MIN_PROPOSAL_SIZE),
    )
    # 128 RoIs per image, as torchvision's box_batch_size_per_image (frcnn counts them per mini-batch)
    roi_head = RoIHead(backbone.head, backbone.representation_size, spec["num_classes"], roi_output_size=7,
                       spatial_scale=1 / 16, pool_type="max", rois_per_minibatch=128 * spec["train_batch"],
                       positive_fraction=0.25, bg_iou_lo=0.0, score_thresh=0.05, nms_thresh=0.3,
                       detections_per_image=100)
    model = FasterRCNN(backbone, rpn, roi_head, channels_last=not BASELINE)
    if BASELINE:
        frcnn.rpn.nms_top_n = _full_nms_then_cut
    return model


def _with_torch_layers(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose frcnn layers with CPU fast paths (OneDNNLinear, MaxPool2x2) are
    torch's own (``nn.Linear``: F.linear, MKL on the CPU; ``nn.MaxPool2d``) with the same weights:
    torchvision's twin runs what torchvision would."""
    twin = copy.deepcopy(module)
    for parent in twin.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, OneDNNLinear):
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.load_state_dict(child.state_dict())
                setattr(parent, name, plain)
            elif isinstance(child, MaxPool2x2):
                setattr(parent, name, nn.MaxPool2d(2, 2))
    return twin


def build_torchvision_twin(ours: FasterRCNN, size: str) -> TVFasterRCNN:
    """torchvision's FasterRCNN with frcnn's modules' weights and the same settings."""
    spec = SIZES[size]
    body = _BodyWithChannels(_with_torch_layers(ours.backbone), ours.backbone_info.out_channels)
    rpn_head = TVRPNHead(body.out_channels, ours.rpn.anchor_generator.num_anchors_per_location)
    ours_head = ours.rpn.head
    rpn_head.load_state_dict({
        "conv.0.0.weight": ours_head.conv.weight, "conv.0.0.bias": ours_head.conv.bias,
        "cls_logits.weight": ours_head.cls_logits.weight, "cls_logits.bias": ours_head.cls_logits.bias,
        "bbox_pred.weight": ours_head.bbox_deltas.weight, "bbox_pred.bias": ours_head.bbox_deltas.bias,
    })
    anchor_gen = TVAnchorGenerator(sizes=(tuple(spec["scales"]),), aspect_ratios=((0.5, 1.0, 2.0),))
    predictor = TVPredictor(ours.roi_head.predictor.cls_score.in_features, spec["num_classes"] + 1)
    predictor.load_state_dict(ours.roi_head.predictor.state_dict())
    model = TVFasterRCNN(
        body, num_classes=None,
        rpn_anchor_generator=anchor_gen, rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=12000, rpn_post_nms_top_n_train=2000,
        rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_test=300,
        rpn_nms_thresh=0.7, rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3,
        rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
        box_head=_with_torch_layers(ours.roi_head.head),
        box_predictor=predictor, box_score_thresh=0.05, box_nms_thresh=0.3, box_detections_per_img=100,
        box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5, box_batch_size_per_image=128, box_positive_fraction=0.25,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
    )
    # The constructor only accepts MultiScaleRoIAlign; any module with its call signature works.
    model.roi_heads.box_roi_pool = _SingleMapRoIPool(7, 1 / 16)
    h, w = spec["image_hw"]
    model.transform = _NoResizeTransform(min(h, w), max(h, w), list(ours.pixel_mean.flatten().tolist()),
                                         list(ours.pixel_std.flatten().tolist()), size_divisible=16)
    return model


def make_inputs(size: str, batch: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Random images in [0, 1] at network size and 3 random ground-truth boxes each."""
    spec = SIZES[size]
    h, w = spec["image_hw"]
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, h, w, generator=gen) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(3, 2, generator=gen) * torch.tensor([w * 0.6, h * 0.6])
        wh = (0.1 + 0.3 * torch.rand(3, 2, generator=gen)) * torch.tensor([w, h])
        boxes = torch.cat((xy, xy + wh), dim=1)
        labels = torch.randint(1, spec["num_classes"] + 1, (3,), generator=gen)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def alternate_wall_and_cpu(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
                           ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run the callables in turn (A B A B ...) ``warmup`` + ``repeats`` times: (wall seconds,
    process CPU seconds of all threads) per call."""
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            _sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync()  # a GPU's queued kernels belong to the call that queued them
            if i >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def alternate(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """:func:`alternate_wall_and_cpu`'s wall seconds per call."""
    return alternate_wall_and_cpu(fns, repeats, warmup)[0]


def frcnn_sgd(model: nn.Module) -> torch.optim.Optimizer:
    """frcnn's optimizer (frcnn.lit.optim.build_optimizer: torch's fused SGD, the same floats as the
    default one) on the trainable parameters, at the benchmark's settings."""
    return fused(torch.optim.SGD, [p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9,
                 weight_decay=5e-4)


def _median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


def _report_pair(title: str, times: dict[str, list[float]], per: str) -> dict[str, float]:
    ours, theirs = _median_ms(times["frcnn"]), _median_ms(times["torchvision"])
    print(f"{title}: frcnn {ours:.1f} ms, torchvision {theirs:.1f} ms {per}; ratio frcnn/torchvision = "
          f"{ours / theirs:.3f}  (medians of {len(times['frcnn'])})", flush=True)
    return {"frcnn_ms": ours, "torchvision_ms": theirs, "ratio": ours / theirs}


PLAIN = "frcnn, torch layers"  # frcnn with its layers' CPU fast paths off (frcnn.fast_paths.torch_layers_only)


def _report_plain_layers(title: str, times: dict[str, list[float]], per: str) -> None:
    """The PLAIN entry (frcnn's fc layers on F.linear instead of oneDNN, VGG's pools on
    F.max_pool2d) against torchvision and frcnn, from the same alternating run."""
    if PLAIN not in times:  # a GPU: the fast paths are CPU-only, nothing to compare
        return
    plain, ours, theirs = (_median_ms(times[name]) for name in (PLAIN, "frcnn", "torchvision"))
    print(f"{title}: frcnn with torch's layers (F.linear, F.max_pool2d) {plain:.1f} ms {per}; ratio to torchvision = "
          f"{plain / theirs:.3f}; frcnn's layers / torch's = {ours / plain:.3f}", flush=True)


def _cpu_only_plain(fns: dict[str, Callable[[], object]]) -> dict[str, Callable[[], object]]:
    """Drop the PLAIN entry on a GPU, where it would time the same code again."""
    return fns if DEVICE.type == "cpu" else {name: fn for name, fn in fns.items() if name != PLAIN}


def _torch_layers(fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        with torch_layers_only():
            return fn()

    return run


def _precision_label() -> str:
    return f"{DEVICE.type}{', bf16 autocast' if AUTOCAST_BF16 else ''}"


def bench_infer(size: str, repeats: int) -> dict[str, float]:
    ours = build_frcnn(size).eval()
    theirs = build_torchvision_twin(ours, size).eval()
    ours, theirs = ours.to(DEVICE), theirs.to(DEVICE)
    images = _on_device(make_inputs(size, 1)[0])
    with torch.inference_mode(), _autocast():
        fns = {"frcnn": lambda: ours(images), PLAIN: _torch_layers(lambda: ours(images)),
               "torchvision": lambda: theirs(images)}
        times = alternate(_cpu_only_plain(fns), repeats)
    spec = SIZES[size]
    title = f"[{size}] inference, 1 image {spec['image_hw']} {spec['backbone']} ({_precision_label()})"
    result = _report_pair(title, times, "per image")
    _report_plain_layers(title, times, "per image")
    print(f"[{size}] images/s: frcnn {1e3 / result['frcnn_ms']:.2f}, torchvision {1e3 / result['torchvision_ms']:.2f}"
          f"{_peak_memory_line()}", flush=True)
    return result


def bench_train(size: str, repeats: int) -> dict[str, float]:
    spec = SIZES[size]
    ours = build_frcnn(size).train()
    theirs = build_torchvision_twin(ours, size).train()
    ours, theirs = ours.to(DEVICE), theirs.to(DEVICE)
    images, targets = _on_device(*make_inputs(size, spec["train_batch"]))
    # each framework's own SGD: frcnn's build_optimizer takes torch's fused kernel (the same floats),
    # torchvision's reference script (references/detection/train.py) the default one
    opt_ours = frcnn_sgd(ours)
    opt_theirs = torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], lr=1e-4, momentum=0.9,
                                 weight_decay=5e-4)

    def step_ours():
        opt_ours.zero_grad(set_to_none=True)
        with _autocast():
            loss = ours(images, targets)["total"]
        loss.backward()
        opt_ours.step()

    def step_theirs():
        opt_theirs.zero_grad(set_to_none=True)
        with _autocast():
            loss = sum(theirs(images, targets).values())
        loss.backward()
        opt_theirs.step()

    torch.manual_seed(0)
    times = alternate(_cpu_only_plain({"frcnn": step_ours, PLAIN: _torch_layers(step_ours), "torchvision": step_theirs}),
                      repeats)
    title = f"[{size}] training step, {spec['train_batch']} image(s) {spec['image_hw']} {spec['backbone']} ({_precision_label()})"
    result = _report_pair(title, times, "per step")
    _report_plain_layers(title, times, "per step")
    if DEVICE.type == "cuda":  # one more step of each alone: its own peak memory
        for name, step in (("frcnn", step_ours), ("torchvision", step_theirs)):
            torch.cuda.reset_peak_memory_stats(DEVICE)
            step()
            print(f"[{size}] training step {name}{_peak_memory_line()}", flush=True)
    return result


# -- non-approximate vs approximate joint training (issue 15) ----------------------------------

WARP_SCHEMES = ("approximate", "nonapproximate")
WARP_FLOOR = 1.3  # issue 15: a non-approximate step costs at most 1.3x an approximate one


def _joint_step(model: FasterRCNN, images, targets) -> Callable[[], None]:
    opt = frcnn_sgd(model)

    def step():
        opt.zero_grad(set_to_none=True)
        model(images, targets)["total"].backward()
        opt.step()

    return step


def _warp_model(size: str, scheme: str) -> FasterRCNN:
    torch.manual_seed(0)
    model = build_frcnn(size).to(DEVICE).train()
    model.roi_head.warp_boxes = scheme == "nonapproximate"  # RoI warping (max of 2 x 2 samples) + proposal graph
    return model


def bench_warp(size: str, repeats: int) -> dict[str, float]:
    spec = SIZES[size]
    images, targets = _on_device(*make_inputs(size, spec["train_batch"]))
    steps = {scheme: _joint_step(_warp_model(size, scheme), images, targets) for scheme in WARP_SCHEMES}
    torch.manual_seed(0)
    wall, cpu = alternate_wall_and_cpu(steps, repeats)
    approx_ms, exact_ms = _median_ms(wall["approximate"]), _median_ms(wall["nonapproximate"])
    approx_cpu_ms, exact_cpu_ms = _median_ms(cpu["approximate"]), _median_ms(cpu["nonapproximate"])
    ratio, cpu_ratio = exact_ms / approx_ms, exact_cpu_ms / approx_cpu_ms
    print(f"[{size}] joint training step, {spec['train_batch']} image(s) {spec['image_hw']} {spec['backbone']} "
          f"(medians of {repeats}, A B A B): wall approximate {approx_ms:.1f} ms, non-approximate {exact_ms:.1f} ms, "
          f"ratio {ratio:.3f} (floor {WARP_FLOOR}: {'ok' if ratio <= WARP_FLOOR else 'OVER'}); process CPU time "
          f"{approx_cpu_ms:.1f} / {exact_cpu_ms:.1f} ms, ratio {cpu_ratio:.3f} (steadier than wall on a shared machine)",
          flush=True)
    peaks = {}
    for scheme in WARP_SCHEMES:
        cmd = [sys.executable, __file__, "--warp-memory-child", scheme, "--size", size, "--threads",
               str(torch.get_num_threads()), "--device", str(DEVICE)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode != 0 or not lines:
            print(f"[{size}] memory of one {scheme} step: not measured ({result.stderr.strip()[-300:]})", flush=True)
            continue
        peaks[scheme] = json.loads(lines[-1])["peak_step_mib"]
    if peaks:
        what = "GPU memory allocated above the pre-step" if DEVICE.type == "cuda" else "RSS above the pre-step RSS"
        print(f"[{size}] peak memory of one training step ({what}, fresh process): "
              + ", ".join(f"{k} {v:.0f} MiB" for k, v in peaks.items()), flush=True)
    return {"approximate_ms": approx_ms, "nonapproximate_ms": exact_ms, "ratio": ratio, "cpu_ratio": cpu_ratio,
            **{f"{k}_peak_mib": v for k, v in peaks.items()}}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def warp_memory_child(size: str, scheme: str) -> None:
    """One training step in this (fresh) process; prints {"peak_step_mib": ...} as JSON: the peak
    RSS above the pre-step RSS, or on a GPU the peak allocated memory above the pre-step's."""
    spec = SIZES[size]
    images, targets = _on_device(*make_inputs(size, spec["train_batch"]))
    step = _joint_step(_warp_model(size, scheme), images, targets)
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
        before = torch.cuda.memory_allocated(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
        step()
        torch.cuda.synchronize(DEVICE)
        peak_mib = (torch.cuda.max_memory_allocated(DEVICE) - before) / 2**20
    else:
        with open("/proc/self/clear_refs", "w") as clear:  # "5": reset the peak RSS (VmHWM) to the current RSS
            clear.write("5")
        before = _proc_status_kib("VmRSS")
        step()
        peak_mib = (_proc_status_kib("VmHWM") - before) / 1024
    print(json.dumps({"scheme": scheme, "size": size, "peak_step_mib": peak_mib}), flush=True)


# -- breakdown (paper Table 5) ---------------------------------------------------------------


def _frcnn_stages(model: FasterRCNN, images, fast_layers: bool = True):
    """``fast_layers=False``: torch's own layers (frcnn.fast_paths.torch_layers_only)."""
    state = {}
    layers = contextlib.nullcontext if fast_layers else torch_layers_only

    def conv():
        with layers():
            state["features"], state["sizes"] = model.features(images)

    def proposal():
        state["proposals"], _, _ = model.rpn(state["features"], state["sizes"])

    def region():
        with layers():
            model.roi_head(state["features"], state["proposals"], state["sizes"])

    return {"conv": conv, "proposal": proposal, "region": region}


def _torchvision_stages(model: TVFasterRCNN, images):
    state = {}

    def conv():
        image_list, _ = model.transform(images)
        state["images"], state["features"] = image_list, {"0": model.backbone(image_list.tensors)}

    def proposal():
        state["proposals"], _ = model.rpn(state["images"], state["features"])

    def region():
        model.roi_heads(state["features"], state["proposals"], state["images"].image_sizes)

    return {"conv": conv, "proposal": proposal, "region": region}


def _time_stages(stage_fns: dict[str, dict[str, Callable[[], None]]], repeats: int) -> dict[str, dict[str, list[float]]]:
    """{model: {stage: fn}} -> {model: {stage and "total": seconds per repeat}}: the stages of a model
    in order each repeat, the models alternating, one warm-up repeat, under inference_mode."""
    times = {name: {stage: [] for stage in (*stages, "total")} for name, stages in stage_fns.items()}
    with torch.inference_mode():
        for i in range(1 + repeats):
            for name, stages in stage_fns.items():
                total = 0.0
                for stage, fn in stages.items():
                    start = time.perf_counter()
                    fn()
                    elapsed = time.perf_counter() - start
                    total += elapsed
                    if i:
                        times[name][stage].append(elapsed)
                if i:
                    times[name]["total"].append(total)
    return times


def bench_breakdown(size: str, repeats: int, heads: tuple[int | None, ...] = (None,)) -> dict[str, dict[str, float]]:
    """Per-stage medians; stages run in order each repeat (conv, proposal, region), models alternate."""
    results = {}
    images, _ = make_inputs(size, 1)
    spec = SIZES[size]
    ours = build_frcnn(size).eval()
    theirs = build_torchvision_twin(ours, size).eval()
    stage_fns = {"frcnn": _frcnn_stages(ours, images), PLAIN: _frcnn_stages(ours, images, fast_layers=False),
                 "torchvision": _torchvision_stages(theirs, images)}
    times = _time_stages(stage_fns, repeats)
    print(f"[{size}] breakdown (paper Table 5), 1 image {spec['image_hw']} {spec['backbone']}, "
          f"medians of {repeats}; '{PLAIN}': frcnn's fc layers on F.linear (MKL) instead of oneDNN, VGG's "
          "pools on F.max_pool2d (frcnn.fast_paths):",
          flush=True)
    print("    model                conv ms  proposal ms  region ms  total ms | proposal/conv region/conv total/conv "
          "proposal/total")
    for name, stage_times in times.items():
        med = {stage: _median_ms(v) for stage, v in stage_times.items()}
        print(f"    {name:<19} {med['conv']:8.1f} {med['proposal']:12.1f} {med['region']:10.1f} {med['total']:9.1f} |"
              f" {med['proposal'] / med['conv']:13.3f} {med['region'] / med['conv']:11.3f}"
              f" {med['total'] / med['conv']:10.3f} {med['proposal'] / med['total']:14.3f}", flush=True)
        results[name] = med
    return results


# -- truncated SVD of the fc layers (Fast R-CNN §3.1) -----------------------------------------

def bench_export(size: str, repeats: int) -> dict[str, float]:
    """One image's inference: eager frcnn, its TorchScript file (torch.jit.load) and its ONNX file
    (onnxruntime, as many intra-op threads as torch), alternating; ms and ratio to eager."""
    import tempfile
    from pathlib import Path

    from frcnn.export import export_detector, torchscript_quietly

    spec = SIZES[size]
    ours = build_frcnn(size).eval()
    image = make_inputs(size, 1)[0][0]
    height, width = spec["image_hw"]
    class_names = [f"class{i}" for i in range(1, spec["num_classes"] + 1)]
    scale = torch.tensor(1.0)
    with tempfile.TemporaryDirectory() as tmp:
        fns: dict[str, Callable[[], object]] = {"eager": lambda: ours([image])}
        ts_path = export_detector(ours, class_names, min(height, width), max(height, width), "torchscript",
                                  Path(tmp) / "model.pt")
        with torchscript_quietly():
            module = torch.jit.load(str(ts_path), map_location="cpu")
        fns["torchscript"] = lambda: module(image, scale)
        try:
            import onnxruntime
        except ImportError:
            print(f"[{size}] export: onnxruntime not installed (pip install -e '.[deploy]'): ONNX not timed")
        else:
            onnx_path = export_detector(ours, class_names, min(height, width), max(height, width), "onnx",
                                        Path(tmp) / "model.onnx")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            feed = {"image": image.numpy(), "image_scale": scale.numpy()}
            fns["onnxruntime"] = lambda: session.run(None, feed)
        with torch.inference_mode():
            times = alternate(fns, repeats)
    medians = {name: _median_ms(values) for name, values in times.items()}
    print(f"[{size}] exported inference, 1 image {spec['image_hw']} {spec['backbone']}: "
          + ", ".join(f"{name} {ms:.1f} ms ({ms / medians['eager']:.3f} x eager)" for name, ms in medians.items())
          + f"  (medians of {repeats})", flush=True)
    return medians


SVD_RANKS = {"paper": (1024, 256), "small": (64, 32)}  # paper: Fast R-CNN's fc6 / fc7 ranks for VGG-16


def bench_svd(size: str, repeats: int, ranks: tuple[int, ...]) -> dict[str, float]:
    """Region-wise time (RoI pooling + head + post-processing) and total inference of one model,
    plain and with its RoI head's fc layers compressed by truncated SVD, alternating; plus the
    number of detections of each (random weights: the mAP change needs trained weights,
    ``scripts/eval.py roi_head.svd_rank=...``)."""
    from frcnn.svd import compress_roi_head

    images, _ = make_inputs(size, 1)
    spec = SIZES[size]
    plain = build_frcnn(size).eval()
    compressed = copy.deepcopy(plain)
    lines = compress_roi_head(compressed, list(ranks))
    times = _time_stages({"plain": _frcnn_stages(plain, images), "svd": _frcnn_stages(compressed, images)}, repeats)
    with torch.inference_mode():
        plain_out, svd_out = plain(images)[0], compressed(images)[0]
    med = {name: {key: _median_ms(v) for key, v in stage_times.items()} for name, stage_times in times.items()}
    print(f"[{size}] truncated SVD {list(ranks)} (Fast R-CNN §3.1), 1 image {spec['image_hw']} {spec['backbone']}, "
          f"medians of {repeats}: " + "; ".join(lines), flush=True)
    print(f"    region-wise plain {med['plain']['region']:.1f} ms, svd {med['svd']['region']:.1f} ms "
          f"(x{med['svd']['region'] / med['plain']['region']:.3f}); total plain {med['plain']['total']:.1f} ms, "
          f"svd {med['svd']['total']:.1f} ms (x{med['svd']['total'] / med['plain']['total']:.3f}); detections "
          f"plain {len(plain_out['boxes'])}, svd {len(svd_out['boxes'])} (random weights)", flush=True)
    return {"region_plain_ms": med["plain"]["region"], "region_svd_ms": med["svd"]["region"],
            "total_plain_ms": med["plain"]["total"], "total_svd_ms": med["svd"]["total"]}


# -- NMS alone --------------------------------------------------------------------------------


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
        full, early = _median_ms(times["full"]), _median_ms(times["top_n"])
        print(f"[nms] {num} -> {top_n} ({what}): full NMS + cut {full:.1f} ms, nms_top_n {early:.1f} ms "
              f"({full / early:.0f}x)", flush=True)


# -- data pipeline ----------------------------------------------------------------------------


def bench_data(batches: int, train_step_ms: float | None) -> dict[str, float]:
    """Images/s of the built-in data through DetectionTransform + DataLoader (num_workers 0, as the
    default config), against the model's training throughput (images/s of the training step)."""
    from frcnn.data.datamodule import build_shapes_datamodule

    spec = SIZES["small"]
    dm = build_shapes_datamodule(num_train=256, num_val=8, batch_size=spec["train_batch"], num_workers=0)
    dm.setup()
    dataset = dm.train_dataset
    start = time.perf_counter()
    n = min(len(dataset), batches * spec["train_batch"])
    for i in range(n):
        dataset[i]
    per_item = (time.perf_counter() - start) / n
    loader = dm.train_dataloader()
    seen, start = 0, time.perf_counter()
    for b, (images, _) in enumerate(loader):
        seen += len(images)
        if b + 1 >= batches:
            break
    loader_ips = seen / (time.perf_counter() - start)
    result = {"dataset_images_per_s": 1.0 / per_item, "loader_images_per_s": loader_ips}
    print(f"[small] data: dataset + albumentations {1.0 / per_item:.0f} images/s, DataLoader (batch "
          f"{spec['train_batch']}, 0 workers) {loader_ips:.0f} images/s", flush=True)
    if train_step_ms is not None:
        model_ips = spec["train_batch"] / (train_step_ms / 1e3)
        result["model_train_images_per_s"] = model_ips
        print(f"[small] model training throughput {model_ips:.1f} images/s -> loading takes "
              f"{100 * model_ips / loader_ips:.1f}% of a training step's time", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("paper", "small", "all"), default="all")
    parser.add_argument("--mode", choices=("infer", "train", "breakdown", "data", "nms", "warp", "svd", "export", "all"),
                        default="all")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per model (default: per size)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
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
    args = parser.parse_args(argv)
    global BASELINE, DEVICE, AUTOCAST_BF16
    BASELINE = args.baseline
    DEVICE, AUTOCAST_BF16 = torch.device(args.device), args.bf16
    if DEVICE.type != "cpu" and args.mode not in ("infer", "train", "warp"):
        parser.error(f"--device {args.device}: only --mode infer, train or warp run on a GPU")
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
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
          f"{f' | GPU: {torch.cuda.get_device_name(DEVICE)}' if DEVICE.type == 'cuda' else ''}"
          f"{f' | head width {args.head_width}' if args.head_width else ''}"
          f"{' | frcnn BASELINE (before issue 6)' if BASELINE else ''}", flush=True)
    sizes = ("small", "paper") if args.size == "all" else (args.size,)
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
