"""Endpoint signing keys at rest: sealed with the task key ring, one data key per key.

Sealing needs only the public ring (`TaskSealer`), so the tenant API can create
and rotate keys without ever being able to read one back; opening needs the
private ring (`TaskOpener`), which only the delivery function holds. The wrapped
data key is bound to the tenant and the endpoint, and the sealed field to the
key's id and scheme: a database writer can neither move a key to another
endpoint nor make an Ed25519 seed serve as an HMAC secret.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from shared.errors import IntegrityError, KeyUnavailable
from shared.security.crypto import TaskOpener, TaskSealer
from shared.webhooks.models import StoredSecret
from shared.webhooks.signing import Scheme, SigningKey

if TYPE_CHECKING:
    from shared.webhooks.store import FirestoreWebhookStore

SECRET_FIELD = "webhook_secret"  # noqa: S105 - the sealed field's name, not a secret
# Both the old and the new key sign for this long after a rotation.
ROTATION_OVERLAP = timedelta(hours=24)


def _control(secret_id: str, scheme: Scheme) -> tuple[tuple[str, str], ...]:
    return (("secret_id", secret_id), ("signature", scheme.value))


def seal_key(
    sealer: TaskSealer, tenant_id: str, endpoint_id: str, key: SigningKey, now: datetime
) -> StoredSecret:
    secret_id = "sk_" + secrets.token_hex(8)
    task_key = sealer.new_task_key(tenant_id, endpoint_id, _control(secret_id, key.scheme))
    material = base64.b64encode(key.material).decode("ascii")
    return StoredSecret(
        secret_id=secret_id,
        data_key=task_key.wrapped,
        sealed=task_key.seal(SECRET_FIELD, material),
        public_key=key.public_key(),
        created_at=now,
    )


def open_key(
    opener: TaskOpener, tenant_id: str, endpoint_id: str, scheme: Scheme, stored: StoredSecret
) -> SigningKey:
    """The key material; `IntegrityError` if anything about the stored key was altered."""
    task_key = opener.open_task_key(
        tenant_id, endpoint_id, bytes(stored.data_key), _control(stored.secret_id, scheme)
    )
    material = task_key.open(SECRET_FIELD, bytes(stored.sealed))
    try:
        return SigningKey(scheme, base64.b64decode(material, validate=True))
    except (TypeError, ValueError) as exc:
        raise IntegrityError(f"endpoint {endpoint_id}: stored signing key is malformed") from exc


def rotated(
    current: Sequence[StoredSecret], new: StoredSecret, now: datetime
) -> list[StoredSecret]:
    """The key list after a rotation: the new key, and the one it replaces for 24 h.

    Only one old key is kept: rotating again within the overlap (say, because the
    new key leaked) retires the oldest at once, so a signature header carries at
    most two signatures.
    """
    live = sorted(
        (s for s in current if s.signs_at(now) and s.expires_at is None),
        key=lambda s: s.created_at,
        reverse=True,
    )
    kept = [new]
    if live:
        kept.append(live[0].model_copy(update={"expires_at": now + ROTATION_OVERLAP}))
    return kept


@dataclass(frozen=True)
class KeysRewrapped:
    scanned: int
    rewrapped: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (endpoint id, why)


def rewrap_endpoint_keys(
    store: FirestoreWebhookStore, opener: TaskOpener, *, batch_size: int = 200
) -> KeysRewrapped:
    """Re-wrap every endpoint signing key's data key under the ring's current key.

    Part of a key ring rotation (`aia keys rotate-data`): a key retired from the
    ring would otherwise leave endpoints unable to sign. Keys already under the
    current key are skipped unread, so runs converge; each endpoint is written
    only if unchanged since it was read (a rotation meanwhile: the next run).
    """
    scanned = rewrapped = 0
    unreadable: list[tuple[str, str]] = []
    after: str | None = None
    while True:
        page = store.endpoints_page(after, batch_size)
        for found in page:
            endpoint = found.value
            scanned += 1
            try:
                fresh = [
                    (s, opener.rewrap(endpoint.tenant_id, endpoint.endpoint_id, bytes(s.data_key)))
                    for s in endpoint.secrets
                ]
            except (IntegrityError, KeyUnavailable) as exc:
                unreadable.append((endpoint.endpoint_id, exc.code))
                continue
            if all(wrapped is None for _, wrapped in fresh):
                continue
            secrets = [
                s if wrapped is None else s.model_copy(update={"data_key": wrapped})
                for s, wrapped in fresh
            ]
            now = datetime.now(UTC)
            if store.replace_secrets(endpoint.endpoint_id, secrets, found.version, now):
                rewrapped += 1
        if len(page) < batch_size:
            return KeysRewrapped(scanned, rewrapped, unreadable)
        after = page[-1].value.endpoint_id
