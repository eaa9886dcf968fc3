"""Built-in task types: payload validation, the summary handler, fail and diagnostics.

The summary's numerics are tested in test_analytics.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import ConfigurationError, NonRetryable, RetryableError, ValidationFailed
from shared.tasks.diagnostic import FailPayload, fail
from shared.tasks.registry import TaskContext, builtin_registry


def test_summary_handler_answers_at_the_edge_of_the_float_range() -> None:
    registry = builtin_registry()
    task_type = registry.get("analytics.summary")
    context = TaskContext("t", "acme", 1, 3)
    payload = registry.parse_payload(task_type, {"values": [-1e308, 1e308]})
    assert task_type.handler(payload, context)["stdev"] == 1.4142135623730951e308
    # Out of range is a NonRetryable: the worker fails the task at once.
    payload = registry.parse_payload(task_type, {"values": [-1.7e308, 1.7e308]})
    with pytest.raises(NonRetryable) as caught:
        task_type.handler(payload, context)
    assert caught.value.code == "result-out-of-range"


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
