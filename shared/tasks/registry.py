"""Task types: a name, a pydantic payload model and a handler, registered by decorator."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import ValidationFailed

P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True)
class TaskContext:
    """What a handler may know about the attempt it runs in."""

    task_id: str
    tenant_id: str
    attempt: int
    max_attempts: int


Handler = Callable[[Any, TaskContext], Any]


@dataclass(frozen=True)
class TaskType:
    name: str
    payload_model: type[BaseModel]
    handler: Handler
    diagnostic: bool = False


class TaskRegistry:
    """Maps type names to their payload model and handler."""

    def __init__(self) -> None:
        self._types: dict[str, TaskType] = {}

    def register(
        self, name: str, payload_model: type[P], *, diagnostic: bool = False
    ) -> Callable[[Callable[[P, TaskContext], Any]], Callable[[P, TaskContext], Any]]:
        def decorator(handler: Callable[[P, TaskContext], Any]) -> Callable[[P, TaskContext], Any]:
            if name in self._types:
                raise ValueError(f"task type {name!r} is already registered")
            self._types[name] = TaskType(name, payload_model, handler, diagnostic)
            return handler

        return decorator

    def names(self, *, include_diagnostic: bool = True) -> list[str]:
        return sorted(n for n, t in self._types.items() if include_diagnostic or not t.diagnostic)

    def get(self, name: str, *, include_diagnostic: bool = True) -> TaskType:
        task_type = self._types.get(name)
        if task_type is None or (task_type.diagnostic and not include_diagnostic):
            known = ", ".join(self.names(include_diagnostic=include_diagnostic))
            raise ValidationFailed(
                f"unknown task type {name!r}; known types: {known}", field="type"
            )
        return task_type

    def parse_payload(self, task_type: TaskType, payload: dict[str, Any]) -> BaseModel:
        """Validate a payload against its type's model; errors name the field."""
        try:
            return task_type.payload_model.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in ("payload", *first["loc"]))
            raise ValidationFailed(
                f"{path}: {first['msg']}",
                field=path,
                errors=[
                    {"field": ".".join(str(p) for p in ("payload", *e["loc"])), "message": e["msg"]}
                    for e in exc.errors()[:20]
                ],
            ) from exc


@functools.cache
def builtin_registry() -> TaskRegistry:
    """The registry with AIA's built-in task types."""
    from shared.tasks import builtin as handlers

    return handlers.registry
