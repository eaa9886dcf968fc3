"""Hooks schemathesis loads (SCHEMATHESIS_HOOKS) for tests/e2e/test_schemathesis.py."""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis

KEY = "Idempotency-Key"


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    # An Idempotency-Key promises one request body: the fuzzer sends its few keys with
    # many bodies, which the API rightly refuses (422 idempotency-mismatch). A valid case
    # gets a key of its own; the keys of invalid cases stay as generated.
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    if case.headers and KEY in case.headers:
        case.headers[KEY] = uuid.uuid4().hex
