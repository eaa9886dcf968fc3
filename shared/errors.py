"""The one error vocabulary of AIA.

Each error carries its HTTP status and whether a worker should retry it; the
HTTP mapping lives in `shared.http`, the Pub/Sub ack/nack mapping in
`shared.events`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AIAError(Exception):
    """Base of every error AIA raises on purpose."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    code: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = True

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        """RFC 7807 body (without `instance`, which the transport adds)."""
        body: dict[str, Any] = {
            "type": f"https://aia.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        return body


class ConfigurationError(AIAError):
    title = "Service misconfigured"
    code = "configuration"
    retryable = True


class BadRequest(AIAError):
    status = 400
    title = "Malformed request"
    code = "bad-request"
    retryable = False


class Unauthorized(AIAError):
    status = 401
    title = "Missing or invalid credentials"
    code = "unauthorized"
    retryable = False


class NotFound(AIAError):
    status = 404
    title = "Not found"
    code = "not-found"
    retryable = False


class MethodNotAllowed(AIAError):
    status = 405
    title = "Method not allowed"
    code = "method-not-allowed"
    retryable = False

    def __init__(self, detail: str, *, allowed: tuple[str, ...]) -> None:
        super().__init__(detail)
        self.allowed = allowed


class Conflict(AIAError):
    status = 409
    title = "Conflict with the resource's state"
    code = "conflict"
    retryable = False


class NotReplayable(Conflict):
    title = "Task cannot be replayed"
    code = "not-replayable"


class DeliveryNotReplayable(Conflict):
    title = "Webhook delivery cannot be replayed"
    code = "delivery-not-replayable"


class TooManyWebhooks(Conflict):
    title = "Too many webhooks"
    code = "too-many-webhooks"


class PayloadTooLarge(AIAError):
    status = 413
    title = "Request body too large"
    code = "payload-too-large"
    retryable = False


class NestingTooDeep(BadRequest):
    title = "JSON nested too deeply"
    code = "nesting-too-deep"


class UnsupportedMediaType(AIAError):
    status = 415
    title = "Unsupported media type"
    code = "unsupported-media-type"
    retryable = False


class ValidationFailed(AIAError):
    status = 422
    title = "Validation failed"
    code = "validation"
    retryable = False


class IdempotencyMismatch(AIAError):
    status = 422
    title = "Idempotency key reused with a different request"
    code = "idempotency-mismatch"
    retryable = False


class Unavailable(AIAError):
    """A dependency did not answer in time or failed transiently; the caller may retry."""

    status = 503
    title = "Dependency unavailable"
    code = "unavailable"
    retryable = True

    def __init__(self, detail: str, *, retry_after_s: int = 1, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after_s = retry_after_s


class IntegrityError(AIAError):
    """Stored data failed authentication (tamper, swap) or its key is missing."""

    status = 500
    title = "Stored data failed its integrity check"
    code = "integrity"
    retryable = False


class KeyUnavailable(AIAError):
    """Data is wrapped under a key this instance's ring lacks (e.g. mid-rotation deploy)."""

    status = 503
    title = "Decryption key not available here"
    code = "key-unavailable"
    retryable = True


# Worker-side outcomes.


class TaskFailure(AIAError):
    """A handler's attempt failed; `retryable` decides whether it runs again."""

    code = "task-failed"
    title = "Task attempt failed"


class RetryableError(TaskFailure):
    """Raised by handlers for transient failures; the attempt is retried."""

    retryable = True


class NonRetryable(TaskFailure):
    """Raised by handlers to fail the task at once, without further attempts."""

    retryable = False


class ResultTooLarge(NonRetryable):
    code = "result-too-large"
    title = "Task result too large to store"


class ResultInvalid(NonRetryable):
    """The handler returned something AIA cannot store: not JSON, or nested too deeply."""

    code = "result-invalid"
    title = "Task result cannot be stored"


class HandlerCrashed(TaskFailure):
    """The process running the handler died (a crash, or killed for memory)."""

    code = "handler-crashed"
    title = "Task handler process died"
    retryable = True


class Undeliverable(NonRetryable):
    """A stored task that no delivery can start (unreadable document, unknown type)."""

    code = "undeliverable"
    title = "Task cannot be started"


class TaskTimeout(TaskFailure):
    code = "timeout"
    title = "Task attempt exceeded its timeout"
    retryable = True


class TaskBusy(AIAError):
    """Another delivery holds a live lease on the task."""

    status = 409
    title = "Task is being processed"
    code = "busy"
    retryable = True


class StartDeferred(AIAError):
    """A stored task cannot start yet (e.g. a key or type a rolling deploy has not brought)."""

    status = 503
    title = "Task cannot start on this instance yet"
    code = "start-deferred"
    retryable = True
