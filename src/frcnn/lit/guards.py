"""The non-finite loss guard of every training step (``recipe.on_nonfinite_loss``).

A NaN or inf loss term either stops the stage (``error``, default) with a message naming the
stage, the step and the term, before the optimiser step (so no checkpoint holds the update), or
skips the batch (``skip``): no optimiser step, counted and reported; after
``MAX_CONSECUTIVE_SKIPS`` skipped batches in a row the stage stops (it has diverged).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

NONFINITE_POLICIES = ("error", "skip")
MAX_CONSECUTIVE_SKIPS = 20
log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term was NaN or inf."""


class LossGuard:
    """Checks a step's loss terms; holds the skip counts of one stage."""

    def __init__(self, policy: str = "error", stage: str = "train"):
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"recipe.on_nonfinite_loss={policy!r}; allowed: {list(NONFINITE_POLICIES)}")
        self.policy, self.stage = policy, stage
        self.skipped_steps: list[int] = []
        self._in_a_row = 0

    def check(self, losses: Mapping[str, torch.Tensor], step: int) -> bool:
        """True when every term is finite; False when the batch is to be skipped; raises otherwise."""
        bad = {name: float(value.detach()) for name, value in losses.items()
               if torch.is_tensor(value) and not bool(torch.isfinite(value.detach()).all())}
        if not bad:
            self._in_a_row = 0
            return True
        terms = ", ".join(f"{name}={value}" for name, value in bad.items())
        where = f"stage {self.stage}, step {step}: loss term {terms}"
        if self.policy == "error":
            raise NonFiniteLossError(
                f"{where} is not finite; stopped before the optimiser step (the last checkpoint is clean). "
                "Lower optim.lr, set optim.gradient_clip_norm, or set recipe.on_nonfinite_loss=skip to skip such batches")
        self.skipped_steps.append(step)
        self._in_a_row += 1
        log.warning("%s is not finite: batch skipped (recipe.on_nonfinite_loss=skip), %d skipped so far",
                    where, len(self.skipped_steps))
        if self._in_a_row >= MAX_CONSECUTIVE_SKIPS:
            raise NonFiniteLossError(f"{where}: {self._in_a_row} batches in a row had a non-finite loss; the stage "
                                     "has diverged")
        return False
