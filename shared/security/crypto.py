"""Envelope encryption of task data: a fresh data key per task, wrapped by the key ring.

Bodies (payload, result, error) are AES-256-GCM under the task's data key, with
associated data binding tenant, task, field and format version. The data key
is wrapped by the ring's current key: hybrid ML-KEM-768 + X25519 (public keys
suffice to wrap) or Fernet. Wire formats are specified in `docs/security.md`.
Every failure to authenticate is an `IntegrityError` and a security log event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import struct
from collections.abc import Callable
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.errors import ConfigurationError, IntegrityError, KeyUnavailable, ValidationFailed
from shared.security.keyring import (
    FERNET,
    HYBRID,
    KEY_ID_PATTERN,
    FernetKey,
    HybridKey,
    KeyRing,
    RingKey,
    generate_keyring,
    rotate_keyring,
)

__all__ = [
    "CONTROL_FIELDS",
    "FERNET",
    "HYBRID",
    "KeyRing",
    "TaskKey",
    "TaskOpener",
    "TaskSealer",
    "generate_keyring",
    "key_id_of",
    "rotate_keyring",
]

security_log = logging.getLogger("aia.security")

DATA_KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16

# Wrapped data key envelope: magic, version, scheme id, key id length, key id, body.
ENVELOPE_MAGIC: Final = 0xAE
ENVELOPE_VERSION: Final = 1
SCHEME_IDS: Final[dict[str, int]] = {HYBRID: 0x01, FERNET: 0x02}
SCHEME_NAMES: Final[dict[int, str]] = {v: k for k, v in SCHEME_IDS.items()}
MLKEM768_CIPHERTEXT_BYTES: Final = 1088
X25519_BYTES: Final = 32
HYBRID_BODY_BYTES: Final = MLKEM768_CIPHERTEXT_BYTES + X25519_BYTES + DATA_KEY_BYTES + TAG_BYTES
# Fernet token of a 64-byte plaintext: version 1, time 8, IV 16, CBC 80, HMAC 32.
FERNET_BODY_BYTES: Final = 1 + 8 + 16 + 80 + 32
_BODY_BYTES: Final = {HYBRID: HYBRID_BODY_BYTES, FERNET: FERNET_BODY_BYTES}

# Sealed field blob: magic, version, nonce, AES-GCM ciphertext and tag.
# Version 2 also binds the task's control fields (what steers its execution);
# version 1 blobs (written before that) stay readable.
BLOB_MAGIC: Final = 0xAD
BLOB_VERSION: Final = 2
BLOB_HEADER: Final = bytes((BLOB_MAGIC, BLOB_VERSION))
LEGACY_BLOB_HEADER: Final = bytes((BLOB_MAGIC, 1))
BLOB_OVERHEAD: Final = len(BLOB_HEADER) + NONCE_BYTES + TAG_BYTES
# The control fields a version-2 blob binds, in this order.
CONTROL_FIELDS: Final = ("type", "max_attempts", "timeout_s")

Control = tuple[tuple[str, str], ...]

_HYBRID_INFO: Final = b"AIA hybrid-mlkem768-x25519 wrap v1"
_FERNET_BINDING_LABEL: Final = b"AIA fernet wrap v1"
_WRAP_AAD_LABEL: Final = b"AIA wrapped data key"
_BLOB_AAD_LABEL: Final = b"AIA sealed field"

_Fail = Callable[[str], IntegrityError]  # builds (and logs) the error for one unwrap


class TaskKey:
    """One task's data key: seals and opens that task's fields. Never stored in the clear."""

    __slots__ = ("_aead", "_context", "_control", "key_id", "task_id", "tenant_id", "wrapped")

    def __init__(
        self,
        tenant_id: str,
        task_id: str,
        key_id: str,
        data_key: bytes,
        wrapped: bytes,
        *,
        control: Control = (),
    ) -> None:
        self.tenant_id = tenant_id
        self.task_id = task_id
        self.key_id = key_id
        self.wrapped = wrapped
        self._aead = AESGCM(data_key)
        self._context = _context(tenant_id, task_id)
        self._control = b"".join(_lp(name) + _lp(value) for name, value in control)

    def __repr__(self) -> str:
        return f"TaskKey(tenant={self.tenant_id!r}, task={self.task_id!r}, key={self.key_id!r})"

    def seal(self, field: str, value: Any) -> bytes:
        """Encrypt a JSON-serialisable value for `field` of this task."""
        try:
            plaintext = json.dumps(
                value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError) as exc:
            raise ValidationFailed(
                f"{field} is not JSON-serialisable: {type(exc).__name__}", field=field
            ) from None
        nonce = os.urandom(NONCE_BYTES)
        return BLOB_HEADER + nonce + self._aead.encrypt(nonce, plaintext, self._aad(field))

    def open(self, field: str, blob: bytes) -> Any:
        """Decrypt `field` of this task; `IntegrityError` if it was altered or belongs elsewhere."""
        if len(blob) < BLOB_OVERHEAD or blob[:2] not in (BLOB_HEADER, LEGACY_BLOB_HEADER):
            raise self._failure("malformed sealed field", field)
        nonce = blob[2 : 2 + NONCE_BYTES]
        aad = self._aad(field) if blob[:2] == BLOB_HEADER else self._legacy_aad(field)
        try:
            plaintext = self._aead.decrypt(nonce, blob[2 + NONCE_BYTES :], aad)
        except InvalidTag:
            raise self._failure("sealed field failed authentication", field) from None
        try:
            return json.loads(plaintext.decode("utf-8", "surrogatepass"))
        except ValueError:  # authenticated yet not our JSON: a bug, never to be returned
            raise self._failure("sealed field does not hold JSON", field) from None

    def _aad(self, field: str) -> bytes:
        return _BLOB_AAD_LABEL + BLOB_HEADER + self._context + self._control + _lp(field)

    def _legacy_aad(self, field: str) -> bytes:
        return _BLOB_AAD_LABEL + LEGACY_BLOB_HEADER + self._context + _lp(field)

    def _failure(self, reason: str, field: str) -> IntegrityError:
        return _integrity_failure(
            reason, tenant_id=self.tenant_id, task_id=self.task_id, key_id=self.key_id, field=field
        )


class TaskSealer:
    """Creates task keys under the ring's current key; needs public keys only."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self._current = ring.current
        self._digest_key = ring.digest_key

    @property
    def current_key_id(self) -> str:
        return self.ring.current_key_id

    def new_task_key(self, tenant_id: str, task_id: str, control: Control = ()) -> TaskKey:
        """A fresh random data key for a new task, wrapped under the current key.

        `control` (name, value) pairs are bound into every field the key seals:
        a sealed payload cannot be steered to another type or limit.
        """
        data_key = os.urandom(DATA_KEY_BYTES)
        wrapped = _wrap(self._current, tenant_id, task_id, data_key)
        return TaskKey(tenant_id, task_id, self._current.key_id, data_key, wrapped, control=control)

    def digest(self, data: bytes) -> str:
        """Keyed hash (HMAC-SHA256, hex) of client data: reveals nothing about low-entropy input."""
        return hmac.new(self._digest_key, data, hashlib.sha256).hexdigest()


class TaskOpener(TaskSealer):
    """Opens stored task keys and re-wraps them; needs the private ring."""

    def __init__(self, ring: KeyRing) -> None:
        if ring.encrypt_only:
            raise ConfigurationError(
                "this key ring is public-only (the submit function's ring) and cannot decrypt"
            )
        if not ring.can_decrypt():
            raise ConfigurationError(
                f"key ring cannot decrypt: current key {ring.current_key_id!r} has no private key"
            )
        super().__init__(ring)

    def open_task_key(
        self, tenant_id: str, task_id: str, wrapped: bytes, control: Control = ()
    ) -> TaskKey:
        """Unwrap a stored data key; `IntegrityError` on tamper or swap.

        A key id missing from the ring is `KeyUnavailable` (a deploy still under way).
        """
        key_id, data_key = self._unwrap(tenant_id, task_id, wrapped)
        return TaskKey(tenant_id, task_id, key_id, data_key, bytes(wrapped), control=control)

    def rewrap(self, tenant_id: str, task_id: str, wrapped: bytes) -> bytes | None:
        """The data key wrapped under the current key, or None if it already is.

        Bodies stay valid: the data key itself does not change. An envelope
        already naming the current key is skipped unread, so converged runs
        cost no KEM operation; it is authenticated when it is next opened.
        """
        if _parse_header(wrapped, tenant_id, task_id)[0] == self.current_key_id:
            return None
        _, data_key = self._unwrap(tenant_id, task_id, wrapped)
        return _wrap(self._current, tenant_id, task_id, data_key)

    def _unwrap(self, tenant_id: str, task_id: str, wrapped: bytes) -> tuple[str, bytes]:
        key_id, scheme, body_at = _parse_header(wrapped, tenant_id, task_id)
        key = self.ring.get(key_id)

        def fail(reason: str) -> IntegrityError:
            return _integrity_failure(reason, tenant_id=tenant_id, task_id=task_id, key_id=key_id)

        if key is None:
            # Usually a ring deployed later than the data it must read: retryable, not tamper.
            security_log.warning(
                "data key is wrapped under key %r, which this ring lacks",
                key_id,
                extra={
                    "security_event": "key_unavailable",
                    "tenant_id": tenant_id,
                    "task_id": task_id,
                    "key_id": key_id,
                },
            )
            raise KeyUnavailable(
                f"data key is wrapped under key {key_id!r}, which is not in this key ring"
            )
        if key.scheme != scheme:
            raise fail(f"wrapped data key claims scheme {scheme!r} but key {key_id!r} is not")
        aad = _wrap_aad(wrapped[:body_at], tenant_id, task_id)
        body = wrapped[body_at:]
        if isinstance(key, HybridKey):
            return key_id, _unwrap_hybrid(key, body, aad, fail)
        return key_id, _unwrap_fernet(key, body, aad, fail)


def key_id_of(wrapped: bytes) -> str:
    """The key id a wrapped data key names (rotation progress); `IntegrityError` if malformed."""
    return _parse_header(wrapped, None, None)[0]


def _wrap(key: RingKey, tenant_id: str, task_id: str, data_key: bytes) -> bytes:
    header = _header(key)
    aad = _wrap_aad(header, tenant_id, task_id)
    if isinstance(key, HybridKey):
        return header + _wrap_hybrid(key, data_key, aad)
    return header + _wrap_fernet(key, data_key, aad)


def _wrap_hybrid(key: HybridKey, data_key: bytes, aad: bytes) -> bytes:
    mlkem_secret, mlkem_ciphertext = key.mlkem_public.encapsulate()
    ephemeral = x25519.X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    x25519_secret = ephemeral.exchange(key.x25519_public)
    wrap_key, nonce = _combine(
        mlkem_secret, x25519_secret, mlkem_ciphertext, ephemeral_public, key.fingerprint
    )
    return mlkem_ciphertext + ephemeral_public + AESGCM(wrap_key).encrypt(nonce, data_key, aad)


def _unwrap_hybrid(key: HybridKey, body: bytes, aad: bytes, fail: _Fail) -> bytes:
    if key.mlkem_private is None or key.x25519_private is None:
        raise fail(f"key {key.key_id!r} in this key ring has no private key")
    if len(body) != HYBRID_BODY_BYTES:
        raise fail("malformed wrapped data key")
    mlkem_ciphertext = body[:MLKEM768_CIPHERTEXT_BYTES]
    ephemeral_public = body[MLKEM768_CIPHERTEXT_BYTES : MLKEM768_CIPHERTEXT_BYTES + X25519_BYTES]
    sealed = body[MLKEM768_CIPHERTEXT_BYTES + X25519_BYTES :]
    try:
        # A tampered ML-KEM ciphertext decapsulates to a pseudorandom secret
        # (implicit rejection), so the AES-GCM check below is what catches it.
        mlkem_secret = key.mlkem_private.decapsulate(mlkem_ciphertext)
        x25519_secret = key.x25519_private.exchange(
            x25519.X25519PublicKey.from_public_bytes(ephemeral_public)
        )
    except ValueError:  # a low-order X25519 point yields an all-zero secret
        raise fail("wrapped data key failed authentication") from None
    wrap_key, nonce = _combine(
        mlkem_secret, x25519_secret, mlkem_ciphertext, ephemeral_public, key.fingerprint
    )
    try:
        return AESGCM(wrap_key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise fail("wrapped data key failed authentication") from None


def _combine(
    mlkem_secret: bytes,
    x25519_secret: bytes,
    mlkem_ciphertext: bytes,
    ephemeral_public: bytes,
    recipient_fingerprint: bytes,
) -> tuple[bytes, bytes]:
    """Hybrid combiner: both secrets, both ciphertexts and the recipient keys into HKDF-SHA256.

    Binding the ciphertexts and recipient keys (as X-Wing and hybrid TLS do)
    means the output stays secret while either component KEM holds.
    """
    okm = HKDF(
        algorithm=hashes.SHA256(), length=DATA_KEY_BYTES + NONCE_BYTES, salt=None, info=_HYBRID_INFO
    ).derive(
        mlkem_secret + x25519_secret + mlkem_ciphertext + ephemeral_public + recipient_fingerprint
    )
    return okm[:DATA_KEY_BYTES], okm[DATA_KEY_BYTES:]


def _wrap_fernet(key: FernetKey, data_key: bytes, aad: bytes) -> bytes:
    # Fernet has no associated data, so the binding rides inside the token.
    token = key.fernet.encrypt(_fernet_binding(aad) + data_key)
    return base64.urlsafe_b64decode(token)


def _unwrap_fernet(key: FernetKey, body: bytes, aad: bytes, fail: _Fail) -> bytes:
    if len(body) != FERNET_BODY_BYTES:
        raise fail("malformed wrapped data key")
    try:
        plaintext = key.fernet.decrypt(base64.urlsafe_b64encode(body))
    except InvalidToken:
        raise fail("wrapped data key failed authentication") from None
    binding, data_key = plaintext[:32], plaintext[32:]
    if not hmac.compare_digest(binding, _fernet_binding(aad)) or len(data_key) != DATA_KEY_BYTES:
        raise fail("wrapped data key belongs to another task")
    return data_key


def _fernet_binding(aad: bytes) -> bytes:
    return hashlib.sha256(_FERNET_BINDING_LABEL + aad).digest()


def _header(key: RingKey) -> bytes:
    key_id = key.key_id.encode("ascii")
    return bytes((ENVELOPE_MAGIC, ENVELOPE_VERSION, SCHEME_IDS[key.scheme], len(key_id))) + key_id


def _parse_header(
    wrapped: bytes, tenant_id: str | None, task_id: str | None
) -> tuple[str, str, int]:
    """(key id, scheme, offset of the body) of a wrapped data key."""

    def fail(reason: str) -> IntegrityError:
        return _integrity_failure(reason, tenant_id=tenant_id, task_id=task_id)

    if len(wrapped) < 4 or wrapped[0] != ENVELOPE_MAGIC:
        raise fail("malformed wrapped data key")
    if wrapped[1] != ENVELOPE_VERSION:
        raise fail(f"wrapped data key has unsupported format version {wrapped[1]}")
    scheme = SCHEME_NAMES.get(wrapped[2])
    if scheme is None:
        raise fail(f"wrapped data key has unknown scheme id {wrapped[2]}")
    body_at = 4 + wrapped[3]
    try:
        key_id = wrapped[4:body_at].decode("ascii")
    except UnicodeDecodeError:
        raise fail("malformed wrapped data key") from None
    # The body's length is fixed per scheme: a changed key-id length byte shifts it, and
    # must read as tamper, not as a (retryable) key this ring lacks.
    if not KEY_ID_PATTERN.fullmatch(key_id) or len(wrapped) - body_at != _BODY_BYTES[scheme]:
        raise fail("malformed wrapped data key")
    return key_id, scheme, body_at


def _wrap_aad(header: bytes, tenant_id: str, task_id: str) -> bytes:
    return _WRAP_AAD_LABEL + header + _context(tenant_id, task_id)


def _context(tenant_id: str, task_id: str) -> bytes:
    return _lp(tenant_id) + _lp(task_id)


def _lp(text: str) -> bytes:
    """Length-prefixed UTF-8, so that ("ab", "c") and ("a", "bc") never share an encoding."""
    data = text.encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(data)) + data


def _integrity_failure(
    reason: str,
    *,
    tenant_id: str | None,
    task_id: str | None,
    key_id: str | None = None,
    field: str | None = None,
) -> IntegrityError:
    """Log a security event (ids and reason only, never material) and build the error."""
    security_log.warning(
        "integrity check failed: %s",
        reason,
        extra={
            "security_event": "integrity_failure",
            "reason": reason,
            "tenant_id": tenant_id,
            "task_id": task_id,
            "key_id": key_id,
            "data_field": field,
        },
    )
    return IntegrityError(f"task {task_id!r}: {reason}" if task_id else reason)
