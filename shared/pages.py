"""A list's page parameters as every list route takes them (shared/api/routes.py _PAGE_PARAMS).

`limit` (1-100, default 20) and an opaque `page_token`; any other parameter is
one the list names, and an empty value is refused rather than read as absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.errors import ValidationFailed

DEFAULT_PAGE = 20
MAX_PAGE = 100
PAGE_PARAMS = frozenset({"limit", "page_token"})


@dataclass(frozen=True)
class PageRequest:
    limit: int
    page_token: str | None


def page_request(params: Mapping[str, str], filters: frozenset[str] = frozenset()) -> PageRequest:
    """The page asked for; a 422 naming the first unknown, empty or out-of-range parameter."""
    unknown = sorted(set(params) - PAGE_PARAMS - filters)
    if unknown:
        raise ValidationFailed(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    empty = sorted(name for name, value in params.items() if not value)
    if empty:
        raise ValidationFailed(f"{empty[0]} must not be empty", field=empty[0])
    limit = DEFAULT_PAGE
    if "limit" in params:
        try:
            limit = int(params["limit"])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationFailed(f"limit must be 1-{MAX_PAGE}", field="limit")
    return PageRequest(limit, params.get("page_token"))
