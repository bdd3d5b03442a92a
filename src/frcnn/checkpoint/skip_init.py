"""Building a model whose every weight is loaded right after, without filling the weights first.

A VGG-16 detector has ~138 M parameters; its constructors fill them twice (``nn.Linear`` /
``nn.Conv2d``'s default init, then torchvision's and frcnn's own initialisers), ~2 s on one core,
all of it overwritten when a saved detector is loaded. Inside :func:`weights_left_unfilled`
the ``torch.nn.init`` fillers do nothing, so parameters keep what ``torch.empty`` gave them.
Only for a model that is then loaded with ``load_state_dict(strict=True)``: a weight the file does
not hold is an error there, never a silently unfilled value. Buffers built from values (the
pixel mean, the reference anchors) are not ``nn.init`` fills and are unaffected. The global
random number generator is not drawn from either.

Not thread-safe: another thread building a model at the same time would also skip its fills.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

INIT_FILLERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


def _leave_unfilled(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return tensor


@contextmanager
def weights_left_unfilled() -> Iterator[None]:
    """``torch.nn.init``'s fillers are no-ops inside the block (see the module docstring)."""
    saved = {name: getattr(torch.nn.init, name) for name in INIT_FILLERS}
    try:
        for name in saved:
            setattr(torch.nn.init, name, _leave_unfilled)
        yield
    finally:
        for name, filler in saved.items():
            setattr(torch.nn.init, name, filler)
