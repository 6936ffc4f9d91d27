"""Summary statistics of repeated measurements: pure functions, no torch, no I/O."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

# Measured iterations whose coefficient of variation exceeds this are not steady.
STEADY_CV_LIMIT = 0.05

# Two-sided 95% Student t quantiles t(0.975, df) for df = 1..30.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """t(0.975, df). Tabulated up to 30 degrees of freedom; beyond, the Cornish-Fisher
    expansion around the normal quantile (error below 1e-4 for df > 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's
    default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float]) -> dict:
    """mean, median, p90, p99, min, max, stdev (sample), the 95% confidence interval of the mean
    (Student t) and the coefficient of variation. With one value the spread is unknown: stdev,
    ci95 and cv are None."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to summarize")
    mean = statistics.fmean(values)
    n = len(values)
    stdev = statistics.stdev(values) if n > 1 else None
    if stdev is None:
        ci95 = None
    else:
        half = t_quantile_975(n - 1) * stdev / math.sqrt(n)
        ci95 = [mean - half, mean + half]
    return {
        "n": n,
        "mean": mean,
        "median": statistics.median(values),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
        "stdev": stdev,
        "ci95": ci95,
        "cv": coefficient_of_variation(values),
    }


def coefficient_of_variation(values: Sequence[float]) -> float | None:
    """Sample stdev / mean; None when it is undefined (fewer than two values, or mean 0)."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    if mean == 0:
        return None
    return statistics.stdev(values) / abs(mean)


def is_steady(values: Sequence[float], limit: float = STEADY_CV_LIMIT) -> bool | None:
    """True when the coefficient of variation is at most `limit`; None when it is undefined."""
    cv = coefficient_of_variation(values)
    return None if cv is None else cv <= limit


def held_integral(samples: Sequence[tuple[float, float]], start: float | None = None,
                  end: float | None = None) -> float | None:
    """Integral over [start, end] of a signal sampled as [(t, value), ...] where each value holds
    until the next sample (Zeus's monitors send a sample only when the value changes, so a
    missing sample means "unchanged"). None when no sample precedes `start`: the value there is
    unknown. After the last sample its value holds to `end`."""
    points = sorted(samples)
    if not points:
        return None
    lo = points[0][0] if start is None else start
    hi = points[-1][0] if end is None else end
    if hi < lo or lo < points[0][0]:
        return None
    total = 0.0
    for (t0, value), (t1, _) in zip(points, points[1:] + [(max(hi, points[-1][0]), None)]):
        a, b = max(t0, lo), min(t1, hi)
        if b > a:
            total += value * (b - a)
    return total
