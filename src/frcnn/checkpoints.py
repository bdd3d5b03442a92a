"""Atomic writes and the unified detector file (final/model.pt)."""

from __future__ import annotations

from pathlib import Path

import torch

from frcnn.atomic_io import atomic_torch_save, atomic_write_json, atomic_write_text  # noqa: F401 (re-exported)
from frcnn.backbones import WEIGHTS_FROM_DETECTOR
from frcnn.factory import build_model
from frcnn.model import UnsharedFasterRCNN


def save_detector(model, model_cfg: dict, class_names: list[str], path: str | Path) -> None:
    """One file holding everything needed to rebuild and run the detector (shared conv, or
    the "unshared" pair of RPN and detector networks)."""
    atomic_torch_save(
        {"format": "frcnn-detector-v1", "model_cfg": model_cfg, "class_names": list(class_names),
         "unshared": isinstance(model, UnsharedFasterRCNN), "state_dict": model.state_dict()},
        path,
    )


def load_detector(path: str | Path, map_location: str = "cpu"):
    """Rebuild a detector saved by :func:`save_detector` -> (model in eval mode, class names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no detector checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated or not a torch file
        raise ValueError(f"{path} is not a readable frcnn checkpoint ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != "frcnn-detector-v1":
        raise ValueError(f"{path} is not an frcnn detector checkpoint (missing format 'frcnn-detector-v1')")
    cfg = dict(payload["model_cfg"])
    cfg["backbone"] = {**cfg["backbone"], "weights": WEIGHTS_FROM_DETECTOR}  # weights come from the state dict
    num_classes = len(payload["class_names"])
    if payload.get("unshared"):
        model = UnsharedFasterRCNN(build_model(cfg, num_classes), build_model(cfg, num_classes))
    else:
        model = build_model(cfg, num_classes)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the architecture in its model_cfg: {exc}") from exc
    return model.eval(), payload["class_names"]


PAPER_TEST_SCALE = (600, 1000)  # shorter side, longer-side cap (§3.3)


def checkpoint_input_scale(checkpoint: str | Path) -> tuple[int, int] | None:
    """The (scale, max_size) a checkpoint was trained with, if recorded: the checkpoint's own
    ``data_cfg`` entry, else its run's ``.hydra/config.yaml`` (``<run dir>/final/model.pt``)."""
    checkpoint = Path(checkpoint)
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
        data_cfg = payload.get("data_cfg") if isinstance(payload, dict) else None
    except Exception:  # not a zip checkpoint (mmap needs one): load_detector reports real problems
        data_cfg = None
    if not data_cfg:
        run_config = checkpoint.resolve().parent.parent / ".hydra" / "config.yaml"
        if run_config.is_file():
            from omegaconf import OmegaConf

            data_cfg = OmegaConf.to_container(OmegaConf.load(run_config)).get("data")
    if data_cfg and data_cfg.get("scales") and data_cfg.get("max_size"):
        return int(list(data_cfg["scales"])[0]), int(data_cfg["max_size"])
    return None
