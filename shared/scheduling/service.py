"""The /schedules use cases: create, read, list, pause, resume, delete — the caller's only."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from shared import queries
from shared.config import Settings
from shared.errors import Unavailable, ValidationFailed
from shared.limits import check_depth
from shared.pages import page_request
from shared.scheduling.cron import CronSchedule
from shared.scheduling.models import ScheduleRequest
from shared.scheduling.schedules import (
    FirestoreScheduleRepository,
    ScheduleDocuments,
    ScheduleState,
    StoredSchedule,
)
from shared.tasks.registry import TaskRegistry, integral_floats_as_ints
from shared.tasks.submission import parse_request

# A start time belongs to a one-off task; a schedule's slots are its start times.
_NOT_IN_SCHEDULED_TASKS = ("run_at", "delay_s")
_MAX_CONFLICTS = 5


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _parse_schedule(body: dict[str, Any]) -> ScheduleRequest:
    """The schedule strictly, as JSON Schema reads it (a bool is no integer, "60" no number).

    The task's payload is left to its type's model (`parse_request`), as submit does.
    """
    shell = dict(body)
    task = body.get("task")
    if isinstance(task, dict) and isinstance(task.get("payload"), dict):
        shell["task"] = {**task, "payload": {}}
    try:
        return ScheduleRequest.model_validate_json(
            json.dumps(integral_floats_as_ints(shell)), strict=True
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ValidationFailed(f"{field}: {first['msg']}", field=field) from exc


class ScheduleService:
    def __init__(
        self,
        repository: FirestoreScheduleRepository,
        documents: ScheduleDocuments,
        registry: TaskRegistry,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._repository = repository
        self._documents = documents
        self._registry = registry
        self._settings = settings
        self._clock = clock

    def create(self, tenant_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ValidationFailed("request body must be a JSON object", field="body")
        check_depth(body, "body")
        task_body = body.get("task")
        if isinstance(task_body, dict):
            for name in _NOT_IN_SCHEDULED_TASKS:
                if name in task_body:
                    raise ValidationFailed(
                        f"task.{name}: a schedule's slots are its start times",
                        field=f"task.{name}",
                    )
        request = _parse_schedule(body)
        now = self._clock()
        cron = CronSchedule.parse(request.cron, request.timezone, now=now)
        task = self._parse_task(body["task"])
        schedule_id = uuid.uuid4().hex
        first_run = cron.after(now)
        assert first_run is not None  # parse() refuses a cron that never fires
        doc = {
            "tenant_id": tenant_id,
            "cron": cron.expression,
            "timezone": request.timezone,
            "overlap": request.overlap.value,
            "catchup_window_s": request.catchup_window_s,
            "state": ScheduleState.ACTIVE.value,
            **self._documents.seal(tenant_id, schedule_id, task),
            "next_run_at": first_run,
            "due_at": first_run,
            queries.INDEX_SHARD: queries.index_shard(schedule_id),
            "buffered_slot": None,
            "last_slot": None,
            "last_task_id": None,
            "fired": 0,
            "skipped": 0,
            "missed": 0,
            "last_error": None,
            "created_at": now,
            "updated_at": now,
        }
        return self._repository.create(schedule_id, doc).view()

    def _parse_task(self, task: dict[str, Any]) -> Any:
        """The task as submit would take it; errors name their field under `task.`."""
        try:
            return parse_request(task, self._registry, diagnostic=self._settings.diagnostic_tasks)
        except ValidationFailed as exc:
            field = "task" if exc.field in (None, "body") else f"task.{exc.field}"
            raise ValidationFailed(f"task.{exc.detail}", field=field) from exc

    def get(self, tenant_id: str, schedule_id: str) -> dict[str, Any]:
        return self._repository.get(tenant_id, schedule_id).view()

    def list(self, tenant_id: str, params: Mapping[str, str]) -> dict[str, Any]:
        wanted = page_request(params)
        found, token = self._repository.page(
            tenant_id, limit=wanted.limit, page_token=wanted.page_token
        )
        page: dict[str, Any] = {"schedules": [s.view() for s in found]}
        if token is not None:
            page["next_page_token"] = token
        return page

    def pause(self, tenant_id: str, schedule_id: str) -> dict[str, Any]:
        """Stop firing; a held (buffered) slot is dropped. Idempotent."""

        def change(stored: StoredSchedule, now: datetime) -> dict[str, Any] | None:
            if stored.state is ScheduleState.PAUSED:
                return None
            return {
                "state": ScheduleState.PAUSED.value,
                "next_run_at": None,
                "due_at": None,
                "buffered_slot": None,
                "updated_at": now,
            }

        return self._change(tenant_id, schedule_id, change)

    def resume(self, tenant_id: str, schedule_id: str) -> dict[str, Any]:
        """Fire again from the next slot after now: slots passed while paused never fire."""

        def change(stored: StoredSchedule, now: datetime) -> dict[str, Any] | None:
            if stored.state is ScheduleState.ACTIVE:
                return None
            following = stored.cron.after(now)
            if following is None:
                raise ValidationFailed("cron names no later slot", field="cron")
            return {
                "state": ScheduleState.ACTIVE.value,
                "next_run_at": following,
                "due_at": following,
                "updated_at": now,
            }

        return self._change(tenant_id, schedule_id, change)

    def delete(self, tenant_id: str, schedule_id: str) -> None:
        """No slot fires after this returns, except one a ticker was submitting at that moment."""
        self._repository.delete(self._repository.get(tenant_id, schedule_id))

    def _change(
        self,
        tenant_id: str,
        schedule_id: str,
        change: Callable[[StoredSchedule, datetime], dict[str, Any] | None],
    ) -> dict[str, Any]:
        # Conditioned on the document as read: a ticker advancing it meanwhile is not overwritten.
        for _ in range(_MAX_CONFLICTS):
            stored = self._repository.get(tenant_id, schedule_id)
            changes = change(stored, self._clock())
            if changes is None:
                return stored.view()
            if self._repository.update(stored, changes):
                merged = StoredSchedule(schedule_id, {**stored.doc, **changes}, None)
                return merged.view()
        raise Unavailable("the schedule kept changing; retry shortly")
