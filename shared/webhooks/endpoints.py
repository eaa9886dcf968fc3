"""The tenant's webhook API: register, list, delete and rotate endpoints; deliveries and replays.

Runs with the public key ring only: it seals new signing keys and can never read
one back. A key is shown once, in the answer that created it. Another tenant's
endpoint or delivery is a 404, as a missing one is.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import (
    Conflict,
    DeliveryNotReplayable,
    NotFound,
    TooManyWebhooks,
    Unavailable,
    ValidationFailed,
)
from shared.limits import check_depth
from shared.security.crypto import TaskSealer
from shared.webhooks.egress import Target, UrlRefused
from shared.webhooks.keys import rotated, seal_key
from shared.webhooks.models import (
    DELIVERY_ID_PATTERN,
    ENDPOINT_ID_PATTERN,
    MAX_ENDPOINTS_PER_TENANT,
    TASK_EVENTS,
    Delivery,
    DeliveryStatus,
    DeliveryView,
    Endpoint,
    EndpointKind,
    EndpointRequest,
    EndpointStatus,
    EndpointView,
    SigningKeyRequest,
)
from shared.webhooks.outbox import CATCHUP_WINDOW, Notifier
from shared.webhooks.signing import SigningKey
from shared.webhooks.store import FirestoreWebhookStore

DEFAULT_PAGE = 20
MAX_PAGE = 100
_PAGE_PARAMS = frozenset({"limit", "page_token"})
_ENDPOINT_ID = re.compile(ENDPOINT_ID_PATTERN)
_DELIVERY_ID = re.compile(DELIVERY_ID_PATTERN)
_CONFLICT_RETRIES = 5
M = TypeVar("M", bound=BaseModel)

UrlCheck = Callable[[str], Target]


def signer_id(sealer: TaskSealer, tenant_id: str) -> str:
    """The id of the tenant's per-task signing key: one per tenant, found without a query."""
    return "tk_" + sealer.digest(b"aia webhook signer\0" + tenant_id.encode())[:32]


def refused(field: str, exc: UrlRefused) -> ValidationFailed:
    """A refused URL as a 422 naming the field and the rule."""
    return ValidationFailed(f"{field}: {exc.rule}: {exc.detail}", field=field, rule=exc.rule)


def parse(model: type[M], body: Any) -> M:
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object", field="body")
    check_depth(body, "body")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ValidationFailed(f"{field}: {first['msg']}", field=field) from exc


def page_params(params: Mapping[str, str]) -> tuple[int, str | None]:
    unknown = sorted(set(params) - _PAGE_PARAMS)
    if unknown:
        raise ValidationFailed(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    limit = DEFAULT_PAGE
    if params.get("limit"):
        try:
            limit = int(params["limit"])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationFailed(f"limit must be 1-{MAX_PAGE}", field="limit")
    token = params.get("page_token")
    if token is not None and not token:
        raise ValidationFailed("page_token must not be empty", field="page_token")
    return limit, token


class EndpointService:
    def __init__(
        self,
        store: FirestoreWebhookStore,
        sealer: TaskSealer,
        check_url: UrlCheck,
        notifier: Notifier,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._check_url = check_url
        self._notifier = notifier
        self._clock = clock

    # -- endpoints -----------------------------------------------------------

    def register(self, tenant_id: str, body: Any) -> dict[str, Any]:
        request = parse(EndpointRequest, body)
        try:
            self._check_url(request.url)
        except UrlRefused as exc:
            raise refused("url", exc) from exc
        if self._store.count_endpoints(tenant_id) >= MAX_ENDPOINTS_PER_TENANT:
            raise TooManyWebhooks(
                f"a tenant may register at most {MAX_ENDPOINTS_PER_TENANT} webhooks; "
                "delete one first"
            )
        now = self._clock()
        endpoint_id = "ep_" + uuid.uuid4().hex
        key = SigningKey.generate(request.signature)
        endpoint = Endpoint(
            endpoint_id=endpoint_id,
            tenant_id=tenant_id,
            url=request.url,
            events=tuple(request.events),
            signature=request.signature,
            description=request.description,
            created_at=now,
            updated_at=now,
            secrets=(seal_key(self._sealer, tenant_id, endpoint_id, key, now),),
        )
        # Instances may trust a cached "no endpoint" for this long: the sweep then
        # creates the events of tasks that finished meanwhile.
        self._store.create_endpoint(endpoint, catchup_due_at=now + CATCHUP_WINDOW)
        return _created(endpoint, key, now)

    def create_signing_key(self, tenant_id: str, body: Any) -> dict[str, Any]:
        """The key that signs deliveries to a submit's own `webhook_url` (one per tenant)."""
        request = parse(SigningKeyRequest, body)
        now = self._clock()
        endpoint_id = signer_id(self._sealer, tenant_id)
        key = SigningKey.generate(request.signature)
        endpoint = Endpoint(
            endpoint_id=endpoint_id,
            tenant_id=tenant_id,
            kind=EndpointKind.TASK,
            events=tuple(TASK_EVENTS.values()),
            signature=request.signature,
            description="signs deliveries to the webhook_url of a submit",
            created_at=now,
            updated_at=now,
            secrets=(seal_key(self._sealer, tenant_id, endpoint_id, key, now),),
        )
        try:
            self._store.create_endpoint(endpoint, catchup_due_at=None)
        except Conflict as exc:
            raise Conflict(
                f"the per-task signing key exists ({endpoint_id}); "
                f"rotate it with POST /webhooks/{endpoint_id}:rotate-secret",
                field="signature",
            ) from exc
        return _created(endpoint, key, now)

    def list(self, tenant_id: str, params: Mapping[str, str]) -> dict[str, Any]:
        limit, token = page_params(params)
        endpoints, next_token = self._store.list_endpoints(tenant_id, limit, token)
        now = self._clock()
        page: dict[str, Any] = {"webhooks": [EndpointView.of(e, now).to_json() for e in endpoints]}
        if next_token:
            page["next_page_token"] = next_token
        return page

    def get(self, tenant_id: str, endpoint_id: str) -> dict[str, Any]:
        endpoint, _ = self._owned(tenant_id, endpoint_id)
        return EndpointView.of(endpoint, self._clock()).to_json()

    def delete(self, tenant_id: str, endpoint_id: str) -> None:
        for _ in range(_CONFLICT_RETRIES):
            _, version = self._owned(tenant_id, endpoint_id)
            if self._store.delete_endpoint(endpoint_id, version):
                return
        raise Unavailable("the webhook kept changing while it was deleted")

    def rotate(self, tenant_id: str, endpoint_id: str) -> dict[str, Any]:
        """A new key; the one it replaces keeps signing beside it for 24 h."""
        for _ in range(_CONFLICT_RETRIES):
            endpoint, version = self._owned(tenant_id, endpoint_id)
            now = self._clock()
            key = SigningKey.generate(endpoint.signature)
            new = seal_key(self._sealer, tenant_id, endpoint_id, key, now)
            secrets = rotated(endpoint.secrets, new, now)
            if self._store.replace_secrets(endpoint_id, secrets, version, now):
                return _created(endpoint.model_copy(update={"secrets": tuple(secrets)}), key, now)
        raise Unavailable("the webhook kept changing while its key was rotated")

    def _owned(self, tenant_id: str, endpoint_id: str) -> tuple[Endpoint, Any]:
        if not _ENDPOINT_ID.match(endpoint_id):
            raise NotFound(f"no webhook {endpoint_id!r}")
        got = self._store.get_endpoint(endpoint_id)
        if got is None or got.value.tenant_id != tenant_id:
            raise NotFound(f"no webhook {endpoint_id!r}")
        return got.value, got.version

    # -- deliveries ----------------------------------------------------------

    def deliveries(
        self, tenant_id: str, endpoint_id: str, params: Mapping[str, str]
    ) -> dict[str, Any]:
        limit, token = page_params(params)
        self._owned(tenant_id, endpoint_id)
        found, next_token = self._store.list_deliveries(tenant_id, endpoint_id, limit, token)
        page: dict[str, Any] = {"deliveries": [DeliveryView.of(d).to_json() for d in found]}
        if next_token:
            page["next_page_token"] = next_token
        return page

    def replay(self, tenant_id: str, delivery_id: str) -> tuple[dict[str, Any], bool]:
        """Send a settled delivery again, same `webhook-id`, on a fresh retry schedule.

        Returns its view and whether the attempt was dispatched at once (otherwise
        the sweep sends it within a minute). Idempotent while it is pending.
        """
        if not _DELIVERY_ID.match(delivery_id):
            raise NotFound(f"no delivery {delivery_id!r}")
        for _ in range(_CONFLICT_RETRIES):
            got = self._store.get_delivery(delivery_id)
            if got is None or got.value.tenant_id != tenant_id:
                raise NotFound(f"no delivery {delivery_id!r}")
            delivery: Delivery = got.value
            if delivery.status is DeliveryStatus.PENDING:
                return DeliveryView.of(delivery).to_json(), True
            endpoint = self._store.get_endpoint(delivery.endpoint_id)
            if endpoint is None:
                raise DeliveryNotReplayable(f"the webhook of delivery {delivery_id} was deleted")
            if endpoint.value.status is EndpointStatus.DISABLED:
                reason = endpoint.value.disabled_reason or "disabled"
                raise DeliveryNotReplayable(
                    f"the webhook of delivery {delivery_id} is disabled ({reason})"
                )
            now = self._clock()
            replayed = delivery.model_copy(
                update={
                    "status": DeliveryStatus.PENDING,
                    "schedule_base": delivery.attempt_count,
                    "next_attempt_at": now,
                    "replays": delivery.replays + 1,
                    "reason": None,
                    "updated_at": now,
                }
            )
            if self._store.save_delivery(replayed, got.version):
                dispatched = self._notifier.delivery(tenant_id, delivery_id)
                return DeliveryView.of(replayed).to_json(), dispatched
        raise Unavailable("the delivery kept changing while it was replayed")


def _created(endpoint: Endpoint, key: SigningKey, now: datetime) -> dict[str, Any]:
    answer = EndpointView.of(endpoint, now).to_json()
    # Shown once: the secret is never readable again (the API cannot open it).
    answer["secret" if key.public_key() is None else "public_key"] = key.shown()
    return answer


class TaskWebhookCheck:
    """What a submit's `webhook_url` must pass: the egress rules, and a signing key to sign with.

    The tenant's key is looked up once per `cache_s` per instance once found.
    """

    def __init__(
        self,
        store: FirestoreWebhookStore,
        sealer: TaskSealer,
        check_url: UrlCheck,
        *,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._check_url = check_url
        self._cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._found: dict[str, float] = {}

    def __call__(self, tenant_id: str, url: str) -> None:
        try:
            self._check_url(url)
        except UrlRefused as exc:
            raise refused("webhook_url", exc) from exc
        if not self._has_signer(tenant_id):
            raise ValidationFailed(
                "webhook_url: no-signing-key: deliveries to a task's own URL are signed with "
                "the tenant's per-task key; create it first with POST /webhooks/signing-key",
                field="webhook_url",
                rule="no-signing-key",
            )

    def _has_signer(self, tenant_id: str) -> bool:
        now = self._clock()
        with self._lock:
            seen = self._found.get(tenant_id)
        if seen is not None and now - seen < self._cache_s:
            return True
        if self._store.get_endpoint(signer_id(self._sealer, tenant_id)) is None:
            return False
        with self._lock:
            if len(self._found) > 10_000:
                self._found.clear()
            self._found[tenant_id] = now
        return True
