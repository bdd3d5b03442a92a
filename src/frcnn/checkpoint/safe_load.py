"""Reading torch files that another person could have written, without running their code.

A ``.pt`` / ``.ckpt`` file is a pickle: read with ``torch.load(weights_only=False)`` it can
import any module and call any function, so a detector downloaded from a colleague or a model
zoo could run a shell command before frcnn says anything. Every file frcnn reads — detector
files, backbone weights, proposal files, stage weights, resume checkpoints — goes through
:func:`read_torch_file`, which uses PyTorch's restricted unpickler (``weights_only=True``): it
rebuilds tensors and plain containers (dict, list, tuple, str, int, float, bool, None) and
refuses everything else *before* creating it. frcnn only ever writes such payloads.

Failures become one-line errors naming the file:

- :class:`UnsafeFileError`: the file holds pickled objects frcnn does not load (code, classes);
- :class:`UnreadableFileError`: truncated, not a torch file, or otherwise unreadable.

Both are ``ValueError``\\ s, so the command-line tools print them as ``error: ...`` and exit 2.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any


class UnreadableFileError(ValueError):
    """A file that cannot be read as a torch file (truncated, another format, ...); names the file."""


class UnsafeFileError(UnreadableFileError):
    """A torch file that holds pickled objects frcnn does not load (they could run code); names the file."""


_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_REFUSED_OPCODE = re.compile(r"Unsupported operand (\d+)")


def _refused_object(message: str) -> str:
    """What the restricted unpickler refused, from its message (best effort)."""
    if match := _REFUSED_GLOBAL.search(message):
        return f"a reference to {match.group(1)}"
    if match := _REFUSED_OPCODE.search(message):
        return f"pickle instruction {match.group(1)}, outside what the restricted reader accepts"
    return "an object that is not a tensor or a plain container"


def read_torch_file(path: str | os.PathLike[str], what: str = "torch file", mmap: bool = False) -> Any:
    """Load ``path`` with PyTorch's restricted unpickler (tensors and plain containers only).

    ``what`` names the kind of file in messages ("detector file", "proposal file", ...).
    ``mmap=True`` maps a zip-format file's tensors instead of reading them (legacy non-zip files
    fall back to a plain read). Raises FileNotFoundError, :class:`UnsafeFileError` or
    :class:`UnreadableFileError`; never unpickles an arbitrary object.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol N": the refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError:
                if not mmap:
                    raise
                # mmap needs the zip format; a legacy file (or a damaged one) gets a plain restricted read
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Weights only load failed" in message or "nsupported" in message:
            raise UnsafeFileError(
                f"{path}: refused: this {what} holds pickled objects frcnn does not load "
                f"({_refused_object(message)}); frcnn reads only tensors and plain values, so nothing in it "
                "was run. Ask its author for a file written by frcnn, or load it yourself only if you trust it"
            ) from None
        raise UnreadableFileError(f"{path}: not a readable {what} (damaged pickle: {message.splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        first_line = (str(exc).splitlines() or [""])[0][:200]
        raise UnreadableFileError(
            f"{path}: not a readable {what}: truncated, damaged or not a PyTorch file "
            f"({type(exc).__name__}: {first_line})") from None
