"""Statistics of an ablation table run over several seeds: mean ± spread, paired differences,
ties, and the Kendall τ between the measured and the paper's orderings.

A row's *change* is measured against the table's default row seed by seed (the two runs of one
seed share the data, the initial weights and the order of the mini-batches), so a difference
is the mean of the per-seed differences and its spread is their standard deviation. A
difference inside its spread (``|mean| <= spread``) is a tie: the seeds do not agree on its sign.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import kendalltau


@dataclass(frozen=True)
class Estimate:
    """Mean and spread (sample standard deviation; 0 for one value) of per-seed values."""

    mean: float
    spread: float
    n: int

    def format(self, digits: int = 1, signed: bool = False) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "-"
        mean = f"{self.mean:+.{digits}f}" if signed else f"{self.mean:.{digits}f}"
        return mean if self.n == 1 else f"{mean} ± {self.spread:.{digits}f}"


def estimate(values: Sequence[float]) -> Estimate:
    """Mean ± sample standard deviation of the finite ``values`` (NaN / missing left out)."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return Estimate(math.nan, math.nan, 0)
    spread = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return Estimate(float(finite.mean()), spread, int(finite.size))


def paired_difference(values: dict[int, float], reference: dict[int, float]) -> Estimate:
    """``values - reference`` seed by seed (seeds present in both), as an :class:`Estimate`."""
    seeds = sorted(set(values) & set(reference))
    return estimate([values[s] - reference[s] for s in seeds])


def verdict(difference: Estimate, strict: bool = True) -> str:
    """'holds' when the difference is positive beyond its spread, 'reversed' when negative beyond
    it, else 'tie' (or 'holds (tie)' when the claim is ``>=`` and not strict); '-' if unmeasured.
    One seed has no spread: its sign decides."""
    if difference.n == 0 or math.isnan(difference.mean):
        return "-"
    if is_tie(difference):
        return "tie" if strict else "holds (tie)"
    return "holds" if difference.mean > 0 else "reversed"


def is_tie(difference: Estimate) -> bool:
    """True when the seeds do not agree on the sign beyond the spread: ``|mean| <= spread``."""
    return difference.n > 0 and not math.isnan(difference.mean) and abs(difference.mean) <= difference.spread


def kendall_tau(measured: Sequence[float], paper: Sequence[float]) -> float | None:
    """Kendall's τ-b between two orderings of the same rows (ties allowed); None for < 3 rows
    or an undefined τ (a constant column)."""
    pairs = [(m, p) for m, p in zip(measured, paper) if m is not None and p is not None
             and math.isfinite(m) and math.isfinite(p)]
    if len(pairs) < 3:
        return None
    tau = kendalltau([m for m, _ in pairs], [p for _, p in pairs]).statistic
    return None if tau is None or math.isnan(tau) else float(tau)
