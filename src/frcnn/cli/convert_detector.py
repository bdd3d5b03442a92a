"""`python scripts/convert_detector.py OLD NEW --trust-source`: rewrite a detector file that frcnn's
restricted reader refuses (it holds pickled objects, e.g. OmegaConf containers written by an older
frcnn) as a current one (tensors and plain values only).

This is the one place where frcnn unpickles a file without restriction, so it runs only when the
user says they trust the file's source (``--trust-source``): unpickling can run any code the file
holds. The result is loaded back with the restricted reader before the command reports success.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from frcnn.inference.detector_file import DETECTOR_FORMAT, atomic_torch_save, load_detector


def to_plain(value: Any) -> Any:
    """Mappings -> dict, sequences (OmegaConf ListConfig, tuples) -> list, tensors and scalars kept."""
    if isinstance(value, torch.Tensor) or isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return value
    try:  # OmegaConf containers, without importing omegaconf when the file holds none
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return to_plain(OmegaConf.to_container(value, resolve=True))
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    raise TypeError(f"cannot convert a {type(value).__name__} to a plain value")


def convert_detector(old: str | Path, new: str | Path) -> Path:
    """Read ``old`` UNRESTRICTED (only for files whose source the caller trusts), write ``new`` as a
    current detector file, and check that it loads with the restricted reader."""
    old, new = Path(old), Path(new)
    if not old.is_file():
        raise FileNotFoundError(f"{old}: no such detector file")
    if new.resolve() == old.resolve():
        raise ValueError(f"{new}: write the converted file under another name than the original")
    payload = torch.load(old, map_location="cpu", weights_only=False)  # the user vouched for this file
    if not isinstance(payload, Mapping) or "state_dict" not in payload or "model_cfg" not in payload:
        raise ValueError(f"{old}: not an frcnn detector file (needs 'model_cfg' and 'state_dict' entries)")
    state = payload["state_dict"]
    converted = {
        "format": DETECTOR_FORMAT,
        "model_cfg": to_plain(payload["model_cfg"]),
        "class_names": [str(n) for n in to_plain(payload.get("class_names") or [])],
        "unshared": bool(payload.get("unshared", False)),
        "state_dict": {str(k): v.detach().clone() for k, v in state.items()},
    }
    atomic_torch_save(converted, new)
    load_detector(new)  # the converted file passes the restricted reader and fits its architecture
    return new


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("old", help="the detector file frcnn refuses")
    parser.add_argument("new", help="where to write the converted detector file")
    parser.add_argument("--trust-source", action="store_true",
                        help="required: you trust where OLD came from (unpickling it can run code it holds)")
    args = parser.parse_args(argv)
    if not args.trust_source:
        parser.exit(2, "error: converting unpickles OLD without restriction, which can run code it holds; "
                       "pass --trust-source only if you trust where the file came from\n")
    try:
        new = convert_detector(args.old, args.new)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {new} (loads with frcnn's restricted reader)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
