"""GCRA as slot claims: the arithmetic of a rate limit whose state is spread over shards.

GCRA with rate r and burst b admits a request at time t when its theoretical
arrival time is at most (b - 1)/r ahead of t. Here the emission times are
numbered slots: slot n is the instant n/r. A request at time t may claim any
free slot in the window [floor(t*r), floor(t*r) + b - 1], the current slot and
the b - 1 after it; each slot is claimed once. Requests admitted in any interval
of length L therefore hold distinct slots of a range of ceil(r*L) + b slots: at
most r*L + b (rounded up) are admitted, the GCRA bound, whatever the number of
instances. A fresh limit admits b at once (the burst), then r per second.

The slots are dealt to K shards by residue (slot n belongs to shard n mod K);
each shard document remembers the last slot it handed out. A shard's next
claimable slot is therefore known from that one number, a claim is one
conditional write on one document, and at the sustained rate each shard is
written r/K times a second: K = ceil(r / per-document rate) keeps every
document at about one write a second.

Pure functions of a clock value; `shared.flow.ratelimits` stores the shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# What one Firestore document sustains (writes per second); K follows from it.
PER_DOCUMENT_RATE = 1.0
MAX_SHARDS = 256
NONE_CLAIMED = -1  # a shard that has handed out no slot yet


@dataclass(frozen=True)
class Limit:
    """A sustained `rate` per second with a `burst` admitted at once."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and 0 < self.rate <= 100_000):
            raise ValueError(f"rate must be in (0, 100000] per second, got {self.rate!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"burst must be a whole number >= 1, got {self.burst!r}")

    @property
    def shards(self) -> int:
        return max(1, min(MAX_SHARDS, math.ceil(self.rate / PER_DOCUMENT_RATE)))

    @property
    def key(self) -> str:
        """Names the slot numbering: a changed rate starts fresh shards (and a fresh burst)."""
        return f"{self.rate:g}-{self.burst}"

    def window(self, now: float) -> tuple[int, int]:
        """The claimable slots at `now`: [first, last] inclusive, `burst` of them."""
        first = math.floor(now * self.rate)
        return first, first + self.burst - 1

    def shard_of(self, slot: int) -> int:
        return slot % self.shards

    def next_slot(self, shard: int, last: int, now: float) -> int:
        """The earliest slot of `shard` after its `last` claimed that is not in the past."""
        first, _ = self.window(now)
        k = self.shards
        floor_ = max(first, last + 1)
        return floor_ + (shard - floor_) % k

    def claimable(self, shard: int, last: int, now: float) -> int | None:
        """The slot `shard` can hand out at `now`, or None if its next one is beyond the window."""
        slot = self.next_slot(shard, last, now)
        return slot if slot <= self.window(now)[1] else None

    def candidate_shards(self, now: float) -> list[int]:
        """Shards owning a slot in the window at `now`: only these can admit."""
        first, last = self.window(now)
        return sorted(
            {self.shard_of(n) for n in range(first, min(last, first + self.shards - 1) + 1)}
        )

    def seconds_until(self, slot: int, now: float) -> float:
        """How long until `slot` enters the window (0 if it is in it already)."""
        # Slot s is claimable once floor(t*r) + burst - 1 >= s, i.e. t >= (s - burst + 1) / r.
        return max(0.0, (slot - self.burst + 1) / self.rate - now)

    def retry_after(self, lasts: dict[int, int], now: float) -> float:
        """Seconds until some shard, as far as `lasts` (lower bounds) know, can admit again."""
        best = math.inf
        for shard in range(self.shards):
            slot = self.next_slot(shard, lasts.get(shard, NONE_CLAIMED), now)
            best = min(best, self.seconds_until(slot, now))
        return best

    def free_in_window(self, lasts: dict[int, int], now: float) -> int:
        """Slots of the window no shard has handed out, as far as `lasts` know (an upper bound)."""
        _, last = self.window(now)
        free = 0
        for shard in range(self.shards):
            slot = self.next_slot(shard, lasts.get(shard, NONE_CLAIMED), now)
            if slot <= last:
                free += (last - slot) // self.shards + 1
        return free
