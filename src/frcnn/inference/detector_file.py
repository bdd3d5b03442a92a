"""Atomic writes and the unified detector file (final/model.pt): written by :func:`save_detector`,
read back by :func:`load_detector` without unpickling anything but tensors and plain values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from frcnn.checkpoint.safe_load import UnsafeFileError, read_torch_file
from frcnn.checkpoint.skip_init import weights_left_unfilled
from frcnn.modeling.backbone import WEIGHTS_FROM_DETECTOR
from frcnn.modeling.build import build_model
from frcnn.modeling.faster_rcnn import UnsharedFasterRCNN
from frcnn.utils.atomic_io import atomic_torch_save, atomic_write_json, atomic_write_text  # noqa: F401 (re-exported)

DETECTOR_FORMAT = "frcnn-detector-v1"
CONVERT_HINT = ("if it is a detector file written by an older frcnn and you trust its source, convert it with: "
                "python scripts/convert_detector.py {path} <new file> --trust-source")


class DetectorFileError(ValueError):
    """A readable file that is not an frcnn detector file (another format, missing entries)."""


def save_detector(model, model_cfg: dict, class_names: list[str], path: str | Path) -> None:
    """One file holding everything needed to rebuild and run the detector (shared conv, or
    the "unshared" pair of RPN and detector networks)."""
    model_cfg = json.loads(json.dumps(model_cfg))  # plain values only: the file must pass the restricted reader
    atomic_torch_save(
        {"format": DETECTOR_FORMAT, "model_cfg": model_cfg, "class_names": [str(n) for n in class_names],
         "unshared": isinstance(model, UnsharedFasterRCNN), "state_dict": model.state_dict()},
        path,
    )


def _detector_payload_problem(payload: Any) -> str | None:
    """What is wrong with a loaded detector file's payload, or None if it has the shape save_detector writes."""
    if not isinstance(payload, dict):
        return f"it holds a {type(payload).__name__}, not an frcnn detector (a dict with format {DETECTOR_FORMAT!r})"
    fmt = payload.get("format")
    if fmt is None:
        if "pytorch-lightning_version" in payload or "global_step" in payload:
            return ("it is a Lightning training checkpoint, not a detector file: the detector of a run is "
                    "<run dir>/final/model.pt")
        return f"it is not an frcnn detector file (no 'format' entry; {DETECTOR_FORMAT!r} expected)"
    if fmt != DETECTOR_FORMAT:
        newer = isinstance(fmt, str) and fmt.startswith("frcnn-detector-v")
        return (f"its format is {fmt!r}, this frcnn reads {DETECTOR_FORMAT!r}"
                + ("; it was written by a newer frcnn: upgrade frcnn to load it" if newer else ""))
    model_cfg = payload.get("model_cfg")
    if not isinstance(model_cfg, dict) or not all(isinstance(model_cfg.get(k), dict)
                                                 for k in ("backbone", "rpn", "roi_head")):
        return "its 'model_cfg' entry is missing or lacks the backbone / rpn / roi_head sections"
    names = payload.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "its 'class_names' entry is not a non-empty list of strings"
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        return "its 'state_dict' entry is not a mapping of parameter names to tensors"
    return None


def read_detector_file(path: str | Path) -> dict:
    """The checked payload of a detector file (no code is unpickled: :func:`frcnn.checkpoint.safe_load.read_torch_file`).

    Raises FileNotFoundError, or a ValueError naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        payload = read_torch_file(path, "detector file")
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{exc}; {CONVERT_HINT.format(path=path)}") from None
    problem = _detector_payload_problem(payload)
    if problem is not None:
        raise DetectorFileError(f"{path}: not an frcnn detector file: {problem}")
    return payload


def load_detector(path: str | Path, map_location: str = "cpu"):
    """Rebuild a detector saved by :func:`save_detector` -> (model in eval mode, class names).

    The file is data, never code: it is read with the restricted unpickler, checked entry by entry,
    and its weights must fit the architecture its ``model_cfg`` names exactly.
    """
    path = Path(path)
    payload = read_detector_file(path)
    cfg = dict(payload["model_cfg"])
    cfg["backbone"] = {**cfg["backbone"], "weights": WEIGHTS_FROM_DETECTOR}  # weights come from the state dict
    num_classes = len(payload["class_names"])
    try:
        with weights_left_unfilled():  # every weight comes from the file (strict load below)
            if payload.get("unshared"):
                model = UnsharedFasterRCNN(build_model(cfg, num_classes), build_model(cfg, num_classes))
            else:
                model = build_model(cfg, num_classes)
    except (KeyError, TypeError, ValueError) as exc:
        raise DetectorFileError(f"{path}: its model_cfg does not describe a model frcnn can build "
                                f"({type(exc).__name__}: {exc})") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DetectorFileError(f"{path}: weights do not fit the architecture in its model_cfg: {first} "
                                f"({_state_dict_mismatch(model.state_dict(), payload['state_dict'])})") from None
    return model.to(map_location).eval(), payload["class_names"]


def _state_dict_mismatch(expected: dict, found: dict) -> str:
    """A short summary of missing / unexpected / wrongly shaped keys."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if tuple(expected[k].shape) != tuple(found[k].shape))
    parts = [f"{label} {len(keys)}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)) if keys]
    return "; ".join(parts) or "same keys and shapes"


PAPER_TEST_SCALE = (600, 1000)  # shorter side, longer-side cap (§3.3)


def checkpoint_input_scale(checkpoint: str | Path) -> tuple[int, int] | None:
    """The (scale, max_size) a checkpoint was trained with, if recorded: the checkpoint's own
    ``data_cfg`` entry, else its run's ``.hydra/config.yaml`` (``<run dir>/final/model.pt``)."""
    checkpoint = Path(checkpoint)
    try:
        payload = read_torch_file(checkpoint, "detector file", mmap=True)  # tensors mapped, not read
        data_cfg = payload.get("data_cfg") if isinstance(payload, dict) else None
    except (OSError, ValueError):  # load_detector names the real problem
        data_cfg = None
    if not data_cfg:
        run_config = checkpoint.resolve().parent.parent / ".hydra" / "config.yaml"
        if run_config.is_file():
            from omegaconf import OmegaConf

            data_cfg = OmegaConf.to_container(OmegaConf.load(run_config)).get("data")
    if data_cfg and data_cfg.get("scales") and data_cfg.get("max_size"):
        return int(list(data_cfg["scales"])[0]), int(data_cfg["max_size"])
    return None
