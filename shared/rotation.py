"""Re-wrapping every task's data key under the key ring's current key.

Bounded batches in task-id order; safe to interrupt and run again: keys
already under the current key are left alone, so repeated runs converge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class RewrapSource(Protocol):
    def rewrap_batch(self, start_after: str | None, limit: int) -> tuple[int, int, str | None]: ...


@dataclass(frozen=True)
class RewrapReport:
    scanned: int
    rewrapped: int


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
    cursor = start_after
    while True:
        seen, changed, last = repository.rewrap_batch(cursor, batch_size)
        scanned += seen
        rewrapped += changed
        if last is None:
            break
        cursor = last
        if progress:
            progress(last, rewrapped)
        if seen < batch_size:
            break
    return RewrapReport(scanned=scanned, rewrapped=rewrapped)
