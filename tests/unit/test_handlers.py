"""Built-in task types: analytics.summary exact against the standard library's references."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ConfigurationError, NonRetryable, RetryableError, ValidationFailed
from shared.tasks.builtin import summarize
from shared.tasks.diagnostic import FailPayload, fail
from shared.tasks.registry import TaskContext, builtin_registry

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@given(st.lists(finite, min_size=2, max_size=300))
def test_summary_matches_statistics_module(values: list[float]) -> None:
    got = summarize(values)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    assert got["count"] == len(values)
    assert got["min"] == min(values)
    assert got["max"] == max(values)
    assert close(got["mean"], statistics.fmean(values))
    assert close(got["stdev"], statistics.stdev(values))
    assert close(got["p50"], cuts[49])
    assert close(got["p90"], cuts[89])
    assert close(got["p99"], cuts[98])


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
    assert close(got["p90"], 9.1)
    assert close(got["p99"], 9.91)
    assert close(got["stdev"], 3.0276503540974917)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"values": []}, "payload.values"),
        ({"values": ["a"]}, "payload.values.0"),
        ({}, "payload.values"),
        ({"values": [1.0], "x": 1}, "payload.x"),
    ],
)
def test_summary_payload_validation_names_the_field(payload: dict[str, Any], field: str) -> None:
    registry = builtin_registry()
    with pytest.raises(ValidationFailed) as caught:
        registry.parse_payload(registry.get("analytics.summary"), payload)
    assert caught.value.field == field


def test_summary_rejects_non_finite_numbers() -> None:
    registry = builtin_registry()
    with pytest.raises(ValidationFailed):
        registry.parse_payload(registry.get("analytics.summary"), {"values": [1.0, float("inf")]})


def test_fail_fails_the_first_n_attempts_then_succeeds() -> None:
    payload = FailPayload(times=2)
    for attempt in (1, 2):
        with pytest.raises(RetryableError):
            fail(payload, TaskContext("t", "acme", attempt, 3))
    assert fail(payload, TaskContext("t", "acme", 3, 3)) == {"succeeded_on_attempt": 3}
    with pytest.raises(NonRetryable):
        fail(FailPayload(times=1, retryable=False), TaskContext("t", "acme", 1, 3))


def test_diagnostic_types_hide_when_switched_off() -> None:
    registry = builtin_registry()
    assert "fail" in registry.names()
    assert "fail" not in registry.names(include_diagnostic=False)
    with pytest.raises(ValidationFailed):
        registry.get("fail", include_diagnostic=False)
    with pytest.raises(ConfigurationError, match="registered twice"):
        registry.register("echo", FailPayload)(fail)
