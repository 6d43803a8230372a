"""Log-log slopes with confidence intervals: per-seed least-squares fits, a t interval over seeds
and a percentile bootstrap over seeds (Luo et al. fig. 2: ERF size ~ n^0.5, ERF/TRF ~ n^-0.5)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SlopeFit:
    """Slope of log y on log x: the fit of the seed-averaged curve, the per-seed slopes, and a
    95% interval (t over seeds; bootstrap over seeds when there are at least 3)."""

    slope: float
    intercept: float
    per_seed: tuple[float, ...]
    ci_t: tuple[float, float]
    ci_boot: tuple[float, float]

    @property
    def ci(self) -> tuple[float, float]:
        """The wider of the two intervals (the honest one to report)."""
        return (min(self.ci_t[0], self.ci_boot[0]), max(self.ci_t[1], self.ci_boot[1]))


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares line through (log x, log y): (slope, intercept); points with y <= 0 or NaN
    (no ERF measured) are left out; NaN when fewer than 2 points remain."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(ya) & (ya > 0)
    if keep.sum() < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(np.log(xa[keep]), np.log(ya[keep]), 1)
    return float(slope), float(intercept)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean (scipy's quantile when present, else 1.96); NaN if < 2."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return (float("nan"), float("nan"))
    try:
        from scipy.stats import t

        q = float(t.ppf(0.5 + level / 2, v.size - 1))
    except ImportError:
        q = 1.96
    half = q * float(v.std(ddof=1)) / math.sqrt(v.size)
    return (float(v.mean()) - half, float(v.mean()) + half)


def bootstrap_interval(x: Sequence[float], ys: np.ndarray, draws: int = 2000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the slope of the seed-mean curve, resampling seeds (rows of ys)."""
    ys = np.asarray(ys, float)
    if ys.shape[0] < 3:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(draws):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            pick = np.nanmean(ys[rng.integers(0, ys.shape[0], ys.shape[0])], axis=0)
        slopes.append(loglog_slope(x, pick)[0])
    lo, hi = np.nanpercentile(slopes, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


def fit_slopes(x: Sequence[float], ys: np.ndarray) -> SlopeFit:
    """``ys[seed, i]`` measured at ``x[i]`` (NaN: missing): slope of the mean curve, per-seed
    slopes, intervals."""
    ys = np.asarray(ys, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        slope, intercept = loglog_slope(x, np.nanmean(ys, axis=0))
    per_seed = tuple(loglog_slope(x, row)[0] for row in ys)
    return SlopeFit(slope, intercept, per_seed, t_interval(per_seed), bootstrap_interval(x, ys))
