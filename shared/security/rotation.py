"""Re-wrapping every task's data key under the key ring's current key.

Bounded batches in task-id order; safe to interrupt and run again: keys
already under the current key are left alone, so repeated runs converge.
A task whose key cannot be opened (integrity failure, a key no longer in the
ring, a malformed document) is reported with the reason, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from shared.tasks.repository import RewrapPage


class RewrapSource(Protocol):
    def rewrap_batch(self, start_after: str | None, limit: int) -> RewrapPage: ...


@dataclass(frozen=True)
class RewrapReport:
    scanned: int
    rewrapped: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (task id, why)


def rewrap_all(
    repository: RewrapSource,
    *,
    batch_size: int = 200,
    start_after: str | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> RewrapReport:
    if not 1 <= batch_size <= 500:
        raise ValueError("batch_size must be 1-500 (a Firestore batch holds 500 writes)")
    scanned = rewrapped = 0
    unreadable: list[tuple[str, str]] = []
    cursor = start_after
    while True:
        page = repository.rewrap_batch(cursor, batch_size)
        scanned += page.scanned
        rewrapped += page.rewrapped
        unreadable += page.unreadable
        if page.last_id is None:
            break
        cursor = page.last_id
        if progress:
            progress(cursor, rewrapped)
        if page.scanned < batch_size:
            break
    return RewrapReport(scanned=scanned, rewrapped=rewrapped, unreadable=unreadable)
