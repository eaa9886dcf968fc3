"""The arithmetic of a balance held in escrow shards: pure, so its invariants are unit-tested.

A tenant's balance is split over N shard documents. Each shard keeps five
whole-token counters and one identity:

    available + reserved + spent == granted + moved

A hold takes `price` from one shard's `available` into its `reserved` (a
conditional write: the shard as read, so `available` never goes below zero);
a settle moves that hold out of `reserved` into `spent` (what was used) and
back into `available` (the rest) on the same shard; a grant adds to
`available` and `granted`; a rebalance moves `available` from one shard to
another and records it in both `moved` counters, which sum to zero. Every
operation keeps the identity on each shard, so the sum over shards holds it
too, and the ledger (one entry per hold, settle, refund and grant) adds up to
the same totals.

Tokens are spread in chunks: a balance B lives in min(N, B / CHUNK) shards,
so a small balance is not dust over hundreds of documents (every hold would
miss), and a large one uses every shard (each takes a share of the write rate).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

# Tokens a shard should hold at least when a balance is spread.
CHUNK = 50
# Shards one rebalance refills at most: a smaller batch is less likely to race a hold.
MAX_REFILLS = 8
COUNTERS = ("available", "reserved", "spent", "granted", "moved")


@dataclass(frozen=True)
class ShardState:
    shard: int
    available: int = 0
    reserved: int = 0
    spent: int = 0
    granted: int = 0
    moved: int = 0
    version: object = None  # the document's update time; None when it does not exist

    @classmethod
    def of(cls, shard: int, doc: Mapping[str, object] | None, version: object = None) -> ShardState:
        values = {name: _whole((doc or {}).get(name)) for name in COUNTERS}
        return cls(shard, version=version, **values)

    @property
    def balanced(self) -> bool:
        return self.available + self.reserved + self.spent == self.granted + self.moved


@dataclass(frozen=True)
class Totals:
    available: int
    reserved: int
    spent: int
    granted: int
    moved: int

    @property
    def balanced(self) -> bool:
        return self.moved == 0 and self.available + self.reserved + self.spent == self.granted


def totals(shards: Iterable[ShardState]) -> Totals:
    items = list(shards)
    return Totals(*(sum(getattr(s, name) for s in items) for name in COUNTERS))


def _whole(value: object) -> int:
    # Increments may come back as floats from some clients; counters are whole tokens.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def active_target(shards: int, balance: int) -> int:
    """How many shards a balance should occupy."""
    return max(1, min(shards, balance // CHUNK))


def plan_grant(states: Mapping[int, ShardState], shards: int, tokens: int) -> dict[int, int]:
    """Where `tokens` new tokens go: split over the emptiest shards, CHUNK or more each."""
    if tokens <= 0:
        return {}
    count = active_target(shards, tokens)
    emptiest = sorted(range(shards), key=lambda i: (states.get(i, ShardState(i)).available, i))
    chosen = emptiest[:count]
    share, extra = divmod(tokens, count)
    return {shard: share + (1 if n < extra else 0) for n, shard in enumerate(chosen)}


@dataclass(frozen=True)
class Move:
    source: int
    target: int
    tokens: int


def plan_gather(states: Mapping[int, ShardState], price: int) -> list[Move]:
    """Moves that put `price` tokens in one shard (the richest), or [] if the total is short."""
    ranked = sorted(states.values(), key=lambda s: (-s.available, s.shard))
    if not ranked or sum(s.available for s in ranked) < price or ranked[0].available >= price:
        return []
    target, need = ranked[0], price - ranked[0].available
    moves: list[Move] = []
    for source in ranked[1:]:
        if need <= 0:
            break
        take = min(source.available, need)
        if take > 0:
            moves.append(Move(source.shard, target.shard, take))
            need -= take
    return moves


def plan_refill(states: Mapping[int, ShardState], shards: int) -> list[Move]:
    """Moves refilling empty shards from the richest, when too few shards hold the balance.

    A balance packed into a few shards makes those few take every hold (hot
    documents, and holds racing each other); this spreads it back, a few
    shards at a time, only when fewer than half the shards it should occupy
    hold a chunk.
    """
    balance = sum(s.available for s in states.values())
    goal = active_target(shards, balance)
    holding = [s for s in states.values() if s.available >= CHUNK]
    if goal < 2 or len(holding) * 2 >= goal:
        return []
    level = balance // goal
    empty = [i for i in range(shards) if states.get(i, ShardState(i)).available < CHUNK]
    donors = sorted(holding, key=lambda s: -s.available)
    spare = {s.shard: s.available - level for s in donors if s.available > level}
    moves: list[Move] = []
    for target_shard in empty[: min(MAX_REFILLS, goal - len(holding))]:
        need = level - states.get(target_shard, ShardState(target_shard)).available
        for donor in donors:
            if need <= 0:
                break
            give = min(spare.get(donor.shard, 0), need)
            if give > 0:
                moves.append(Move(donor.shard, target_shard, give))
                spare[donor.shard] -= give
                need -= give
    return moves


def pick(estimates: Mapping[int, int], price: int, rng: random.Random) -> int | None:
    """A shard likely to cover `price`: drawn with weight its estimated available."""
    fits = [(shard, est) for shard, est in estimates.items() if est >= max(price, 1)]
    if not fits:
        return None
    total = sum(est for _, est in fits)
    draw = rng.uniform(0, total)
    for shard, est in fits:
        draw -= est
        if draw <= 0:
            return shard
    return fits[-1][0]


def top_up(states: Iterable[ShardState], monthly: int) -> int:
    """Tokens a monthly refill adds: up to the allowance, counting what is held for running tasks.

    Counting `reserved` keeps a month's spending at the allowance: the holds of
    tasks still running settle into this month and return their unused part.
    """
    held = sum(s.available + s.reserved for s in states)
    return max(0, monthly - held)


def period_of(moment: datetime) -> str:
    """The budget period (a UTC calendar month) holding `moment`."""
    utc = moment.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def period_bounds(period: str) -> tuple[datetime, datetime]:
    year, month = (int(part) for part in period.split("-"))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def day_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")
