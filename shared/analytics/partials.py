"""Partial summaries: summarise chunks apart, then merge them into the summary of all.

A partial is JSON: the count, min and max, the exact sum (an integer in units of
2**-1074, as hex), the sum of squared deviations M2 as m * 2**e, and a quantile sketch.
Merging uses the k-way form of Chan, Golub and LeVeque's parallel variance,
M2 = sum of M2_i + sum of n_i (mean_i - mean)**2, whose terms are all nonnegative (no
cancellation) and whose means are exact here, so the merged mean is correctly rounded and the stdev
as accurate as each chunk's. Every step is a function of the multiset of partials only:
merging is order-independent bit for bit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.analytics.errors import InvalidPartial
from shared.analytics.numeric import (
    UNIT_BITS,
    ZERO,
    Scaled,
    checked_fsum,
    exact_sum,
    lerp,
    mean_of_units,
    position,
    sample_stdev,
    squared_deviations,
    to_units,
)
from shared.analytics.sketch import (
    ALPHA,
    MAX_BUCKETS,
    MAX_LEVEL,
    Sketch,
    index_range,
    relative_accuracy,
)
from shared.analytics.summary import PERCENTILES

FORMAT = "aia.analytics.partial/1"
MAX_COUNT = 2**53  # counts stay exact in any JSON reader
# |sum| <= 2**53 * 2**1024 * 2**1074 < 2**2151: at most 538 hex digits.
_SUM_PATTERN = re.compile(r"-?0x[0-9a-f]{1,538}")
_KEYS = {"format", "count", "min", "max", "sum", "m2", "sketch"}
_SKETCH_KEYS = {"alpha", "level", "zero", "negative", "positive"}
_M2_SLACK = 1e-6  # in log2 units, for checking M2 against the spread


@dataclass(frozen=True)
class _Partial:
    count: int
    lo: float
    hi: float
    total: int  # exact sum in units of 2**-1074
    m2: Scaled
    sketch: Sketch

    def state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "count": self.count,
            "min": self.lo,
            "max": self.hi,
            "sum": hex(self.total),
            "m2": list(self.m2),
            "sketch": self.sketch.state(),
        }


def summarize_chunk(values: Sequence[float]) -> dict[str, Any]:
    """The JSON-serialisable partial summary of one chunk (ValueError if empty or non-finite)."""
    if not values:
        raise ValueError("at least one value is needed")
    if len(values) > MAX_COUNT:
        raise ValueError(f"at most {MAX_COUNT} values per partial")
    rounded = checked_fsum(values)  # rejects NaN and infinities
    lo, hi = min(values), max(values)
    total = exact_sum(values, rounded)
    n = len(values)
    m2 = squared_deviations(values, mean_of_units(total, n), lo, hi)
    return _Partial(n, lo, hi, total, m2, Sketch.of(values)).state()


def combine(partials: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One partial for all the given ones, for merging in stages (InvalidPartial if malformed)."""
    return _combine(_parse_all(partials)).state()


def merge(partials: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary of all the data behind the partials, in the shape of `summarize`.

    count, min, max exact; mean correctly rounded; stdev as accurate as `summarize`'s;
    percentiles within the sketch's bound (docs/analytics.md). Raises InvalidPartial
    for a malformed or inconsistent partial, ResultOutOfRange as `summarize` does.
    """
    whole = _combine(_parse_all(partials))
    n = whole.count
    result: dict[str, Any] = {
        "count": n,
        "min": whole.lo,
        "max": whole.hi,
        "mean": mean_of_units(whole.total, n),
        "stdev": sample_stdev(whole.m2, n),
    }
    wanted = [(key, *position(n, percent)) for key, percent in PERCENTILES]
    ranks = sorted({r for _, rank, _ in wanted for r in (rank, min(rank + 1, n - 1))})
    estimates = dict(zip(ranks, whole.sketch.order_statistics(ranks), strict=True))
    # The extremes are known exactly, and every value lies between them: clamping
    # only moves an estimate closer to the value it estimates.
    estimates = {r: min(max(v, whole.lo), whole.hi) for r, v in estimates.items()}
    estimates[0], estimates[n - 1] = whole.lo, whole.hi
    for key, rank, weight in wanted:
        result[key] = lerp(estimates[rank], estimates[min(rank + 1, n - 1)], weight)
    return result


def accuracy(partial: Mapping[str, Any]) -> float:
    """The sketch's relative accuracy alpha for this partial (it coarsens when buckets collapse)."""
    return relative_accuracy(_parse(partial, "partial").sketch.level)


def _combine(parts: Sequence[_Partial]) -> _Partial:
    n = sum(p.count for p in parts)
    if n > MAX_COUNT:
        raise InvalidPartial(f"the partials hold {n} values together, more than {MAX_COUNT}")
    total = sum(p.total for p in parts)
    # sum of M2_i + sum of n_i (mean_i - mean)**2, where mean_i - mean = D_i / (n_i n 2**1074)
    # exactly.
    terms = [(int(m * 2**53), e - 53) for m, e in (p.m2 for p in parts) if m]
    for p in parts:
        d = p.total * n - p.count * total
        if d:
            terms.append(_quotient(d * d, p.count * n * n, -2 * UNIT_BITS))
    return _Partial(
        count=n,
        lo=min(p.lo for p in parts),
        hi=max(p.hi for p in parts),
        total=total,
        m2=_dyadic_sum(terms),
        sketch=Sketch.merged([p.sketch for p in parts]),
    )


def _quotient(num: int, den: int, exponent: int) -> tuple[int, int]:
    """num / den * 2**exponent as (q, e) = q * 2**e, q of at least 64 bits (error < 2**-63)."""
    shift = max(den.bit_length() - num.bit_length() + 64, 0)
    return (num << shift) // den, exponent - shift


def _dyadic_sum(terms: Sequence[tuple[int, int]]) -> Scaled:
    """The sum of q * 2**e over the terms, exact and then rounded once: order-free."""
    if not terms:
        return ZERO
    low = min(e for _, e in terms)
    acc = sum(q << (e - low) for q, e in terms)
    drop = max(acc.bit_length() - 64, 0)
    m, e = math.frexp(float(acc >> drop))
    return m, e + low + drop


# Validation: a partial comes back from a child task's stored result; anything malformed
# or self-contradictory is refused with the path of the offending field.


def _parse_all(partials: Sequence[Mapping[str, Any]]) -> list[_Partial]:
    if not isinstance(partials, Sequence) or isinstance(partials, str | bytes) or not partials:
        raise InvalidPartial("partials must be a non-empty list", field="partials")
    return [_parse(p, f"partials[{k}]") for k, p in enumerate(partials)]


def _fail(where: str, reason: str) -> InvalidPartial:
    return InvalidPartial(f"{where}: {reason}", field=where)


def _keys(value: Any, keys: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, "must be an object")
    if set(value) != keys:
        missing, extra = sorted(keys - set(value)), sorted(set(value) - keys)
        raise _fail(where, f"missing {missing}, unexpected {extra}")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    # bool is an int subclass, but True is not a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(where, "must be an integer")
    if not low <= value <= high:
        raise _fail(where, f"must be between {low} and {high}")
    return value


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, "must be a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _fail(where, "must be finite")
    return number


def _parse(raw: Any, where: str) -> _Partial:
    state = _keys(raw, _KEYS, where)
    if state["format"] != FORMAT:
        raise _fail(f"{where}.format", f"must be {FORMAT!r}")
    n = _int(state["count"], f"{where}.count", 1, MAX_COUNT)
    lo, hi = _float(state["min"], f"{where}.min"), _float(state["max"], f"{where}.max")
    if lo > hi or (n == 1 and lo != hi):
        raise _fail(f"{where}.max", "contradicts min and count")
    total = _parse_sum(state["sum"], f"{where}.sum", n, lo, hi)
    m2 = _parse_m2(state["m2"], f"{where}.m2", n, lo, hi)
    sketch = _parse_sketch(state["sketch"], f"{where}.sketch")
    _check_sketch(sketch, f"{where}.sketch", n, lo, hi)
    return _Partial(n, lo, hi, total, m2, sketch)


def _parse_sum(value: Any, where: str, n: int, lo: float, hi: float) -> int:
    if not isinstance(value, str) or not _SUM_PATTERN.fullmatch(value):
        raise _fail(where, "must be a hex integer string such as '-0x1f'")
    total = int(value, 16)
    if not n * to_units(lo) <= total <= n * to_units(hi):
        raise _fail(where, "puts the mean outside [min, max]")
    return total


def _parse_m2(value: Any, where: str, n: int, lo: float, hi: float) -> Scaled:
    if not isinstance(value, list) or len(value) != 2:
        raise _fail(where, "must be [mantissa, exponent]")
    m = _float(value[0], f"{where}[0]")
    e = _int(value[1], f"{where}[1]", -10_000, 10_000)
    if lo == hi:
        if (m, e) != ZERO:
            raise _fail(where, "must be [0.0, 0] when min equals max")
        return ZERO
    if not 0.5 <= m < 1.0:
        raise _fail(f"{where}[0]", "must be in [0.5, 1) when min differs from max")
    # The two extremes alone give M2 >= spread**2/2; n values at most n * spread**2/4.
    log_spread = math.log2(to_units(hi) - to_units(lo)) - UNIT_BITS
    log_m2 = math.log2(m) + e
    low, high = 2 * log_spread - 1, 2 * log_spread + math.log2(n) - 2
    if not low - _M2_SLACK <= log_m2 <= high + _M2_SLACK:
        raise _fail(where, "is impossible for the spread between min and max")
    return m, e


def _parse_sketch(raw: Any, where: str) -> Sketch:
    state = _keys(raw, _SKETCH_KEYS, where)
    if state["alpha"] != ALPHA:
        raise _fail(f"{where}.alpha", f"must be {ALPHA}")
    level = _int(state["level"], f"{where}.level", 0, MAX_LEVEL)
    sketch = Sketch(level=level, zero=_int(state["zero"], f"{where}.zero", 0, MAX_COUNT))
    low, high = index_range(level)
    for name, side in (("negative", sketch.negative), ("positive", sketch.positive)):
        buckets, path = state[name], f"{where}.{name}"
        if not isinstance(buckets, list) or len(buckets) > MAX_BUCKETS:
            raise _fail(path, f"must be a list of at most {MAX_BUCKETS} buckets")
        previous = low - 1
        for k, bucket in enumerate(buckets):
            if not isinstance(bucket, list) or len(bucket) != 2:
                raise _fail(f"{path}[{k}]", "must be [index, count]")
            # Strictly increasing indices: each bucket once, in a canonical order.
            index = _int(bucket[0], f"{path}[{k}][0]", previous + 1, high)
            side[index] = _int(bucket[1], f"{path}[{k}][1]", 1, MAX_COUNT)
            previous = index
    if sketch.buckets > MAX_BUCKETS:
        raise _fail(where, f"has more than {MAX_BUCKETS} buckets")
    return sketch


def _check_sketch(sketch: Sketch, where: str, n: int, lo: float, hi: float) -> None:
    if sketch.count != n:
        raise _fail(where, f"counts {sketch.count} values, the partial {n}")
    # The lowest and highest buckets in use must be those of min and max.
    order: list[tuple[int, int]] = [(-1, i) for i in sorted(sketch.negative, reverse=True)]
    order += [(0, 0)] if sketch.zero else []
    order += [(1, i) for i in sorted(sketch.positive)]
    if order[0] != sketch.bucket_of(lo) or order[-1] != sketch.bucket_of(hi):
        raise _fail(where, "disagrees with min or max")
