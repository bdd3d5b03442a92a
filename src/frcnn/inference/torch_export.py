"""The exported graph through ``torch.export`` (torch's path since TorchScript's deprecation): a ``.pt2``
ExportedProgram, and the ONNX file of torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``).

Both trace :class:`frcnn.inference.exportable.ExportableDetector` once (non-strict ``torch.export``) with
the image's height and width ``Dim.DYNAMIC``: torch.export keeps them symbolic without refusing the export
over conditions on them it cannot prove (a named ``Dim`` with a range is refused for a timm net, whose TF
"same" padding puts ceil / max formulas of the size in the graph); the sizes that depend on the data
(proposals that survive the minimum size, NMS, the score threshold) stay symbolic too, so the graph takes
any image and returns any number of detections, none included (``tests/test_model_export.py``: parity on
several sizes; measured on the README's Lite0 tree detector too). A ``.pt2`` file runs with
``torch.export.load(path).module()(image, image_scale)`` (torch and torchvision, no frcnn).

torchvision 0.29's shape function for ``torchvision::nms`` says it keeps at least 2 boxes (it calls the
deprecated ``create_unbacked_symint``, whose minimum is 2), which the trace turns into a runtime assertion:
the program would stop on an image where NMS keeps 0 or 1 box. :func:`nms_keeps_any_number` gives it
the right minimum, 0, while tracing.

onnxscript 0.7's translation of ``torchvision::roi_pool`` has the Python wrapper's signature
(``output_size``), not the operator's (``spatial_scale, pooled_height, pooled_width`` -> ``(output,
argmax)``) and fails; :func:`onnx_translations` maps the operator to ONNX ``MaxRoiPool`` (the same op the
TorchScript-based exporter emits). nms and roi_align use onnxscript's own translations.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

def trace_inputs(example_hw: tuple[int, int] = (128, 160)) -> tuple[tuple, dict]:
    """(example (image [3, H, W], image_scale []), dynamic_shapes: H and W dynamic)."""
    height = width = torch.export.Dim.DYNAMIC
    example = (torch.rand(3, *example_hw, generator=torch.Generator().manual_seed(0)), torch.tensor(1.0))
    return example, {"image": {1: height, 2: width}, "image_scale": None}


@contextlib.contextmanager
def nms_keeps_any_number():
    """While tracing: ``torchvision::nms``'s fake kernel keeps any number of boxes from 0 up (module docstring),
    in a library fragment of our own, removed afterwards (torchvision's own registration is untouched)."""
    library = torch.library.Library("torchvision", "FRAGMENT")

    def fake_nms(boxes, scores, iou_threshold):
        kept = torch.library.get_ctx().new_dynamic_size()  # min 0
        torch._check(kept <= boxes.shape[0])
        return boxes.new_empty(kept, dtype=torch.long)

    torch.library.register_fake("torchvision::nms", fake_nms, lib=library)
    try:
        yield
    finally:
        library._destroy()  # removes the registration: torchvision's kernel is the fake one again


def exported_program(module: nn.Module) -> torch.export.ExportedProgram:
    """``module(image [3, H, W], image_scale [])`` traced by ``torch.export`` (non-strict) with H and W dynamic."""
    example, dynamic_shapes = trace_inputs()
    with torch.no_grad(), nms_keeps_any_number():
        return torch.export.export(module.eval(), example, dynamic_shapes=dynamic_shapes, strict=False)


def save_program(program: torch.export.ExportedProgram, out: Path, extra_files: dict[str, str]) -> Path:
    torch.export.save(program, str(out), extra_files=extra_files)
    return out


def load_program(path: str | Path, extra_files: dict[str, str] | None = None) -> nn.Module:
    """A ``.pt2`` file -> a callable module (``torch.export.load(path).module()``); ``extra_files``
    (name -> '') is filled with the stored files' contents."""
    return torch.export.load(str(path), extra_files=extra_files).module()


def onnx_translations() -> dict:
    """Custom ONNX translations for the dynamo exporter (module docstring: roi_pool)."""
    from onnxscript import opset18 as op
    from onnxscript.onnx_types import INT64

    def roi_pool(features, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        """torchvision::roi_pool(input, rois [R, 5], spatial_scale, pooled_h, pooled_w) -> (output, argmax);
        the graph uses only the output (argmax: a placeholder of the right shape)."""
        pooled = op.MaxRoiPool(features, rois, pooled_shape=(pooled_height, pooled_width),
                               spatial_scale=spatial_scale)
        return pooled, op.Cast(pooled, to=INT64.dtype)

    return {torch.ops.torchvision.roi_pool.default: roi_pool}


def onnx_model_bytes(module: nn.Module, opset: int) -> bytes:
    """The ONNX file of torch's dynamo exporter for ``module`` (the trace of :func:`exported_program`), serialized."""
    import io

    example, dynamic_shapes = trace_inputs()
    with torch.no_grad(), nms_keeps_any_number():
        program = torch.onnx.export(
            module.eval(), example, dynamo=True, opset_version=opset, verbose=False,
            input_names=["image", "image_scale"], output_names=["boxes", "scores", "labels"],
            dynamic_shapes=dynamic_shapes, custom_translation_table=onnx_translations())
    buffer = io.BytesIO()
    program.save(buffer)
    return buffer.getvalue()
