"""What a ticker does with one due schedule: which slots fire, which are skipped, what comes next.

Pure: the clock, the cron and whether the previous run finished are inputs,
so catch-up, overlap and daylight saving are tested without storage.

Catch-up after an outage: of the slots that passed unfired, only the most
recent fires, once, and only if it is at most the schedule's catch-up window
old (default 1 h, at most 23 h: inside the 24 h idempotency window that makes
a slot fire once); every older one is counted as missed.

Overlap, when the previous run of the schedule has not finished:
`allow` fires anyway; `skip` counts the slot as skipped; `buffer_one` holds
the slot (at most one) and fires it once the previous run finished, and skips
slots that come while one is held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from shared.scheduling.cron import CronSchedule

# A held slot is looked at again this often while the run before it goes on.
BUFFER_RECHECK = timedelta(seconds=5)
# Slots counted one by one after an outage; beyond, the count stops growing.
MAX_COUNTED = 10_000


class Overlap(StrEnum):
    SKIP = "skip"
    ALLOW = "allow"
    BUFFER_ONE = "buffer_one"


@dataclass(frozen=True)
class Due:
    """The part of a schedule's state the plan reads."""

    next_run_at: datetime
    buffered_slot: datetime | None
    overlap: Overlap
    catchup_window: timedelta


@dataclass(frozen=True)
class Plan:
    fire: list[datetime] = field(default_factory=list)  # slots to submit now, oldest first
    next_run_at: datetime | None = None  # None: the cron names no later slot
    buffered_slot: datetime | None = None
    due_at: datetime | None = None  # when the ticker must look at the schedule again
    skipped: int = 0  # not fired because the previous run had not finished
    missed: int = 0  # passed while no ticker ran, and not the one slot caught up


def plan(cron: CronSchedule, due: Due, *, now: datetime, previous_finished: bool) -> Plan:
    """The slots to fire at `now` and the schedule's state after them."""
    fire: list[datetime] = []
    running = not previous_finished
    buffered = due.buffered_slot
    if buffered is not None and not running:
        fire.append(buffered)
        buffered = None
        running = True  # the run just fired is now the previous one
    if due.next_run_at > now:
        if not fire and buffered is not None:
            # Still held behind a running one: look again shortly, change nothing else.
            return Plan(
                next_run_at=due.next_run_at,
                buffered_slot=buffered,
                due_at=min(due.next_run_at, now + BUFFER_RECHECK),
            )
        return Plan(fire=fire, next_run_at=due.next_run_at, due_at=due.next_run_at)
    latest, older, following = _passed(cron, due.next_run_at, now, due.catchup_window)
    skipped = 0
    missed = older
    if now - latest > due.catchup_window:
        missed += 1
    elif not running or due.overlap is Overlap.ALLOW:
        fire.append(latest)
    elif due.overlap is Overlap.BUFFER_ONE and buffered is None:
        buffered = latest
    else:
        skipped = 1
    due_at: datetime | None
    if buffered is not None:
        due_at = now + BUFFER_RECHECK if following is None else min(following, now + BUFFER_RECHECK)
    else:
        due_at = following
    return Plan(
        fire=fire,
        next_run_at=following,
        buffered_slot=buffered,
        due_at=due_at,
        skipped=skipped,
        missed=missed,
    )


def _passed(
    cron: CronSchedule, first: datetime, now: datetime, window: timedelta
) -> tuple[datetime, int, datetime | None]:
    """The latest slot at or before `now` (from `first`), how many passed before it, the next."""
    latest, older = first, 0
    for slot in cron.slots(first):
        if slot > now:
            return latest, older, slot
        latest, older = slot, older + 1
        if older >= MAX_COUNTED:
            break
    else:
        return latest, older, None
    # A long outage of a frequent schedule: find the latest slot from the window's start.
    start = max(latest, now - window - timedelta(seconds=1))
    for slot in cron.slots(start):
        if slot > now:
            return latest, older, slot
        latest = slot
    return latest, older, None
