"""Reading tasks back: one by id, or the caller's tasks newest first, page by page."""

from __future__ import annotations

from collections.abc import Mapping

from shared.errors import ValidationFailed
from shared.pages import page_request
from shared.tasks.models import TaskPage, TaskStatus, TaskView
from shared.tasks.repository import TaskRepository

# Filters beside the page parameters (shared.pages).
_FILTERS = frozenset({"status", "type"})


class StatusService:
    def __init__(self, repository: TaskRepository) -> None:
        self._repository = repository

    def counts(self, tenant_id: str) -> dict[str, int]:
        """How many of the caller's tasks are in each status."""
        return self._repository.count_by_status(tenant_id)

    def get(self, tenant_id: str, task_id: str) -> TaskView:
        task = self._repository.get(tenant_id, task_id)
        if task.result_from and task.status is TaskStatus.SUCCEEDED:
            # A parent that fanned out ends with its continuation's result.
            source = self._repository.get(tenant_id, task.result_from)
            task = task.model_copy(update={"result": source.result})
        view = TaskView.of(task)
        if task.join is not None:
            view.children = self._repository.children_by_status(tenant_id, task_id)
        return view

    def list(self, tenant_id: str, params: Mapping[str, str]) -> TaskPage:
        page = page_request(params, _FILTERS)
        status = None
        if params.get("status"):
            try:
                status = TaskStatus(params["status"])
            except ValueError as exc:
                allowed = ", ".join(s.value for s in TaskStatus)
                raise ValidationFailed(f"status must be one of {allowed}", field="status") from exc
        tasks, token = self._repository.list_tasks(
            tenant_id,
            status=status,
            task_type=params.get("type") or None,
            limit=page.limit,
            page_token=page.page_token,
        )
        return TaskPage(tasks=[TaskView.of(t) for t in tasks], next_page_token=token)
