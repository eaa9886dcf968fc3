"""Reading tasks back: one by id, or the caller's tasks newest first, page by page."""

from __future__ import annotations

from collections.abc import Mapping

from shared.errors import ValidationFailed
from shared.tasks.models import TaskPage, TaskStatus, TaskView
from shared.tasks.repository import TaskRepository

DEFAULT_PAGE = 20
MAX_PAGE = 100
_LIST_PARAMS = frozenset({"status", "type", "limit", "page_token"})


class StatusService:
    def __init__(self, repository: TaskRepository) -> None:
        self._repository = repository

    def counts(self, tenant_id: str) -> dict[str, int]:
        """How many of the caller's tasks are in each status."""
        return self._repository.count_by_status(tenant_id)

    def get(self, tenant_id: str, task_id: str) -> TaskView:
        return TaskView.of(self._repository.get(tenant_id, task_id))

    def list(self, tenant_id: str, params: Mapping[str, str]) -> TaskPage:
        unknown = sorted(set(params) - _LIST_PARAMS)
        if unknown:
            raise ValidationFailed(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
        empty = sorted(name for name, value in params.items() if not value)
        if empty:
            raise ValidationFailed(f"{empty[0]} must not be empty", field=empty[0])
        status = None
        if params.get("status"):
            try:
                status = TaskStatus(params["status"])
            except ValueError as exc:
                allowed = ", ".join(s.value for s in TaskStatus)
                raise ValidationFailed(f"status must be one of {allowed}", field="status") from exc
        limit = DEFAULT_PAGE
        if params.get("limit"):
            try:
                limit = int(params["limit"])
            except ValueError:
                limit = 0
            if not 1 <= limit <= MAX_PAGE:
                raise ValidationFailed(f"limit must be 1-{MAX_PAGE}", field="limit")
        tasks, token = self._repository.list_tasks(
            tenant_id,
            status=status,
            task_type=params.get("type") or None,
            limit=limit,
            page_token=params.get("page_token") or None,
        )
        return TaskPage(tasks=[TaskView.of(t) for t in tasks], next_page_token=token)
