"""--mode export: eager frcnn against its TorchScript file and its ONNX file in onnxruntime."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.common import SIZES, alternate, median_ms
from bench.models import build_frcnn, make_inputs


def bench_export(size: str, repeats: int) -> dict[str, float]:
    """One image's inference: eager frcnn, its TorchScript file (torch.jit.load) and its ONNX file
    (onnxruntime, as many intra-op threads as torch), alternating; ms and ratio to eager."""
    import tempfile
    from pathlib import Path

    from frcnn.inference.exportable import export_detector, torchscript_quietly

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
    medians = {name: median_ms(values) for name, values in times.items()}
    print(f"[{size}] exported inference, 1 image {spec['image_hw']} {spec['backbone']}: "
          + ", ".join(f"{name} {ms:.1f} ms ({ms / medians['eager']:.3f} x eager)" for name, ms in medians.items())
          + f"  (medians of {repeats})", flush=True)
    return medians
