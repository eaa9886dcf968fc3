"""Analytics errors: both fail a task at once, since a retry would compute the same."""

from __future__ import annotations

from shared.errors import NonRetryable


class ResultOutOfRange(NonRetryable):
    """The exact answer is finite but larger than the largest float (about 1.8e308)."""

    code = "result-out-of-range"
    title = "Result exceeds the floating-point range"


class InvalidPartial(NonRetryable):
    """A partial summary handed to merge is malformed or contradicts itself."""

    code = "invalid-partial"
    title = "Partial summary is malformed"
