"""Analytics cost: `summarize` of 1M values against the float-only summary it replaced.

Also the chunk path: `summarize_chunk` of a payload-sized chunk, `merge` of 40 partials,
and the serialised size of a partial. Medians of a few runs, one core, same process.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from shared.analytics.partials import merge, summarize_chunk
from shared.analytics.summary import summarize


def replaced_summarize(values: list[float]) -> dict[str, Any]:
    """The analytics.summary this package replaced (overflows near the float range)."""

    def quantile(ordered: list[float], q: float) -> float:
        h = (len(ordered) - 1) * q
        lo = math.floor(h)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])

    ordered = sorted(values)
    n = len(ordered)
    mean = math.fsum(ordered) / n
    deviations = [x - mean for x in ordered]
    squares = math.fsum(d * d for d in deviations)
    drift = math.fsum(deviations)
    stdev = math.sqrt(max(squares - drift * drift / n, 0.0) / (n - 1))
    return {
        "count": n,
        "min": ordered[0],
        "max": ordered[-1],
        "mean": mean,
        "stdev": stdev,
        "p50": quantile(ordered, 0.5),
        "p90": quantile(ordered, 0.9),
        "p99": quantile(ordered, 0.99),
    }


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm allocators
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main(*, quick: bool = False) -> None:
    rounds = 3 if quick else 7
    rnd = random.Random(1)
    values = [rnd.gauss(1e6, 250.0) for _ in range(1_000_000)]
    old = median_ms(lambda: replaced_summarize(values), rounds)
    new = median_ms(lambda: summarize(values), rounds)
    print(f"summarize, 1M values: {new:.0f} ms (replaced version {old:.0f} ms, {new / old:.2f}x)")

    # A 1 MiB payload holds about 50,000 values as JSON numbers.
    chunk = values[:50_000]
    partial = summarize_chunk(chunk)
    chunk_ms = median_ms(lambda: summarize_chunk(chunk), rounds)
    print(f"summarize_chunk, 50k values: {chunk_ms:.1f} ms")
    partials = [summarize_chunk(values[i : i + 25_000]) for i in range(0, 1_000_000, 25_000)]
    print(f"merge, 40 partials: {median_ms(lambda: merge(partials), rounds):.1f} ms")
    wide = [s * 2.0 ** (k / 8) for k in range(-8592, 8192) for s in (1.0, -1.0)]
    print(
        f"partial size: {len(json.dumps(partial))} B for 50k normal values, "
        f"{len(json.dumps(summarize_chunk(wide)))} B for the whole float range (cap 65536 B)"
    )


if __name__ == "__main__":
    main()
