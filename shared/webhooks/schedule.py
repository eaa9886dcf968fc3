"""When a failed delivery is tried again, and which answers count as failures worth retrying.

The schedule is the one Standard Webhooks' reference implementation (Svix) uses:
immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h — eight attempts
over about 27.5 hours. Delays of five minutes and more get ±10 % jitter, so
receivers recovering from an outage are not hit by every retry at once; a
`Retry-After` the receiver sent is never undercut.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from shared.webhooks.egress import Response

# Delay before attempt n+1 after attempt n failed (index 0: the first attempt).
SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = 0.10
JITTER_FROM_S = 300.0
# Waits this short are slept in the function that made the attempt; longer ones
# become `next_attempt_at` in Firestore, for the sweep (Pub/Sub backoff stops at 600 s).
INLINE_MAX_S = 10.0
# Answers that say "not now" rather than "no".
RETRY_STATUSES = frozenset({408, 425, 429})


class Verdict(StrEnum):
    SUCCEEDED = "succeeded"  # 2xx
    RETRY = "retry"  # timeout, connection error, 5xx, 408/425/429
    FAILED = "failed"  # any other answer (3xx: redirects are refused; 4xx): not retried
    GONE = "gone"  # 410: the receiver wants no more; its endpoint is disabled


def verdict_of(response: Response) -> Verdict:
    status = response.status
    if status is None:
        return Verdict.RETRY  # timeout, connection, TLS, or an address refused at send time
    if 200 <= status < 300:
        return Verdict.SUCCEEDED
    if status == 410:
        return Verdict.GONE
    if status >= 500 or status in RETRY_STATUSES:
        return Verdict.RETRY
    return Verdict.FAILED


@dataclass
class RetryPolicy:
    schedule: tuple[float, ...] = SCHEDULE_S
    jitter: float = JITTER
    rng: random.Random = field(default_factory=random.Random)

    @property
    def max_attempts(self) -> int:
        return len(self.schedule)

    def delay_after(self, failed: int, retry_after_s: float | None = None) -> float | None:
        """Seconds to wait after the `failed`-th failed attempt of a series; None: give up."""
        if failed >= len(self.schedule):
            return None
        delay = float(self.schedule[failed])
        if delay >= JITTER_FROM_S and self.jitter:
            delay *= 1 + self.jitter * (2 * self.rng.random() - 1)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return delay

    def next_attempt_at(
        self, now: datetime, failed: int, retry_after_s: float | None = None
    ) -> datetime | None:
        delay = self.delay_after(failed, retry_after_s)
        return None if delay is None else now + timedelta(seconds=delay)
