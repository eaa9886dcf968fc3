"""AIA's Python client: submit tasks, read and wait for them, replay dead letters."""

from __future__ import annotations

from aia_client._core import ConfigurationError, PollSchedule, RetryPolicy
from aia_client._version import __version__
from aia_client.client import AsyncClient, Client
from aia_client.errors import (
    AIAError,
    APIError,
    BadRequest,
    BudgetExhausted,
    Conflict,
    InvalidResponse,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
    ValidationError,
    WaitTimeout,
)
from aia_client.models import (
    TERMINAL_STATUSES,
    Progress,
    RateLimit,
    SubmittedTask,
    Task,
    TaskError,
    TaskStatus,
    Usage,
)

__all__ = [
    "TERMINAL_STATUSES",
    "AIAError",
    "APIError",
    "AsyncClient",
    "BadRequest",
    "BudgetExhausted",
    "Client",
    "ConfigurationError",
    "Conflict",
    "InvalidResponse",
    "NotFound",
    "PayloadTooLarge",
    "PollSchedule",
    "Progress",
    "RateLimit",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "SubmittedTask",
    "Task",
    "TaskError",
    "TaskStatus",
    "TransportError",
    "Unauthorized",
    "Usage",
    "ValidationError",
    "WaitTimeout",
    "__version__",
]
