"""The finish's retries (`repository._until`): transient answers again, others at once."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from google.api_core import exceptions

from shared.tasks.repository import _until


def _error(kind: type[exceptions.GoogleAPICallError], message: str) -> Exception:
    return kind(message)


def _failing(times: int, error: Exception) -> tuple[Callable[[], str], list[int]]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "landed"

    return call, calls


@pytest.mark.parametrize(
    "error",
    [
        _error(exceptions.ServiceUnavailable, "down"),
        _error(exceptions.DeadlineExceeded, "slow"),
        _error(exceptions.Cancelled, "call already cancelled"),  # the emulator's answer under load
    ],
    ids=["unavailable", "deadline", "cancelled"],
)
def test_a_transient_failure_is_retried_within_the_time_left(error: Exception) -> None:
    call, calls = _failing(1, error)
    assert _until(call, time.time() + 30) == "landed"
    assert len(calls) == 2


def test_a_transient_failure_past_the_time_left_is_raised() -> None:
    call, calls = _failing(5, _error(exceptions.Cancelled, "call already cancelled"))
    with pytest.raises(exceptions.Cancelled):
        _until(call, time.time() + 0.1)
    assert len(calls) == 1


def test_a_permanent_failure_is_raised_at_once() -> None:
    call, calls = _failing(1, _error(exceptions.PermissionDenied, "no"))
    with pytest.raises(exceptions.PermissionDenied):
        _until(call, time.time() + 30)
    assert len(calls) == 1
