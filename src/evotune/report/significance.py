"""What the comparison can say: confidence intervals over resamplings and paired differences to BioTune.

Every method is trained with the same seeds on the same ``R`` resamplings of the split
(:mod:`evotune.data.resampling`). Per method ``m`` and resampling ``r``,
``s[m, r]`` is the mean over seeds of the test macro accuracy. Then, per method:

* the mean of ``s[m, r]`` over the resamplings, with a 95 % t-interval over the ``R`` values
  (``df = R - 1``): the seeds' noise is inside each ``s[m, r]``, the split's shows between them;
* the paired difference to BioTune ``d_r = s[m, r] - s[biotune, r]`` (same resampling, same seeds):
  its mean and 95 % t-interval, and the verdict ``better`` (the interval above 0), ``worse``
  (below 0) or ``no significant difference`` (it contains 0). With ``R = 1`` there is no interval
  and the verdict says so (:data:`NO_CI`).

Pure functions of numbers; :mod:`evotune.report.comparison` builds the table from them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
BETTER, WORSE, SAME = "better", "worse", "no significant difference"
NO_CI = "no CI (1 resampling)"
REFERENCE = "biotune"


@dataclass(frozen=True)
class Interval:
    """A mean with its t-interval (``low``/``high`` NaN when there is one value)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def available(self) -> bool:
        return self.n > 1 and not math.isnan(self.low)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and t-interval of ``values`` (sample std, ddof=1; ``df = n - 1``)."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(v.mean())
    if v.size == 1:
        return Interval(mean, math.nan, math.nan, 1)
    from scipy import stats  # scikit-learn's dependency

    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return Interval(mean, mean - half, mean + half, int(v.size))


def verdict(diff: Interval) -> str:
    """``better`` / ``worse`` / ``no significant difference`` from a paired difference's interval."""
    if not diff.available:
        return NO_CI
    if diff.low > 0:
        return BETTER
    if diff.high < 0:
        return WORSE
    return SAME


def seed_std(per_resampling: Sequence[Sequence[float]]) -> float:
    """The std over seeds within each resampling (ddof=0, the authors' convention), averaged over resamplings."""
    return float(np.mean([np.std(np.asarray(v, dtype=float), ddof=0) for v in per_resampling]))


@dataclass(frozen=True)
class MethodSignificance:
    """A method's score over the resamplings and its paired difference to the reference (BioTune)."""

    method: str
    score: Interval
    diff: Interval | None  # None for the reference itself
    verdict: str | None


def compare_to_reference(scores: Mapping[str, Mapping[int, float]], reference: str = REFERENCE,
                         confidence: float = CONFIDENCE) -> dict[str, MethodSignificance]:
    """``scores[method][r]`` = s[m, r]; every method must have the reference's resamplings (paired)."""
    if reference not in scores:
        raise ValueError(f"the scores have no {reference!r} (the reference of the paired differences)")
    ref = scores[reference]
    out = {}
    for method, s in scores.items():
        if sorted(s) != sorted(ref):
            raise ValueError(f"{method} was tested on resamplings {sorted(s)}, {reference} on {sorted(ref)}: "
                             "the paired differences need the same ones")
        rs = sorted(s)
        score = t_interval([s[r] for r in rs], confidence)
        if method == reference:
            out[method] = MethodSignificance(method, score, None, None)
            continue
        diff = t_interval([s[r] - ref[r] for r in rs], confidence)
        out[method] = MethodSignificance(method, score, diff, verdict(diff))
    return out
