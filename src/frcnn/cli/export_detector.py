"""`python scripts/export.py MODEL.pt --format pt2|onnx|torchscript --out FILE`: the whole detector as one file.

The file holds normalisation, shared conv, RPN, proposal layer, RoI head and per-class NMS for images
of any size; it takes ONE float32 [3, H, W] RGB image in [0, 1] already rescaled by the paper's rule
to the scale written into the file, and returns boxes (in that image's pixels), scores and labels
(:mod:`frcnn.inference.exportable` says exactly what it expects). ``pt2`` (a torch.export ExportedProgram) runs
with ``torch.export.load(path).module()`` (torch and torchvision, no frcnn); ONNX (torch's dynamo exporter) in
onnxruntime (``pip install -e ".[deploy]"``); TorchScript (deprecated by torch, kept while torch ships it) with
``torch.jit.load``. After writing, the
file is run once next to eager frcnn on a random image and the differences are printed; beyond the
parity rule (same detections, boxes within 0.5 px, scores within 1e-4) the file is removed and the
command exits with status 1 naming the difference (``--no-verify`` skips the check and keeps the file).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from frcnn.checkpoint.safe_load import UnreadableFileError
from frcnn.inference.detector_file import PAPER_TEST_SCALE, DetectorFileError, checkpoint_input_scale, load_detector
from frcnn.inference.exportable import (
    FORMATS,
    SUFFIXES,
    ExportError,
    export_detector,
    parity,
    parity_problem,
    run_exported,
)
from frcnn.inference.svd import compress_roi_head

PARITY_FAILED_EXIT_STATUS = 1


def export_file(checkpoint: str | Path, export_format: str, out: str | Path, scale: int | None = None,
                max_size: int | None = None, verify: bool = True, svd_rank: Sequence[int] | None = None) -> dict:
    """Load (restricted reader), export, optionally run the file beside eager frcnn.
    -> {"out", "scale", "max_size", "parity" (when verified)}."""
    out = Path(out)
    if export_format not in FORMATS:
        raise ValueError(f"--format {export_format!r}; allowed: {list(FORMATS)}")
    if out.suffix != SUFFIXES[export_format]:
        raise ValueError(f"--out {out}: a {export_format} file is named *{SUFFIXES[export_format]} "
                         "(scripts and run_exported tell the formats apart by it)")
    if export_format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401  (torch's dynamo exporter)
        except ImportError as exc:
            raise ExportError(f"--format onnx needs the deploy extra ({exc.name} is missing): "
                              "pip install -e \".[deploy]\"") from None
    model, class_names = load_detector(checkpoint)
    if svd_rank:  # the file holds the compressed head (frcnn.inference.svd, Fast R-CNN §3.1)
        for line in compress_roi_head(model, svd_rank):
            print(f"truncated SVD: {line}")
    trained_scale, trained_max = checkpoint_input_scale(checkpoint) or PAPER_TEST_SCALE
    scale, max_size = int(scale or trained_scale), int(max_size or trained_max)
    try:
        export_detector(model, class_names, scale, max_size, export_format, out)
    except RuntimeError as exc:  # torch.export / the ONNX exporter: a page of trace; the first line says what
        out.unlink(missing_ok=True)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"--format {export_format}: {type(exc).__name__} while exporting {checkpoint}: {first_line} "
                          "(run frcnn.inference.exportable.export_detector in Python for the whole message)") from exc
    summary = {"out": str(out), "scale": scale, "max_size": max_size}
    if verify:
        generator = torch.Generator().manual_seed(0)
        image = torch.rand(3, scale, scale * 4 // 3 + 5, generator=generator)  # not a multiple of the stride
        summary["parity"] = parity(model, run_exported(out, image), image)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("checkpoint", help="detector file written by training (<run dir>/final/model.pt)")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="export_format")
    parser.add_argument("--out", required=True,
                        help="file to write (*.pt2 for pt2, *.onnx for onnx, *.pt for torchscript)")
    parser.add_argument("--scale", type=int, default=None,
                        help="shorter side recorded in the file (default: the checkpoint's training scale, else 600)")
    parser.add_argument("--max-size", type=int, default=None, help="longer-side cap recorded (default: the checkpoint's, else 1000)")
    parser.add_argument("--svd-rank", type=int, nargs="+", default=None, metavar="RANK",
                        help="truncated SVD of the RoI head's fc layers, one rank per layer (0 keeps one)")
    parser.add_argument("--no-verify", action="store_true", help="do not run the file beside eager frcnn")
    args = parser.parse_args(argv)
    try:
        summary = export_file(args.checkpoint, args.export_format, args.out, args.scale, args.max_size,
                              verify=not args.no_verify, svd_rank=args.svd_rank)
    except (FileNotFoundError, UnreadableFileError, DetectorFileError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {summary['out']} ({args.export_format}; input: [3, H, W] in [0, 1] rescaled to shorter side "
          f"{summary['scale']}, longer side <= {summary['max_size']})")
    if "parity" in summary:
        print("check on a random image beside eager frcnn: "
              + ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                          for key, value in summary["parity"].items()))
        problem = parity_problem(summary["parity"])
        if problem:
            Path(summary["out"]).unlink(missing_ok=True)
            print(f"error: the exported file does not reproduce eager frcnn: {problem}; removed {summary['out']} "
                  "(--no-verify keeps an unchecked file)", file=sys.stderr)
            return PARITY_FAILED_EXIT_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
