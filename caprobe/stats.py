"""Small, dependency-light statistics for timings and paired A/B comparisons.

Plain Python + numpy (no scipy). Student-t quantiles come from an exact inversion of the
t distribution's CDF (regularised incomplete beta function, continued fraction), so any
confidence level and any degrees of freedom work, not just a table.

Conventions
-----------
* Percentiles use numpy's default (linear interpolation between order statistics,
  "type 7"), the same as ``pandas.Series.quantile``.
* Standard deviations use ``ddof=1``; with a single sample they are ``nan`` (there is no
  spread to speak of) and confidence intervals are ``None``: never a fake interval.
* :func:`did_learn` tells a training that learned from one that stayed at chance (the
  latter is flagged and left out of accuracy statistics, never reported as an effect).
* :func:`ratio_ci` pairs the *i*-th baseline timing with the *i*-th variant timing (they
  were taken back to back in one interleaved round), takes the ratio per pair, and reports
  the **median of the per-pair ratios** with a distribution-free confidence interval for
  that median from order statistics (binomial argument; no bootstrap, no seed, exact
  coverage >= the requested confidence).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from caprobe.errors import CaprobeError

__all__ = [
    "CHANCE_FACTOR",
    "LOSS_FACTOR",
    "PairedDelta",
    "Summary",
    "at_chance",
    "chance_top1",
    "did_learn",
    "loss_fell",
    "mean_ci",
    "median_ci_indices",
    "paired_delta",
    "ratio_ci",
    "summarize",
    "t_cdf",
    "t_quantile",
    "top1_floor",
]


# --------------------------------------------------------------------------- helpers


def _as_array(values: Iterable[float], what: str = "samples") -> np.ndarray:
    try:
        arr = np.asarray(list(values), dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise CaprobeError(f"the {what} must be numbers; pass a list of floats") from exc
    if arr.size == 0:
        raise CaprobeError(f"no {what} were given; pass at least one value")
    if not np.all(np.isfinite(arr)):
        raise CaprobeError(f"the {what} contain NaN or infinite values; drop them before "
                           "computing statistics")
    return arr


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise CaprobeError(f"confidence {confidence} is outside (0, 1); pass e.g. 0.95")
    return confidence


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = tiny if abs(d) < tiny else d
    d = 1.0 / d
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise CaprobeError(f"degrees of freedom must be positive, got {df}")
    if t == 0.0:
        return 0.5
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t (e.g. ``t_quantile(0.975, 4) == 2.7764...``)."""
    if not 0.0 < p < 1.0:
        raise CaprobeError(f"probability {p} is outside (0, 1)")
    if df <= 0:
        raise CaprobeError(f"degrees of freedom must be positive, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if df > 1e7:
        return NormalDist().inv_cdf(p)
    lo, hi = 0.0, max(1.0, NormalDist().inv_cdf(p))
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):  # bisection: monotone, robust, converges to ~1e-15 relative
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Summary:
    """Descriptive statistics of one set of timings."""

    n: int
    mean: float
    std: float  # ddof=1; nan when n < 2
    median: float
    q1: float
    q3: float
    iqr: float
    p90: float
    cv: float  # std / mean; nan when n < 2 or mean == 0
    min: float
    max: float


def summarize(samples: Iterable[float]) -> Summary:
    """Mean, spread and percentiles (numpy linear interpolation) of ``samples``."""
    x = _as_array(samples)
    n = int(x.size)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n >= 2 else math.nan
    q1, median, q3, p90 = (float(v) for v in np.percentile(x, [25, 50, 75, 90]))
    cv = std / mean if n >= 2 and mean != 0.0 else math.nan
    return Summary(n=n, mean=mean, std=std, median=median, q1=q1, q3=q3, iqr=q3 - q1,
                   p90=p90, cv=cv, min=float(x.min()), max=float(x.max()))


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean; ``None`` when fewer than 2 values."""
    confidence = _check_confidence(confidence)
    x = _as_array(values, "values")
    n = int(x.size)
    if n < 2:
        return None
    mean = float(x.mean())
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return (mean - half, mean + half)


# --------------------------------------------------------------------------- paired


@dataclass(frozen=True)
class PairedDelta:
    """Difference ``b - a`` per pair, its mean, spread and t-interval of the mean."""

    n: int
    mean: float
    std: float  # ddof=1; nan when n < 2
    ci_low: float | None  # None when n < 2
    ci_high: float | None


def _paired(a: Iterable[float], b: Iterable[float], names: tuple[str, str]):
    xa = _as_array(a, f"{names[0]} samples")
    xb = _as_array(b, f"{names[1]} samples")
    if xa.size != xb.size:
        raise CaprobeError(f"paired statistics need as many {names[0]} as {names[1]} samples "
                           f"(got {xa.size} and {xb.size}); pass timings from the same rounds")
    return xa, xb


def paired_delta(a: Sequence[float], b: Sequence[float],
                 confidence: float = 0.95) -> PairedDelta:
    """Mean of ``b[i] - a[i]`` with a Student-t interval (``None`` bounds when n < 2)."""
    confidence = _check_confidence(confidence)
    xa, xb = _paired(a, b, ("a", "b"))
    d = xb - xa
    n = int(d.size)
    ci = mean_ci(d, confidence)
    return PairedDelta(n=n, mean=float(d.mean()),
                       std=float(d.std(ddof=1)) if n >= 2 else math.nan,
                       ci_low=None if ci is None else ci[0],
                       ci_high=None if ci is None else ci[1])


def median_ci_indices(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """0-based order-statistic indices (lo, hi) of a distribution-free CI for the median.

    The interval ``[x_(lo), x_(hi)]`` of the sorted sample covers the population median with
    probability ``1 - 2 P(Binom(n, 1/2) <= lo)`` >= ``confidence``; the narrowest such
    symmetric interval is returned. ``None`` when even ``[min, max]`` falls short
    (n < 6 at 95%).
    """
    confidence = _check_confidence(confidence)
    if n < 1:
        return None
    alpha = 1.0 - confidence
    # coverage of [x[j], x[n-1-j]] (0-based, sorted) is 1 - 2 P(B <= j), B ~ Binom(n, 1/2);
    # take the largest j that keeps it >= confidence (narrowest valid interval).
    best = None
    cdf = 0.0
    for j in range(0, (n + 1) // 2):
        cdf += math.comb(n, j) * 0.5**n
        if 2.0 * cdf <= alpha + 1e-12:
            best = j
        else:
            break
    if best is None:
        return None
    return (best, n - 1 - best)


def ratio_ci(baseline_samples: Sequence[float], variant_samples: Sequence[float],
             confidence: float = 0.95) -> tuple[float, float, float]:
    """Overhead ratio ``variant / baseline`` from interleaved timings, pair by pair.

    Returns ``(point, low, high)``: ``point`` is the **median of the per-pair ratios**
    ``variant[i] / baseline[i]``; ``(low, high)`` is a distribution-free confidence interval of
    that median from order statistics of the ratios (see :func:`median_ci_indices`). When there
    are too few pairs for an interval at the requested confidence (fewer than 6 at 95%), the
    bounds are ``nan`` rather than a fake interval.
    """
    confidence = _check_confidence(confidence)
    xb, xv = _paired(baseline_samples, variant_samples, ("baseline", "variant"))
    if np.any(xb <= 0) or np.any(xv <= 0):
        raise CaprobeError("timings must be positive to form ratios; check the clock or units")
    r = np.sort(xv / xb)
    point = float(np.median(r))
    idx = median_ci_indices(int(r.size), confidence)
    if idx is None:
        return (point, math.nan, math.nan)
    return (point, float(r[idx[0]]), float(r[idx[1]]))


# --------------------------------------------------------------------------- did it learn?

# A final top-1 below 3 x chance reads as "at chance": on the small, balanced test sets of a
# quick ablation, guessing (or always predicting one class) stays well under 3 x chance, while
# a model that picked up the task clears it after a few epochs.
CHANCE_FACTOR = 3.0
# A final training loss not below 90% of ln(C), the cross-entropy of a uniform guess over C
# classes (label smoothing leaves it unchanged), means the optimiser went nowhere (dead learning
# rate, frozen weights, broken labels), whatever the test top-1 happens to be. Measured against
# the guess, not the first epoch's loss, so a run that learned within its first epoch (a long
# epoch, a fast task) is not flagged.
LOSS_FACTOR = 0.9


def _finite_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def chance_top1(num_classes: int | None) -> float | None:
    """Top-1 (percent) of guessing on a balanced test set: ``100 / num_classes``."""
    return 100.0 / num_classes if num_classes and num_classes > 0 else None


def top1_floor(chance: float) -> float:
    """The lowest top-1 (percent) that counts as learned: ``CHANCE_FACTOR`` x ``chance``.

    With 4 classes or fewer, 3 x chance is 75% or more (out of reach below 4 classes), so the
    floor is capped halfway between chance and 100%.
    """
    return min(CHANCE_FACTOR * chance, (chance + 100.0) / 2.0)


def at_chance(top1: float | None, chance: float | None) -> bool:
    """Whether a final ``top1`` (percent) lies below :func:`top1_floor` of ``chance``."""
    top1, chance = _finite_or_none(top1), _finite_or_none(chance)
    return top1 is not None and chance is not None and top1 < top1_floor(chance)


def loss_fell(train_losses: Iterable[object], num_classes: int | None) -> bool | None:
    """Whether the last finite per-epoch training loss is below ``LOSS_FACTOR`` x ln(C);
    None without a finite loss or with fewer than 2 classes."""
    losses = [x for x in map(_finite_or_none, train_losses) if x is not None]
    if not losses or not num_classes or num_classes < 2:
        return None
    return losses[-1] < LOSS_FACTOR * math.log(num_classes)


def did_learn(top1: float | None, num_classes: int | None,
              train_losses: Iterable[object] = ()) -> bool | None:
    """Whether a finished training learned.

    False when the final test ``top1`` (percent) is below :func:`top1_floor` of chance, or the
    last of the per-epoch ``train_losses`` is not below ``LOSS_FACTOR`` x ln(C), the loss of a
    uniform guess (:func:`loss_fell`); without losses only the top-1 criterion applies. None
    when ``top1`` or the class count is unknown (e.g. a run that did not finish): never a
    guess.
    """
    top1, chance = _finite_or_none(top1), chance_top1(num_classes)
    if top1 is None or chance is None:
        return None
    return top1 >= top1_floor(chance) and loss_fell(train_losses, num_classes) is not False
