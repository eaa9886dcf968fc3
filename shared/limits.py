"""Limits on JSON that crosses AIA's edges: nesting depth, so nothing accepted breaks a read.

Python's JSON codecs, pydantic and Firestore all recurse: a body nested a few
thousand levels deep raises RecursionError, and a few hundred levels break
pydantic's serialiser on every later read of the stored task. One limit,
checked where JSON enters (bodies, page tokens, handler results), keeps every
stored value far inside what all of them handle.
"""

from __future__ import annotations

import json
from typing import Any

from shared.errors import NestingTooDeep

MAX_JSON_DEPTH = 64


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), counting no further than `limit` + 1.

    Iterative, so it cannot itself overflow the stack on hostile input.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def check_depth(value: Any, what: str, limit: int = MAX_JSON_DEPTH) -> None:
    """`NestingTooDeep` naming `what` and the limit when `value` nests deeper than `limit`."""
    if json_depth(value, limit) > limit:
        raise NestingTooDeep(
            f"{what} nests deeper than the limit of {limit} levels", field=what, limit=limit
        )


def loads_bounded(raw: bytes | str, what: str, limit: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads` that answers hostile nesting with `NestingTooDeep`, never RecursionError.

    Other malformed input raises `ValueError` (or `UnicodeDecodeError`), as json.loads does.
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        raise NestingTooDeep(
            f"{what} nests deeper than the limit of {limit} levels", field=what, limit=limit
        ) from None
    check_depth(value, what, limit)
    return value
