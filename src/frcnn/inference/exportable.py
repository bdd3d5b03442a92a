"""The whole detector as one file (torch.export ``.pt2``, ONNX, or TorchScript): normalisation, shared
conv, RPN, proposal layer, RoI pooling, RoI head, per-class NMS; any image size.

What the exported graph expects and returns (also stored in the file, see :func:`export_metadata`):

* input ``image``: float32 [3, H, W], RGB in [0, 1] (uint8 / 255), ALREADY rescaled by the paper's
  test rule (§3.3): factor = scale / min(h, w), unless round(factor * max(h, w)) > max_size, then
  factor = max_size / max(h, w); new size = round(h * factor), round(w * factor); resized with area
  interpolation when shrinking, bilinear when enlarging (OpenCV ``INTER_AREA`` / ``INTER_LINEAR``).
  ``scale`` and ``max_size`` are the checkpoint's training values, written into the file.
  The resize stays outside the graph: the area resize training used has no faithful ONNX /
  TorchScript counterpart (a bilinear resize in the graph would shift every pixel of a shrunk image).
* outputs ``boxes`` float32 [D, 4] (x1, y1, x2, y2) in the INPUT's pixels (divide x by the applied
  width factor, y by the height factor, for the original image), ``scores`` float32 [D], ``labels``
  int64 [D] in 1..C (``class_names[label - 1]``), at most ``detections_per_image``, in the order of
  the eager model (decreasing score).

The graph follows the eager inference path op for op (:class:`ExportableDetector`). A ``.pt2`` file (a
``torch.export`` ExportedProgram, :mod:`frcnn.inference.torch_export`) runs with ``import torch,
torchvision; torch.export.load(path).module()`` (torchvision registers the nms / roi_pool / roi_align
kernels; frcnn is not needed), an ONNX file (torch's dynamo exporter, the same trace) in onnxruntime
(``pip install frcnn[deploy]``), a TorchScript file (deprecated by torch 2.10+, kept while torch ships
it) with ``torch.jit.load(path)``. Parity with eager frcnn: ``tests/test_model_export.py``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision  # noqa: F401  (registers torch.ops.torchvision: nms, roi_pool, roi_align)
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image, remove_small_boxes

from frcnn.modeling.anchors import grid_anchors
from frcnn.modeling.boxes import DEFAULT_MAX_LOG_SCALE
from frcnn.inference.torch_export import exported_program, load_program, onnx_model_bytes, save_program
from frcnn.modeling.faster_rcnn import FasterRCNN, UnsharedFasterRCNN

FORMATS = ("pt2", "onnx", "torchscript")
SUFFIXES = {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}  # run_exported tells the formats apart by them
ONNX_OPSET = 18  # >= 16: RoiAlign's half_pixel mode (roi_head.pool_type=align); 18: onnxscript's torchvision ops
METADATA_NAME = "frcnn.json"  # TorchScript extra file / ONNX metadata_props key


class ExportError(ValueError):
    """A detector that cannot be exported faithfully; the message says which setting and why."""


def decode_deltas(deltas: Tensor, reference_xyxy: Tensor, weights: list[float], max_log_scale: float,
                  num_boxes: int = 1) -> Tensor:
    """Paper eq. 2 inverted, as :func:`frcnn.modeling.boxes.decode_boxes` computes it (same operations in the
    same order, so the same floats), written for TorchScript.

    deltas [N, K*4] (K = ``num_boxes``, a constant of the graph: with N = 0 a -1 in a reshape is ambiguous,
    and onnxruntime refuses it), reference_xyxy [N, 4] -> boxes [N, K*4]."""
    num = deltas.shape[0]
    deltas = deltas.reshape(num, num_boxes, 4)  # [N, K, 4]
    widths = reference_xyxy[:, 2] - reference_xyxy[:, 0]
    heights = reference_xyxy[:, 3] - reference_xyxy[:, 1]
    ctr_x = (reference_xyxy[:, 0] + 0.5 * widths).unsqueeze(-1)  # [N, 1]
    ctr_y = (reference_xyxy[:, 1] + 0.5 * heights).unsqueeze(-1)
    widths, heights = widths.unsqueeze(-1), heights.unsqueeze(-1)
    dx = deltas[..., 0] / weights[0]
    dy = deltas[..., 1] / weights[1]
    dw = (deltas[..., 2] / weights[2]).clamp(max=max_log_scale)
    dh = (deltas[..., 3] / weights[3]).clamp(max=max_log_scale)
    centre_x = dx * widths + ctr_x
    centre_y = dy * heights + ctr_y
    half_w = 0.5 * torch.exp(dw) * widths
    half_h = 0.5 * torch.exp(dh) * heights
    boxes = torch.stack((centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h), dim=-1)
    return boxes.reshape(num, num_boxes * 4)


def per_class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float) -> Tensor:
    """NMS within each class (Fast R-CNN's test rule): boxes of class c are shifted by
    c * (max coordinate + 1), so boxes of different classes never overlap, and one NMS resolves
    every class (torchvision's ``batched_nms`` coordinate trick; the shift moves coordinates by
    ~1e-4 px of float rounding, which only matters for an IoU within ~1e-6 of the threshold).
    boxes [N, 4], scores [N], labels [N] -> kept indices [K], decreasing score."""
    # max over the boxes and a 0 (boxes are clipped to the image, so >= 0): defined for no boxes too, without a
    # branch on their number (torch.export cannot branch on a data-dependent size)
    max_coordinate = torch.cat((boxes.reshape(-1), boxes.new_zeros(1))).max()
    offsets = labels.to(boxes.dtype) * (max_coordinate + 1.0)
    return torch.ops.torchvision.nms(boxes + offsets[:, None], scores, iou_thresh)


class ExportableDetector(nn.Module):
    """The inference path of :class:`frcnn.modeling.faster_rcnn.FasterRCNN` (or the unshared pair) for ONE image,
    in operations TorchScript compiles and the ONNX exporter converts, shapes read from tensors.

    image float32 [3, H, W] in [0, 1] at network scale -> (boxes [D, 4], scores [D], labels [D]).
    ``channels_last=False`` keeps the conv input NCHW even where the eager model runs channels-last
    (the ONNX graph: memory formats are the runtime's business there).
    """

    def __init__(self, model: FasterRCNN | UnsharedFasterRCNN, channels_last: bool = True):
        super().__init__()
        rpn_net = model.rpn_net if isinstance(model, UnsharedFasterRCNN) else model
        det_net = model.det_net if isinstance(model, UnsharedFasterRCNN) else model
        check_exportable(rpn_net, det_net)
        self.unshared = isinstance(model, UnsharedFasterRCNN)
        self.rpn_body = rpn_net.backbone
        self.det_body = det_net.backbone if self.unshared else nn.Identity()  # shared: the RPN's features
        self.rpn_head = rpn_net.rpn.head
        self.roi_features = det_net.roi_head.head  # fc6/fc7 (or layer4) per RoI
        self.predictor = det_net.roi_head.predictor
        self.register_buffer("pixel_mean", rpn_net.pixel_mean[0].clone())  # [3, 1, 1]
        self.register_buffer("pixel_std", rpn_net.pixel_std[0].clone())
        self.register_buffer("reference_anchors", rpn_net.rpn.anchor_generator.reference.clone())  # [k, 4]
        self.stride = int(rpn_net.size_divisible)
        self.channels_last = bool(rpn_net.channels_last) and channels_last  # as eager inference (TorchScript)
        settings = rpn_net.rpn.test_proposals
        self.pre_nms_top_n = int(settings.pre_nms_top_n)
        self.post_nms_top_n = int(settings.post_nms_top_n)
        self.proposal_nms_thresh = float(settings.nms_thresh)
        self.min_size_px = float(settings.min_size_px)
        self.use_regression = bool(settings.use_regression)
        self.use_nms = bool(settings.use_nms)
        roi_head = det_net.roi_head
        self.align = roi_head.pool_type == "align"
        self.roi_output_size = int(roi_head.roi_output_size)
        self.spatial_scale = float(roi_head.spatial_scale)
        self.box_weights = [float(w) for w in roi_head.box_weights]
        # per-class x std + mean of the predicted deltas (roi_head.target_normalization=empirical,
        # RoIHead.raw_deltas); fixed normalisation: x 1 + 0, the same floats
        empirical = roi_head.target_normalization == "empirical"
        num_rows = int(roi_head.num_classes) + 1
        self.register_buffer("delta_stds", roi_head.target_stds.clone() if empirical else torch.ones(num_rows, 4))
        self.register_buffer("delta_means", roi_head.target_means.clone() if empirical else torch.zeros(num_rows, 4))
        self.num_classes = int(roi_head.num_classes)
        self.score_thresh = float(roi_head.score_thresh)
        self.detection_nms_thresh = float(roi_head.nms_thresh)
        self.detections_per_image = int(roi_head.detections_per_image)
        self.max_log_scale = float(DEFAULT_MAX_LOG_SCALE)

    def padded_batch(self, image: Tensor) -> Tensor:
        """ImageNet normalisation, then zero padding bottom/right to a multiple of the stride
        (:func:`frcnn.modeling.faster_rcnn.batch_images`): [3, H, W] -> [1, 3, H', W']."""
        height, width = image.shape[-2], image.shape[-1]
        normalised = (image - self.pixel_mean) / self.pixel_std
        pad_h = (self.stride - height % self.stride) % self.stride
        pad_w = (self.stride - width % self.stride) % self.stride
        return F.pad(normalised, [0, pad_w, 0, pad_h]).unsqueeze(0)

    def proposals(self, features: Tensor, height: int, width: int, min_size: Tensor) -> Tensor:
        """RPN + proposal layer at the test settings (§3.1, §3.3), in the authors' order as
        :meth:`frcnn.modeling.rpn.RegionProposalNetwork.propose`: decode every anchor, clip, drop boxes
        under ``min_size`` network-input px (the minimum size in original-image px x the resize
        factor), top pre-NMS N by objectness, NMS, top post-NMS N. Only anchors centred on the image padded
        to a multiple of the stride compete (:func:`frcnn.modeling.anchors.centred_on_own_area`: all of them
        where the feature map has ceil(H / stride) x ceil(W / stride) positions, as the eager model's). -> [P, 4]."""
        logits, deltas = self.rpn_head(features)  # [1, A], [1, A, 4]
        anchors = grid_anchors(self.reference_anchors, (features.shape[-2], features.shape[-1]), self.stride)
        anchor_deltas = deltas[0] if self.use_regression else torch.zeros_like(anchors)
        boxes = decode_deltas(anchor_deltas, anchors, [1.0, 1.0, 1.0, 1.0], self.max_log_scale)  # [A, 4]
        boxes = clip_boxes_to_image(boxes, (height, width))
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        own_height = (height + self.stride - 1) // self.stride * self.stride
        own_width = (width + self.stride - 1) // self.stride * self.stride
        centres_x = (anchors[:, 0] + anchors[:, 2]) / 2
        centres_y = (anchors[:, 1] + anchors[:, 3]) / 2
        on_own_area = (centres_x < own_width) & (centres_y < own_height)
        big_enough = (widths >= min_size) & (heights >= min_size)  # remove_small_boxes' rule
        keep = torch.where(big_enough & on_own_area)[0]
        boxes, logits = boxes[keep], logits[0][keep]
        num_big_enough = logits.shape[0]
        top_n = num_big_enough if self.pre_nms_top_n <= 0 else min(self.pre_nms_top_n, num_big_enough)
        top_logits, top_idx = logits.topk(top_n)  # [K]
        boxes, scores = boxes[top_idx], torch.sigmoid(top_logits)
        if self.use_nms:
            keep = torch.ops.torchvision.nms(boxes, scores, self.proposal_nms_thresh)[: self.post_nms_top_n]
        else:
            keep = torch.arange(boxes.shape[0], device=boxes.device)[: self.post_nms_top_n]
        return boxes[keep]

    def detections(self, features: Tensor, proposals: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
        """RoI pooling, the RoI head, per-class boxes, score threshold, per-class NMS, top D
        (Fast R-CNN §2, test: :meth:`frcnn.modeling.roi_head.RoIHead.postprocess`)."""
        rois = torch.cat((torch.zeros_like(proposals[:, :1]), proposals), dim=1)  # [P, 5] (image 0, box)
        size = self.roi_output_size  # torchvision's kernels themselves: their Python wrappers do not export
        if self.align:  # roi_head.pool: sampling_ratio 2, aligned
            pooled = torch.ops.torchvision.roi_align(features, rois, self.spatial_scale, size, size, 2, True)
        else:
            pooled = torch.ops.torchvision.roi_pool(features, rois, self.spatial_scale, size, size)[0]
        class_logits, box_deltas = self.predictor(self.roi_features(pooled))  # [P, C+1], [P, (C+1)*4]
        probs = F.softmax(class_logits, dim=-1)
        num, num_boxes = proposals.shape[0], self.num_classes + 1  # constant K: no -1 in a reshape of P = 0 rows
        box_deltas = (box_deltas.reshape(num, num_boxes, 4) * self.delta_stds + self.delta_means).reshape(num, num_boxes * 4)
        boxes = decode_deltas(box_deltas, proposals, self.box_weights, self.max_log_scale, num_boxes)
        boxes = clip_boxes_to_image(boxes.reshape(num, num_boxes, 4), (height, width))[:, 1:]  # [P, C, 4]
        scores = probs[:, 1:]  # [P, C]
        labels = torch.arange(1, self.num_classes + 1, device=scores.device).unsqueeze(0).expand(num, -1)
        boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = per_class_nms(boxes, scores, labels, self.detection_nms_thresh)[: self.detections_per_image]
        return boxes[keep], scores[keep], labels[keep]

    def forward(self, image: Tensor, image_scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """image: float32 [3, H, W] in [0, 1] at network scale; image_scale: float32 [] the resize
        factor that made it (network px per original px; 1.0 for an image that was not resized):
        the minimum proposal size is in original-image pixels (the authors' proposal layer)."""
        height, width = image.shape[-2], image.shape[-1]
        batch = self.padded_batch(image)
        if self.channels_last:  # oneDNN's NHWC conv, as eager inference (TorchScript; off for ONNX)
            batch = batch.contiguous(memory_format=torch.channels_last)
        rpn_features = self.rpn_body(batch)
        det_features = self.det_body(batch) if self.unshared else rpn_features
        proposals = self.proposals(rpn_features, height, width, self.min_size_px * image_scale)
        return self.detections(det_features, proposals, height, width)


def check_exportable(rpn_net: FasterRCNN, det_net: FasterRCNN | None = None) -> None:
    """Settings the graph cannot reproduce are refused, naming the key and why: the proposal
    ranking of the Table 2 ablation, and the RoI warping of non-approximate joint training (the
    graph pools with torchvision's roi_pool / roi_align kernels; every other test-time setting of
    the paper is in the graph)."""
    settings = rpn_net.rpn.test_proposals
    if settings.ranking != "cls":
        raise ExportError(f"rpn.test.ranking={settings.ranking!r} (the Table 2 ablation that ranks proposals "
                          "by a random permutation) is not exportable: an exported detector must be deterministic; "
                          "export a detector with rpn.test.ranking=cls")
    if (det_net or rpn_net).roi_head.warp_boxes:
        raise ExportError("roi_head.warp_boxes=true (RoI warping: a detector trained with recipe=joint "
                          "recipe.approximate=false) is not exportable: the exported graph pools with RoI max pooling "
                          "or RoIAlign, which would give other detections than the model; run it with "
                          "scripts/detect.py / scripts/eval.py instead")


def export_metadata(model, class_names: list[str], scale: int, max_size: int, export_format: str) -> dict[str, Any]:
    """What a user of the file needs besides the graph: classes, the input rule, the output layout."""
    return {
        "format": f"frcnn-exported-detector-v1/{export_format}",
        "class_names": list(class_names),
        "unshared": isinstance(model, UnsharedFasterRCNN),
        "input": {"name": "image", "layout": "float32 [3, H, W], RGB in [0, 1]",
                  "resize": "before the graph: paper rule (shorter side = scale, longer side <= max_size), "
                            "area interpolation when shrinking, bilinear when enlarging",
                  "scale": int(scale), "max_size": int(max_size),
                  "image_scale": "float32 [] the resize factor (network px per original px, 1.0 if not "
                                 "resized): the minimum proposal size is in original-image pixels"},
        "outputs": {"boxes": "float32 [D, 4] x1 y1 x2 y2 in input pixels", "scores": "float32 [D]",
                    "labels": "int64 [D] in 1..C: class_names[label - 1]"},
    }


@contextlib.contextmanager
def torchscript_quietly():
    """Recent torch warns on every torch.jit.script / save / load that TorchScript is deprecated in
    favour of torch.export; ``--format torchscript`` is kept on purpose while torch ships it (the README
    marks it deprecated and points to ``--format pt2``), so the warning is not repeated to its users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.(script|save|load)` is deprecated",
                                category=FutureWarning)
        yield


def scripted(model, channels_last: bool = True) -> torch.jit.ScriptModule:
    """The detector as a TorchScript module (eval mode, CPU); ``channels_last=False``: the conv input
    stays NCHW (the ONNX graph: memory formats are the runtime's business there)."""
    with torchscript_quietly():
        return torch.jit.script(ExportableDetector(model.cpu().eval(), channels_last).eval())


def export_torchscript(model, class_names: list[str], scale: int, max_size: int, out: str | Path) -> Path:
    """Write a TorchScript file (metadata in its extra file ``frcnn.json``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = export_metadata(model, class_names, scale, max_size, "torchscript")
    module = scripted(model)
    with torchscript_quietly():
        torch.jit.save(module, str(out), _extra_files={METADATA_NAME: json.dumps(metadata)})
    return out


def export_onnx(model, class_names: list[str], scale: int, max_size: int, out: str | Path) -> Path:
    """Write an ONNX file (opset 18, dynamic height / width / number of detections; metadata in
    ``metadata_props['frcnn.json']``) through torch's dynamo exporter (``torch.onnx.export(dynamo=True)``,
    :func:`frcnn.inference.torch_export.onnx_model_bytes`), which maps torchvision's nms / roi_pool /
    roi_align to NonMaxSuppression / MaxRoiPool / RoiAlign."""
    import onnx  # the deploy extra

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # one write of the (VGG-16: ~550 MB) file, after the metadata is added
    graph = onnx.load_model_from_string(onnx_model_bytes(ExportableDetector(model.cpu().eval(), channels_last=False),
                                                         ONNX_OPSET))
    for output, dims in zip(graph.graph.output, (["detections", 4], ["detections"], ["detections"])):
        shape = output.type.tensor_type.shape  # the exporter names the data-dependent count by its formula
        del shape.dim[:]
        for dim in dims:
            entry = shape.dim.add()
            if isinstance(dim, str):
                entry.dim_param = dim
            else:
                entry.dim_value = dim
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_NAME, json.dumps(export_metadata(model, class_names, scale, max_size, "onnx"))
    onnx.save(graph, str(out))
    return out


def export_pt2(model, class_names: list[str], scale: int, max_size: int, out: str | Path) -> Path:
    """Write a ``torch.export`` ExportedProgram (``.pt2``; dynamic height / width; metadata in its extra
    file ``frcnn.json``, read back by ``torch.export.load(path, extra_files={'frcnn.json': ''})``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    program = exported_program(ExportableDetector(model.cpu().eval()))
    metadata = export_metadata(model, class_names, scale, max_size, "pt2")
    return save_program(program, out, {METADATA_NAME: json.dumps(metadata)})


def export_detector(model, class_names: list[str], scale: int, max_size: int, export_format: str,
                    out: str | Path) -> Path:
    """Dispatch on ``export_format`` ('pt2' | 'onnx' | 'torchscript')."""
    if export_format == "pt2":
        return export_pt2(model, class_names, scale, max_size, out)
    if export_format == "torchscript":
        return export_torchscript(model, class_names, scale, max_size, out)
    if export_format == "onnx":
        return export_onnx(model, class_names, scale, max_size, out)
    raise ValueError(f"--format {export_format!r}; allowed: {list(FORMATS)}")


# ----------------------------------------------------------------------------- running and checking a file
def run_exported(path: str | Path, image: Tensor, image_scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Run an exported file (by its suffix: .pt2 by torch.export.load, .onnx in onnxruntime, else TorchScript)
    on one network-scale image [3, H, W] made by resizing with ``image_scale`` -> (boxes [D, 4], scores [D],
    labels [D]) as CPU tensors."""
    scale = torch.tensor(float(image_scale), dtype=torch.float32)
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"image": image.detach().cpu().float().numpy(), "image_scale": scale.numpy()})
        return tuple(torch.from_numpy(value) for value in outputs)
    if path.suffix == ".pt2":
        program = _loaded_program(str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)
        with torch.inference_mode():
            return tuple(value.cpu() for value in program(image.detach().cpu().float(), scale))
    with torchscript_quietly():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return tuple(value.cpu() for value in module(image.detach().cpu().float(), scale))


@functools.lru_cache(maxsize=1)
def _loaded_program(path: str, mtime_ns: int, size: int) -> nn.Module:
    """A .pt2 file loaded once for a run of images (loading takes seconds: the program is deserialised and
    rebuilt as a module); a rewritten file (other time or size) is loaded again."""
    return load_program(path)


def parity(model, exported: tuple[Tensor, Tensor, Tensor], image: Tensor, score_tol: float = 1e-4,
           eager: dict[str, Tensor] | None = None, image_scale: float = 1.0) -> dict[str, float | int]:
    """Eager frcnn against an exported file's outputs on the same network-scale image.

    Each exported detection is matched to the closest (largest coordinate difference) unmatched eager
    detection of the same label whose score is within ``score_tol`` (detections whose scores tie to
    float rounding may come out in either order), or, when none is, to the closest of the same label
    whatever its score, so a score off by more than ``score_tol`` shows in ``max_score_diff``.
    -> detection counts, ``matched`` (how many found a partner), the largest box (px) and score
    differences of the matched pairs (:func:`parity_problem` judges them). ``eager``: the model's
    output on ``image`` when the caller has it already."""
    if eager is None:
        with torch.inference_mode():
            eager = model.cpu().eval()([image.detach().cpu().float()], image_scales=[image_scale])[0]
    boxes, scores, labels = (value.detach() for value in exported)
    free = torch.ones(eager["scores"].numel(), dtype=torch.bool)
    matched, box_diff, score_diff = 0, 0.0, 0.0
    for box, score, label in zip(boxes, scores, labels.to(eager["labels"].dtype)):
        score_gap = (eager["scores"] - score).abs()
        box_gap = (eager["boxes"] - box).abs().amax(dim=1)
        candidates = free & (eager["labels"] == label)
        if not candidates.any():
            continue
        if (candidates & (score_gap <= score_tol)).any():
            candidates = candidates & (score_gap <= score_tol)
        best = int(torch.where(candidates, box_gap, torch.full_like(box_gap, float("inf"))).argmin())
        free[best] = False
        matched += 1
        box_diff, score_diff = max(box_diff, float(box_gap[best])), max(score_diff, float(score_gap[best]))
    return {"eager": int(eager["scores"].numel()), "exported": int(scores.numel()), "matched": matched,
            "max_box_diff_px": box_diff, "max_score_diff": score_diff}


PARITY_BOX_TOLERANCE_PX, PARITY_SCORE_TOLERANCE = 0.5, 1e-4  # issue 14's rule (tests/test_model_export.py)


def parity_problem(report: dict[str, float | int], box_tol_px: float = PARITY_BOX_TOLERANCE_PX,
                   score_tol: float = PARITY_SCORE_TOLERANCE) -> str | None:
    """What breaks the parity rule in a :func:`parity` report (the same detections, each box within
    ``box_tol_px`` and score within ``score_tol`` of eager frcnn's), or None when it holds."""
    problems = []
    if not report["eager"] == report["exported"] == report["matched"]:
        problems.append(f"{report['exported']} exported detections against {report['eager']} eager ones, "
                        f"{report['matched']} matched by label")
    if report["max_box_diff_px"] > box_tol_px:
        problems.append(f"boxes differ by up to {report['max_box_diff_px']:.3g} px (tolerance {box_tol_px} px)")
    if report["max_score_diff"] > score_tol:
        problems.append(f"scores differ by up to {report['max_score_diff']:.3g} (tolerance {score_tol})")
    return "; ".join(problems) or None
