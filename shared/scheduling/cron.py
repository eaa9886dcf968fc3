"""Cron expressions in an IANA time zone: validation, and the slots they name as UTC instants.

Five fields, minute precision (as Cloud Scheduler). cronsim evaluates them and
follows Debian's cron across daylight-saving changes, which docs/scheduling.md
states as the contract:

- a fixed local time that does not exist (spring forward) fires at the first
  minute after the gap: 02:30 Europe/Paris on the last Sunday of March fires
  at 03:00 CEST;
- a fixed local time that happens twice (fall back) fires once, at its first
  occurrence: 02:30 Europe/Paris on the last Sunday of October fires at
  02:30 CEST (00:30 UTC), not again at 02:30 CET;
- a wildcard hour (`*/30 * * * *`) follows elapsed time: the repeated hour
  fires twice, the skipped hour not at all.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

from shared.errors import ValidationFailed

CRON_FIELDS = 5
MAX_CRON_CHARS = 100


# Files of a system zoneinfo directory that name no zone of their own.
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@functools.cache
def _zone_names() -> frozenset[str]:
    # Only IANA names: ZoneInfo would also open "localtime" or any file under the zone dir.
    return frozenset(zoneinfo.available_timezones()) - _NOT_ZONES


def zone(name: str) -> zoneinfo.ZoneInfo:
    if name not in _zone_names():
        raise ValidationFailed(
            f"timezone {name[:64]!r} is not an IANA time zone name (e.g. Europe/Paris, UTC)",
            field="timezone",
        )
    return zoneinfo.ZoneInfo(name)


@dataclass(frozen=True)
class CronSchedule:
    expression: str
    zone: zoneinfo.ZoneInfo

    @classmethod
    def parse(cls, expression: str, timezone: str, *, now: datetime) -> CronSchedule:
        """A valid schedule that fires at least once after `now`; ValidationFailed otherwise."""
        tz = zone(timezone)
        if len(expression) > MAX_CRON_CHARS or len(expression.split()) != CRON_FIELDS:
            raise ValidationFailed(
                "cron must have 5 fields: minute hour day-of-month month day-of-week",
                field="cron",
            )
        try:
            CronSim(expression, now.astimezone(tz))
        except CronSimError as exc:
            raise ValidationFailed(f"cron: {exc}", field="cron") from exc
        schedule = cls(" ".join(expression.split()), tz)
        if schedule.after(now) is None:
            raise ValidationFailed("cron never fires (no such date)", field="cron")
        return schedule

    def slots(self, after: datetime) -> Iterator[datetime]:
        """Every slot strictly after `after`, as increasing UTC instants."""
        last = after.astimezone(UTC)
        try:
            for local in CronSim(self.expression, last.astimezone(self.zone)):
                slot = local.astimezone(UTC)
                # Started inside a repeated hour, cronsim can answer the first
                # occurrence of that hour, which is already past.
                if slot > last:
                    last = slot
                    yield slot
        except CronSimError:
            return  # no further date matches (cronsim gives up after a bounded search)

    def after(self, instant: datetime) -> datetime | None:
        """The first slot strictly after `instant`, or None if there is none."""
        return next(self.slots(instant), None)

    def upcoming(self, first: datetime, count: int) -> list[datetime]:
        """`first` and the slots after it: `count` in all."""
        runs = [first]
        for slot in self.slots(first):
            if len(runs) >= count:
                break
            runs.append(slot)
        return runs[:count]
