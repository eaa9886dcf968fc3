"""The exact summary behind `analytics.summary`, for any finite floats."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.analytics.numeric import lerp, mean_of, position, sample_stdev, squared_deviations

# Reported percentiles: result key and percent.
PERCENTILES = (("p50", 50), ("p90", 90), ("p99", 99))


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """count, min, max, mean, sample stdev (None for one value), p50, p90, p99.

    Each figure is within 1e-12 relative of the exact answer (or, below the normal
    range, one subnormal step); raises ResultOutOfRange when the exact stdev exceeds
    the largest float, ValueError for no values or a non-finite one.
    """
    if not values:
        raise ValueError("at least one value is needed")
    ordered = sorted(values)
    n = len(ordered)
    lo, hi = ordered[0], ordered[-1]
    mean = mean_of(ordered, lo, hi)  # also rejects NaN and infinities
    result: dict[str, Any] = {
        "count": n,
        "min": lo,
        "max": hi,
        "mean": mean,
        "stdev": sample_stdev(squared_deviations(ordered, mean, lo, hi), n),
    }
    for key, percent in PERCENTILES:
        rank, weight = position(n, percent)
        result[key] = lerp(ordered[rank], ordered[min(rank + 1, n - 1)], weight)
    return result
