"""API keys: random, shown once, stored as a hash with their tenant, revocable."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from typing import Any, Protocol

from shared.errors import NotFound, Unauthorized, ValidationFailed
from shared.queries import API_KEYS
from shared.tasks.models import ApiKeyRecord

KEY_PREFIX = "aia"
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_KEY_PATTERN = re.compile(r"^aia_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_KEY_ID_PATTERN = re.compile(r"[0-9a-f]{16}")


def _hash_secret(secret: str) -> str:
    # The secret carries 256 random bits, so a fast unsalted hash is not guessable.
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_tenant(tenant_id: str) -> str:
    if not TENANT_PATTERN.match(tenant_id):
        raise ValidationFailed(
            "tenant must be 1-63 characters of a-z, 0-9, '.', '_' or '-', starting alphanumeric",
            field="tenant",
        )
    return tenant_id


class ApiKeyStore(Protocol):
    def get(self, key_id: str) -> ApiKeyRecord | None: ...
    def add(self, record: ApiKeyRecord) -> None: ...
    def revoke(self, key_id: str, when: datetime) -> None: ...


class FirestoreApiKeyStore:
    def __init__(self, db: Any) -> None:
        self._db = db

    def get(self, key_id: str) -> ApiKeyRecord | None:
        from shared.clients import AUTH_READ

        snap = self._db.collection(API_KEYS).document(key_id).get(**AUTH_READ.kwargs())
        if not snap.exists:
            return None
        return ApiKeyRecord.model_validate({"key_id": key_id, **snap.to_dict()})

    def add(self, record: ApiKeyRecord) -> None:
        data = record.model_dump(exclude={"key_id"})
        self._db.collection(API_KEYS).document(record.key_id).create(data)

    def revoke(self, key_id: str, when: datetime) -> None:
        from google.api_core.exceptions import NotFound as DocumentMissing

        try:
            self._db.collection(API_KEYS).document(key_id).update({"revoked_at": when})
        except DocumentMissing as exc:
            raise NotFound(f"no API key {key_id}") from exc


class ApiKeys:
    """Issues, checks and revokes keys against an `ApiKeyStore`."""

    def __init__(self, store: ApiKeyStore) -> None:
        self._store = store

    def create(self, tenant_id: str) -> tuple[str, str]:
        """A new key for `tenant_id`: returns (key_id, key). The key is never stored."""
        validate_tenant(tenant_id)
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        self._store.add(
            ApiKeyRecord(
                key_id=key_id,
                tenant_id=tenant_id,
                secret_hash=_hash_secret(secret),
                created_at=datetime.now(UTC),
            )
        )
        return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"

    def revoke(self, key_id: str) -> None:
        if not _KEY_ID_PATTERN.fullmatch(key_id):
            raise NotFound(f"no API key {key_id!r}: key ids are 16 hex digits")
        self._store.revoke(key_id, datetime.now(UTC))

    def authenticate(self, key: str) -> str:
        """The tenant owning `key`; Unauthorized for anything else."""
        match = _KEY_PATTERN.match(key)
        if not match:
            raise Unauthorized("API key is malformed", token_given=True)
        key_id, secret = match.groups()
        record = self._store.get(key_id)
        # Compare even when the record is missing so timing says nothing about ids.
        expected = record.secret_hash if record else _hash_secret("")
        valid = hmac.compare_digest(expected, _hash_secret(secret))
        if record is None or not valid or record.revoked_at is not None:
            raise Unauthorized("API key is invalid or revoked", token_given=True)
        return record.tenant_id
