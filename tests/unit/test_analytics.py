"""Analytics: summaries exact against rational arithmetic, partials merged within stated bounds."""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.analytics.errors import InvalidPartial, ResultOutOfRange
from shared.analytics.numeric import to_units
from shared.analytics.partials import (
    FORMAT,
    MAX_COUNT,
    accuracy,
    combine,
    merge,
    summarize_chunk,
)
from shared.analytics.sketch import (
    ALPHA,
    LOG2_GAMMA,
    MAX_BUCKETS,
    ROUNDING_SLACK,
    Sketch,
    index_range,
    relative_accuracy,
)
from shared.analytics.summary import summarize
from shared.errors import NonRetryable

BIGGEST = sys.float_info.max
TINY = Fraction(2) ** -1074  # one subnormal step
REL = Fraction(1, 10**12)
KIB64 = 64 * 1024
PERCENTS = {"p50": 50, "p90": 90, "p99": 99}

# Every finite float, subnormals and the largest included, plus lists that stress the
# edges: tiny spreads next to huge magnitudes, and mixtures of extreme magnitudes.
any_float = st.floats(allow_nan=False, allow_infinity=False)
extreme = st.sampled_from([BIGGEST, -BIGGEST, 1e308, -1e308, 5e-324, -5e-324, 2.0**-1022, 0.0])


def ulps_away(x: float, k: int) -> float:
    for _ in range(abs(k)):
        x = math.nextafter(x, math.copysign(math.inf, k))
    return x


@st.composite
def clustered(draw: st.DrawFn) -> list[float]:
    """A few ulps around one value, up to the largest: the mean's rounding rivals the spread."""
    base = draw(st.one_of(any_float, extreme))
    steps = draw(st.lists(st.integers(-6, 6), min_size=1, max_size=40))
    return [y for y in (ulps_away(base, k) for k in steps) if math.isfinite(y)] or [base]


value_lists = st.one_of(
    st.lists(any_float, min_size=1, max_size=40),
    st.lists(st.one_of(any_float, extreme), min_size=1, max_size=40),
    clustered(),
    st.lists(st.floats(min_value=-1e-300, max_value=1e-300), min_size=1, max_size=40),
)


# Exact references: rational arithmetic on the floats themselves.


def exact_mean(values: Sequence[float]) -> Fraction:
    return sum(map(Fraction, values), Fraction(0)) / len(values)


def exact_variance(values: Sequence[float]) -> Fraction:
    mean = exact_mean(values)
    return sum(((Fraction(x) - mean) ** 2 for x in values), Fraction(0)) / (len(values) - 1)


def exact_sqrt(value: Fraction) -> Fraction:
    """sqrt(value) to better than 2**-80 relative."""
    if value == 0:
        return Fraction(0)
    p, q = value.numerator, value.denominator
    k = max(0, (200 - (p.bit_length() - q.bit_length())) // 2)
    return Fraction(math.isqrt((p << (2 * k)) // q), 1 << k)


def exact_percentile(ordered: Sequence[float], percent: int) -> Fraction:
    rank, weight = divmod((len(ordered) - 1) * percent, 100)
    a, b = Fraction(ordered[rank]), Fraction(ordered[min(rank + 1, len(ordered) - 1)])
    return a + (b - a) * Fraction(weight, 100)


def close(got: float, exact: Fraction) -> bool:
    """Within 1e-12 relative, or a subnormal step where no float does better."""
    return abs(Fraction(got) - exact) <= REL * abs(exact) + TINY


def representable(exact: Fraction) -> bool | None:
    """True/False when `exact` is clearly inside/outside the float range, None at the edge."""
    if abs(exact) <= Fraction(BIGGEST) * (1 - REL):
        return True
    if abs(exact) >= Fraction(BIGGEST) * (1 + REL):
        return False
    return None


def check_exact_summary(values: Sequence[float], got: Callable[[], dict[str, Any]]) -> None:
    """`got()` is the summary of `values`; stdev out of range must raise ResultOutOfRange."""
    n = len(values)
    stdev = exact_sqrt(exact_variance(values)) if n > 1 else None
    if stdev is not None and representable(stdev) is not True:
        if representable(stdev) is False:
            with pytest.raises(ResultOutOfRange):
                got()
        return
    summary = got()
    ordered = sorted(values)
    assert summary["count"] == n
    assert summary["min"] == ordered[0]
    assert summary["max"] == ordered[-1]
    assert close(summary["mean"], exact_mean(values))
    if stdev is None:
        assert summary["stdev"] is None
    else:
        assert close(summary["stdev"], stdev)
    for key, percent in PERCENTS.items():
        assert close(summary[key], exact_percentile(ordered, percent)), key


# analytics.summary: exact for every finite input.


@settings(max_examples=400, deadline=None)
@given(value_lists)
def test_summary_is_exact_for_every_finite_input(values: list[float]) -> None:
    check_exact_summary(values, lambda: summarize(values))


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@settings(deadline=None)
@given(st.lists(finite, min_size=2, max_size=300))
def test_summary_matches_statistics_module(values: list[float]) -> None:
    got = summarize(values)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    assert math.isclose(got["mean"], statistics.fmean(values), rel_tol=1e-12, abs_tol=1e-300)
    assert math.isclose(got["stdev"], statistics.stdev(values), rel_tol=1e-12, abs_tol=1e-300)
    for key, cut in (("p50", cuts[49]), ("p90", cuts[89]), ("p99", cuts[98])):
        assert math.isclose(got[key], cut, rel_tol=1e-9, abs_tol=1e-9)


def test_summary_at_the_edge_of_the_float_range() -> None:
    both_huge = summarize([1e308, 1e308])
    assert both_huge["mean"] == 1e308
    assert both_huge["stdev"] == 0.0
    opposite = summarize([-1e308, 1e308])
    assert opposite["mean"] == 0.0
    assert opposite["stdev"] == 1.4142135623730951e308
    assert opposite["p50"] == 0.0
    # The running sum overflows before it comes back into range, down to a subnormal.
    cancelling = [BIGGEST, BIGGEST, -BIGGEST, -BIGGEST, 1e-320]
    assert summarize(cancelling)["mean"] == float(exact_mean(cancelling))


def test_stdev_beyond_the_float_range_is_a_non_retryable_error() -> None:
    with pytest.raises(ResultOutOfRange) as caught:
        summarize([-1.7e308, 1.7e308])
    error = caught.value
    assert isinstance(error, NonRetryable)
    assert not error.retryable
    assert error.code == "result-out-of-range"
    assert "2.404e308" in error.detail


def test_summary_of_a_spread_of_one_ulp_is_exact() -> None:
    values = [1.0, 1.0 + 2.0**-52, 1.0 + 2.0**-52]
    got = summarize(values)
    assert got["mean"] == float(exact_mean(values))
    assert close(got["stdev"], exact_sqrt(exact_variance(values)))


def test_summary_of_one_value_has_null_stdev() -> None:
    assert summarize([4.0]) == {
        "count": 1,
        "min": 4.0,
        "max": 4.0,
        "mean": 4.0,
        "stdev": None,
        "p50": 4.0,
        "p90": 4.0,
        "p99": 4.0,
    }


def test_summary_known_figures() -> None:
    got = summarize([float(v) for v in range(1, 11)])
    assert got["p50"] == 5.5
    assert got["p90"] == 9.1
    assert got["p99"] == 9.91
    assert got["stdev"] == 3.0276503540974917


@pytest.mark.parametrize("values", [[], [1.0, math.nan], [math.inf, 1.0], [-math.inf, math.inf]])
def test_summary_refuses_no_values_and_non_finite_ones(values: list[float]) -> None:
    with pytest.raises(ValueError, match="value"):
        summarize(values)


# Partials: merge(summarize_chunk(c) for c in chunks) against the concatenation.


@st.composite
def chunked(draw: st.DrawFn) -> list[list[float]]:
    values = draw(value_lists)
    cuts = sorted(draw(st.lists(st.integers(1, max(len(values) - 1, 1)), max_size=6)))
    bounds = [0, *(c for c in cuts if c < len(values)), len(values)]
    return [values[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def within_sketch_bound(got: float, ordered: Sequence[float], percent: int, alpha: float) -> bool:
    """The documented percentile bound (docs/analytics.md, "The sketch")."""
    rank, weight = divmod((len(ordered) - 1) * percent, 100)
    a, b = Fraction(ordered[rank]), Fraction(ordered[min(rank + 1, len(ordered) - 1)])
    t = Fraction(weight, 100)
    exact = a + (b - a) * t
    spread = (1 - t) * abs(a) + t * abs(b)
    rounding = Fraction(2) ** -52 * max(abs(a), abs(b)) + 2 * TINY
    return (
        abs(Fraction(got) - exact)
        <= (Fraction(alpha) + Fraction(ROUNDING_SLACK)) * spread + rounding
    )


def check_merged(chunks: Sequence[Sequence[float]], merged: dict[str, Any], alpha: float) -> None:
    values = [x for chunk in chunks for x in chunk]
    ordered = sorted(values)
    assert merged["count"] == len(values)
    assert merged["min"] == ordered[0]
    assert merged["max"] == ordered[-1]
    assert merged["mean"] == float(exact_mean(values))  # correctly rounded
    if len(values) == 1:
        assert merged["stdev"] is None
    else:
        assert close(merged["stdev"], exact_sqrt(exact_variance(values)))
    for key, percent in PERCENTS.items():
        assert within_sketch_bound(merged[key], ordered, percent, alpha), key


@settings(max_examples=300, deadline=None)
@given(chunked())
def test_merged_partials_match_the_exact_summary_within_the_sketch_bound(
    chunks: list[list[float]],
) -> None:
    values = [x for chunk in chunks for x in chunk]
    partials = [summarize_chunk(c) for c in chunks]
    if len(values) > 1 and representable(exact_sqrt(exact_variance(values))) is not True:
        if representable(exact_sqrt(exact_variance(values))) is False:
            with pytest.raises(ResultOutOfRange):
                merge(partials)
        return
    check_merged(chunks, merge(partials), accuracy(combine(partials)))


@settings(max_examples=200, deadline=None)
@given(chunked(), st.randoms(use_true_random=False))
def test_merge_is_order_independent_and_staged_merges_agree(
    chunks: list[list[float]], rnd: random.Random
) -> None:
    partials = [summarize_chunk(c) for c in chunks]
    shuffled = partials[:]
    rnd.shuffle(shuffled)
    assert combine(shuffled) == combine(partials)
    # Merging in stages (a tree of combine) keeps everything but M2 bit for bit.
    split = rnd.randint(0, len(partials))
    staged = [combine(p) for p in (partials[:split], partials[split:]) if p]
    flat, tree = combine(partials), combine(staged)
    assert {k: v for k, v in tree.items() if k != "m2"} == {
        k: v for k, v in flat.items() if k != "m2"
    }
    tree_m2, flat_m2 = (Fraction(m) * Fraction(2) ** e for m, e in (tree["m2"], flat["m2"]))
    assert abs(tree_m2 - flat_m2) <= Fraction(1, 10**14) * flat_m2


@settings(max_examples=200, deadline=None)
@given(chunked())
def test_each_estimated_order_statistic_is_within_relative_alpha(
    chunks: list[list[float]],
) -> None:
    # The sketch's own guarantee, for every rank: before interpolation and clamping.
    sketch = Sketch.merged([Sketch.of(c) for c in chunks])
    ordered = sorted(x for c in chunks for x in c)
    alpha = Fraction(relative_accuracy(sketch.level)) + Fraction(ROUNDING_SLACK)
    for exact, estimate in zip(ordered, sketch.order_statistics(range(len(ordered))), strict=True):
        if math.isinf(estimate):  # a bucket past the largest float: merge clamps to max
            assert abs(exact) * (1 + alpha) > BIGGEST
            continue
        assert abs(Fraction(estimate) - Fraction(exact)) <= alpha * abs(Fraction(exact)) + TINY


def test_partials_round_trip_through_json() -> None:
    chunks = [[1.5, -2.0, 0.0], [1e308, -5e-324], [3.25]]
    partials = [summarize_chunk(c) for c in chunks]
    assert merge(json.loads(json.dumps(partials))) == merge(partials)


def test_merge_at_the_edge_of_the_float_range() -> None:
    assert merge([summarize_chunk([1e308]), summarize_chunk([1e308])])["mean"] == 1e308
    opposite = merge([summarize_chunk([-1e308]), summarize_chunk([1e308])])
    assert (opposite["mean"], opposite["stdev"]) == (0.0, 1.4142135623730951e308)
    with pytest.raises(ResultOutOfRange):
        merge([summarize_chunk([-1.7e308]), summarize_chunk([1.7e308])])


def test_two_million_values_in_forty_chunks_match_statistics() -> None:
    rnd = random.Random(20240601)
    # Chunks from different distributions, so the between-chunk term of the variance
    # matters: shifted normals, a tiny spread around a large value, signed heavy tails.
    makers: list[Callable[[], float]] = [
        lambda: rnd.gauss(100.0, 15.0),
        lambda: rnd.gauss(-3e3, 1.0),
        lambda: 1e9 + rnd.random(),
        lambda: rnd.choice((-1.0, 1.0)) * rnd.lognormvariate(0.0, 2.0),
    ]
    chunks = [[makers[i % 4]() for _ in range(50_000)] for i in range(40)]
    values = [x for chunk in chunks for x in chunk]
    partials = [summarize_chunk(c) for c in chunks]
    merged = merge(partials)
    ordered = sorted(values)
    assert merged["count"] == 2_000_000
    assert (merged["min"], merged["max"]) == (ordered[0], ordered[-1])
    assert math.isclose(merged["mean"], statistics.fmean(values), rel_tol=1e-9)
    assert math.isclose(merged["stdev"], statistics.stdev(values), rel_tol=1e-9)
    alpha = accuracy(combine(partials))
    assert alpha == relative_accuracy(0)  # fewer than 2048 buckets: the full 1% accuracy
    for key, percent in PERCENTS.items():
        assert within_sketch_bound(merged[key], ordered, percent, alpha), key


# The sketch's size: bounded for any input.


def test_wide_data_collapses_buckets_keeps_the_bound_and_the_size() -> None:
    # Quarter-powers of two from 2**-600 to 2**600, both signs: 9,600 level-0 buckets.
    values = [s * 2.0 ** (k / 4) for k in range(-2400, 2400) for s in (1.0, -1.0)]
    chunks = [values[i : i + 1000] for i in range(0, len(values), 1000)]
    partials = [summarize_chunk(c) for c in chunks]
    whole = combine(partials)
    assert whole["sketch"]["level"] == 6
    # Merging a collapsed partial with uncollapsed ones lands on the same buckets.
    first = combine(partials[:4])
    assert 0 < first["sketch"]["level"] < 6
    assert combine([*partials[4:], first])["sketch"] == whole["sketch"]
    assert len(whole["sketch"]["positive"]) + len(whole["sketch"]["negative"]) <= MAX_BUCKETS
    assert all(len(json.dumps(p)) <= KIB64 for p in [*partials, whole])
    check_merged(chunks, merge(partials), accuracy(whole))


def test_data_across_the_whole_float_range_collapses_to_the_coarsest_level() -> None:
    # Every eighth of a binade from the smallest subnormal to the largest float, both signs.
    magnitudes = [2.0 ** (k / 8) for k in range(-8592, 8192)] + [BIGGEST]
    values = [s * m for m in magnitudes for s in (1.0, -1.0)]
    partial = summarize_chunk(values)
    assert partial["sketch"]["level"] == 7
    assert len(json.dumps(partial)) <= KIB64
    # The top bucket reaches past the largest float: its estimate is clamped to max.
    merged = merge([partial])
    assert merged["max"] == BIGGEST
    assert merged["stdev"] is not None
    ordered = sorted(values)
    for key, percent in PERCENTS.items():
        assert within_sketch_bound(merged[key], ordered, percent, accuracy(partial)), key


def test_the_largest_valid_partial_fits_in_64_kib() -> None:
    # Worst case: every bucket in use, at the indices with the most digits (level 0, the
    # subnormal end), counts as large as a total of 2**53 allows when spread evenly
    # (equal counts maximise the digits), and room for the longest possible sum.
    low = index_range(0)[0]
    indices = list(range(low, low + MAX_BUCKETS // 2))
    count = MAX_COUNT // MAX_BUCKETS
    n = count * MAX_BUCKETS
    hi = 2.0 ** ((indices[-1] - 0.5) * LOG2_GAMMA)  # inside the outermost bucket
    spread = to_units(hi) - to_units(-hi)
    m2 = Fraction(n * spread * spread, 8) / Fraction(2) ** 2148  # between the bounds
    e = m2.numerator.bit_length() - m2.denominator.bit_length()
    mantissa, shift = math.frexp(float(m2 / Fraction(2) ** e))
    forged = {
        "format": FORMAT,
        "count": n,
        "min": -hi,
        "max": hi,
        "sum": "0x0",
        "m2": [mantissa, e + shift],
        "sketch": {
            "alpha": ALPHA,
            "level": 0,
            "zero": 0,
            "negative": [[i, count] for i in indices],
            "positive": [[i, count] for i in indices],
        },
    }
    assert combine([forged])["count"] == n  # a valid partial: it passes every check
    longest_sum = json.dumps(hex(-(MAX_COUNT * to_units(BIGGEST))))
    assert len(json.dumps(forged)) - len(json.dumps("0x0")) + len(longest_sum) <= KIB64


# Validation: malformed or inconsistent partials are refused with the field at fault.


def good() -> dict[str, Any]:
    return summarize_chunk([1.0, 2.0, -3.0, 0.0, 2.5])


def setting(path: Sequence[str | int], value: Any) -> Callable[[dict[str, Any]], Any]:
    def mutate(partial: dict[str, Any]) -> Any:
        target: Any = partial
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return partial

    return mutate


def removing(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda p: {k: v for k, v in p.items() if k != key}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (removing("sum"), "partials[0]"),
        (lambda p: [p], "partials[0]"),
        (setting(["format"], "aia.analytics.partial/0"), "partials[0].format"),
        (setting(["count"], True), "partials[0].count"),
        (setting(["count"], 0), "partials[0].count"),
        (setting(["count"], 6), "partials[0].sketch"),
        (setting(["min"], "-3"), "partials[0].min"),
        (setting(["min"], math.nan), "partials[0].min"),
        (setting(["min"], 10**400), "partials[0].min"),
        (setting(["min"], 3.0), "partials[0].max"),
        (setting(["min"], -3.1), "partials[0].sketch"),
        (setting(["sum"], "12"), "partials[0].sum"),
        (setting(["sum"], hex(6 * to_units(2.5))), "partials[0].sum"),
        (setting(["sum"], "0x" + "f" * 600), "partials[0].sum"),
        (setting(["m2"], [0.25, 5]), "partials[0].m2[0]"),
        (setting(["m2"], [0.5, 500]), "partials[0].m2"),
        (setting(["m2"], [0.5, "5"]), "partials[0].m2[1]"),
        (setting(["m2"], 17.5), "partials[0].m2"),
        (setting(["sketch", "alpha"], 0.02), "partials[0].sketch.alpha"),
        (setting(["sketch", "level"], 99), "partials[0].sketch.level"),
        (setting(["sketch", "zero"], -1), "partials[0].sketch.zero"),
        (setting(["sketch", "extra"], 1), "partials[0].sketch"),
        (setting(["sketch", "positive", 1, 0], 0), "partials[0].sketch.positive[1][0]"),
        (setting(["sketch", "positive", 0, 1], 0), "partials[0].sketch.positive[0][1]"),
        (setting(["sketch", "positive", 0], [1]), "partials[0].sketch.positive[0]"),
        (setting(["sketch", "negative", 0, 0], 10**6), "partials[0].sketch.negative[0][0]"),
        (
            setting(["sketch", "positive"], [[i, 1] for i in range(2049)]),
            "partials[0].sketch.positive",
        ),
        (
            setting(["sketch", "positive"], [[i, 1] for i in range(MAX_BUCKETS)]),
            "partials[0].sketch",
        ),
        (setting(["sketch", "positive", 2, 0], 40), "partials[0].sketch"),
        (lambda p: summarize_chunk([2.0, 2.0]) | {"m2": p["m2"]}, "partials[0].m2"),
    ],
)
def test_malformed_partials_are_refused_naming_the_field(
    mutate: Callable[[dict[str, Any]], Any], field: str
) -> None:
    with pytest.raises(InvalidPartial) as caught:
        merge([mutate(good())])
    assert caught.value.field == field
    assert caught.value.detail.startswith(field)
    assert not caught.value.retryable


@pytest.mark.parametrize("partials", [[], "partials", None])
def test_merge_needs_a_list_of_partials(partials: Any) -> None:
    with pytest.raises(InvalidPartial) as caught:
        merge(partials)
    assert caught.value.field == "partials"


def test_merge_refuses_more_than_2_to_the_53_values_together() -> None:
    zeros = summarize_chunk([0.0])
    zeros = zeros | {"count": MAX_COUNT, "sketch": zeros["sketch"] | {"zero": MAX_COUNT}}
    assert merge([zeros])["count"] == MAX_COUNT
    with pytest.raises(InvalidPartial, match="more than"):
        merge([zeros, zeros])


class Huge(Sequence[float]):
    """Claims more values than a partial may hold, without holding them."""

    def __len__(self) -> int:
        return MAX_COUNT + 1

    def __getitem__(self, index: Any) -> Any:
        raise AssertionError("the length alone must be refused")


def test_summarize_chunk_refuses_no_values_too_many_and_non_finite_ones() -> None:
    with pytest.raises(ValueError, match="at least one"):
        summarize_chunk([])
    with pytest.raises(ValueError, match="at most"):
        summarize_chunk(Huge())
    with pytest.raises(ValueError, match="finite"):
        summarize_chunk([1.0, math.inf])
