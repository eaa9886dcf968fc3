"""Percentiles, medians over repeats, ratios and the ✓/✗ verdicts of the platform benchmark.

Pure functions only: the unit tests run them on fixed numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0 ≤ q ≤ 1) by linear interpolation between closest ranks (numpy's default).

    `statistics.quantiles` only gives whole percents; p99.9 or p0 would need a special case.
    """
    if not samples:
        raise ValueError("no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside [0, 1]")
    ordered = sorted(samples)
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


@dataclass(frozen=True)
class Spread:
    """p50 and p99 of one run's samples (milliseconds, or whatever the samples are in)."""

    n: int
    p50: float
    p99: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        return cls(len(samples), percentile(samples, 0.50), percentile(samples, 0.99))


def median_spread(runs: Sequence[Spread]) -> Spread:
    """Across repeats: the median of each run's p50 and of each run's p99.

    Medians of per-run figures, not a percentile of pooled samples: one run
    disturbed by another engineer's build moves the pooled p99 but not this.
    """
    if not runs:
        raise ValueError("no runs")
    return Spread(
        n=sum(r.n for r in runs),
        p50=statistics.median(r.p50 for r in runs),
        p99=statistics.median(r.p99 for r in runs),
    )


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def ratio(value: float, baseline: float) -> float:
    """value / baseline; inf when the baseline is zero and the value is not."""
    if baseline == 0:
        return 0.0 if value == 0 else math.inf
    return value / baseline


@dataclass(frozen=True)
class Target:
    """One line of the issue: a figure compared with a limit.

    `kind` says how: "max-ratio" (value/baseline ≤ limit), "min-ratio"
    (value/baseline ≥ limit), "max" (value ≤ limit) or "max-delta"
    (value - baseline ≤ limit).
    """

    name: str
    value: float
    baseline: float | None
    kind: str
    limit: float
    unit: str = ""

    @property
    def measure(self) -> float:
        """What is compared with the limit: a ratio, a delta or the value itself."""
        if self.kind in ("max-ratio", "min-ratio"):
            return ratio(self.value, self._baseline)
        if self.kind == "max-delta":
            return self.value - self._baseline
        if self.kind == "max":
            return self.value
        raise ValueError(f"unknown target kind {self.kind!r}")

    @property
    def met(self) -> bool:
        if self.kind == "min-ratio":
            return self.measure >= self.limit
        return self.measure <= self.limit

    @property
    def _baseline(self) -> float:
        if self.baseline is None:
            raise ValueError(f"target {self.name!r} of kind {self.kind} needs a baseline")
        return self.baseline

    def describe_limit(self) -> str:
        return {
            "max-ratio": f"≤ {self.limit:g}x",
            "min-ratio": f"≥ {self.limit:g}x",
            "max": f"≤ {self.limit:g}{self.unit}",
            "max-delta": f"≤ +{self.limit:g}{self.unit}",
        }[self.kind]

    def describe_measure(self) -> str:
        if self.kind in ("max-ratio", "min-ratio"):
            return f"{self.measure:.2f}x"
        if self.kind == "max-delta":
            return f"{self.measure:+.0f}{self.unit}"
        return f"{self.measure:.2f}{self.unit}"

    def mark(self) -> str:
        return "✓" if self.met else "✗"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "baseline": self.baseline,
            "kind": self.kind,
            "limit": self.limit,
            "measure": self.measure,
            "met": self.met,
        }


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text columns: the first left-aligned, the others right-aligned."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        parts = [first.ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
