"""Key rings: the keys that wrap per-task data keys, parsed once and kept in memory.

A ring maps key ids to keys of one of two schemes and names the current key
(used for every new write); older keys stay so that old data stays readable.
The JSON form is what Secret Manager holds; `docs/security.md` documents it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from shared.errors import ConfigurationError

HYBRID: Final = "hybrid-mlkem768-x25519"
FERNET: Final = "fernet"
SCHEMES: Final = (HYBRID, FERNET)

RING_VERSION: Final = 1
DIGEST_KEY_BYTES: Final = 32
KEY_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

_MLKEM768_PUBLIC_BYTES: Final = 1184
_MLKEM768_SEED_BYTES: Final = 64
_X25519_BYTES: Final = 32
_FERNET_KEY_BYTES: Final = 32
# The hybrid combiner binds the recipient's public keys; hashing them once per
# key keeps 1.2 KB of ML-KEM public key out of every per-task derivation.
_FINGERPRINT_LABEL: Final = b"AIA hybrid-mlkem768-x25519 recipient v1"


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class HybridKey:
    """An ML-KEM-768 + X25519 key pair; the private halves are absent in public rings."""

    key_id: str
    created_at: str
    mlkem_public: mlkem.MLKEM768PublicKey
    x25519_public: x25519.X25519PublicKey
    mlkem_public_raw: bytes
    x25519_public_raw: bytes
    fingerprint: bytes
    mlkem_private: mlkem.MLKEM768PrivateKey | None = None
    x25519_private: x25519.X25519PrivateKey | None = None

    scheme = HYBRID

    @property
    def has_private(self) -> bool:
        return self.mlkem_private is not None and self.x25519_private is not None

    def public(self) -> HybridKey:
        return HybridKey(
            self.key_id,
            self.created_at,
            self.mlkem_public,
            self.x25519_public,
            self.mlkem_public_raw,
            self.x25519_public_raw,
            self.fingerprint,
        )

    def __repr__(self) -> str:
        return f"HybridKey({self.key_id!r}, private={self.has_private})"


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class FernetKey:
    """A symmetric Fernet key: whoever can wrap with it can also unwrap."""

    key_id: str
    created_at: str
    secret: bytes  # the url-safe base64 form Fernet itself uses
    fernet: Fernet

    scheme = FERNET

    @property
    def has_private(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"FernetKey({self.key_id!r})"


RingKey = HybridKey | FernetKey


class KeyRing:
    """An immutable key ring; build with `from_json`, `generate_keyring` or `rotate_keyring`."""

    __slots__ = ("_current_key_id", "_digest_key", "_encrypt_only", "_keys")

    _current_key_id: str
    _encrypt_only: bool
    _digest_key: bytes
    _keys: Mapping[str, RingKey]

    def __init__(
        self,
        *,
        current_key_id: str,
        digest_key: bytes,
        keys: Mapping[str, RingKey],
        encrypt_only: bool = False,
    ) -> None:
        if current_key_id not in keys:
            raise ConfigurationError(f"key ring: current key {current_key_id!r} is not in the ring")
        if len(digest_key) != DIGEST_KEY_BYTES:
            raise ConfigurationError(f"key ring: digest key must be {DIGEST_KEY_BYTES} bytes")
        for name, value in (
            ("_current_key_id", current_key_id),
            ("_encrypt_only", encrypt_only),
            ("_digest_key", bytes(digest_key)),
            ("_keys", MappingProxyType(dict(keys))),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("KeyRing is immutable")

    def __repr__(self) -> str:
        return (
            f"KeyRing(current={self.current_key_id!r}, keys={sorted(self._keys)!r}, "
            f"encrypt_only={self.encrypt_only})"
        )

    @property
    def current_key_id(self) -> str:
        """The key every new write uses."""
        return self._current_key_id

    @property
    def encrypt_only(self) -> bool:
        """Set on `public_only()` rings: a `TaskOpener` refuses them whatever their scheme."""
        return self._encrypt_only

    @property
    def current(self) -> RingKey:
        return self._keys[self.current_key_id]

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @property
    def digest_key(self) -> bytes:
        return self._digest_key

    def get(self, key_id: str) -> RingKey | None:
        return self._keys.get(key_id)

    def can_decrypt(self) -> bool:
        """Whether this ring may open data under its current key (never for `public_only` rings)."""
        return not self.encrypt_only and self.current.has_private

    def least_privilege(self) -> bool:
        """Whether `public_only()` of this ring is cryptographically unable to decrypt."""
        return self.current.scheme == HYBRID

    def public_only(self) -> KeyRing:
        """What the submit function gets: enough to encrypt and digest, marked as encrypt-only.

        Hybrid keys lose their private halves. A current Fernet key has to stay
        (it is symmetric), so with Fernet the restriction is a policy marker only;
        older Fernet keys are dropped because writing never needs them.
        """
        keys: dict[str, RingKey] = {}
        for key_id, key in self._keys.items():
            if isinstance(key, HybridKey):
                keys[key_id] = key.public()
            elif key_id == self.current_key_id:
                keys[key_id] = key
        return KeyRing(
            current_key_id=self.current_key_id,
            digest_key=self._digest_key,
            keys=keys,
            encrypt_only=True,
        )

    def to_json(self) -> str:
        """The ring's JSON form, as stored in Secret Manager (contains key material)."""
        keys: dict[str, dict[str, Any]] = {}
        for key_id, key in self._keys.items():
            entry: dict[str, Any] = {"scheme": key.scheme, "created_at": key.created_at}
            if isinstance(key, HybridKey):
                entry["public"] = {
                    "mlkem768": _b64(key.mlkem_public_raw),
                    "x25519": _b64(key.x25519_public_raw),
                }
                if key.mlkem_private is not None and key.x25519_private is not None:
                    entry["private"] = {
                        "mlkem768_seed": _b64(key.mlkem_private.private_bytes_raw()),
                        "x25519": _b64(key.x25519_private.private_bytes_raw()),
                    }
            else:
                entry["secret"] = key.secret.decode("ascii")
            keys[key_id] = entry
        document = {
            "version": RING_VERSION,
            "current": self.current_key_id,
            "encrypt_only": self.encrypt_only,
            "digest_key": _b64(self._digest_key),
            "keys": keys,
        }
        return json.dumps(document, indent=2)

    @classmethod
    def from_json(cls, text: str) -> KeyRing:
        """Parse and validate a ring; errors name the offending field, never its value."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            # The exception's `doc` is the whole ring: report the position only.
            raise ConfigurationError(
                f"key ring is not valid JSON (line {exc.lineno} column {exc.colno})"
            ) from None
        except TypeError:
            raise ConfigurationError("key ring must be JSON text") from None
        doc = _Fields(document, "key ring")
        version = doc.get("version", int)
        if version != RING_VERSION:
            raise ConfigurationError(
                f"key ring version {version} is not supported (expected {RING_VERSION})"
            )
        current = doc.get("current", str)
        encrypt_only = doc.get("encrypt_only", bool, default=False)
        digest_key = doc.material("digest_key", DIGEST_KEY_BYTES)
        raw_keys = doc.get("keys", dict)
        if not raw_keys:
            raise ConfigurationError("key ring has no keys")
        keys: dict[str, RingKey] = {}
        for key_id, raw in raw_keys.items():
            if not KEY_ID_PATTERN.fullmatch(key_id):
                raise ConfigurationError(
                    "key ring: key ids must be 1-64 characters of A-Z a-z 0-9 . _ -"
                )
            keys[key_id] = _parse_key(key_id, _Fields(raw, f"key ring: key {key_id!r}"))
        if current not in keys:
            raise ConfigurationError(f"key ring: current key {current!r} is not in the ring")
        return cls(
            current_key_id=current, digest_key=digest_key, keys=keys, encrypt_only=encrypt_only
        )


def generate_keyring(scheme: str = HYBRID) -> KeyRing:
    """A new ring with one fresh key of `scheme` and a fresh digest key."""
    key = _new_key(scheme, set())
    return KeyRing(
        current_key_id=key.key_id,
        digest_key=secrets.token_bytes(DIGEST_KEY_BYTES),
        keys={key.key_id: key},
    )


def rotate_keyring(ring: KeyRing, scheme: str | None = None) -> KeyRing:
    """The ring plus a new current key; old keys stay for reading. The digest key stays.

    The digest key is kept because stored idempotency digests must keep matching.
    """
    if ring.encrypt_only:
        raise ConfigurationError("rotate the full key ring, not its public-only copy")
    key = _new_key(scheme or ring.current.scheme, set(ring.key_ids))
    keys = {key_id: k for key_id in ring.key_ids if (k := ring.get(key_id)) is not None}
    keys[key.key_id] = key
    return KeyRing(current_key_id=key.key_id, digest_key=ring.digest_key, keys=keys)


def _new_key(scheme: str, taken: set[str]) -> RingKey:
    now = datetime.now(UTC)
    key_id = f"k-{now:%Y%m%d}-{secrets.token_hex(4)}"
    while key_id in taken:  # 32 random bits: a clash within one ring is rare but possible
        key_id = f"k-{now:%Y%m%d}-{secrets.token_hex(4)}"
    created_at = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    if scheme == HYBRID:
        return _hybrid_key(
            key_id,
            created_at,
            mlkem_private=mlkem.MLKEM768PrivateKey.generate(),
            x25519_private=x25519.X25519PrivateKey.generate(),
        )
    if scheme == FERNET:
        secret = Fernet.generate_key()
        return FernetKey(key_id, created_at, secret, Fernet(secret))
    raise ConfigurationError(f"unknown key scheme {scheme!r}; expected one of {SCHEMES}")


def _hybrid_key(
    key_id: str,
    created_at: str,
    *,
    mlkem_private: mlkem.MLKEM768PrivateKey | None = None,
    x25519_private: x25519.X25519PrivateKey | None = None,
    mlkem_public: mlkem.MLKEM768PublicKey | None = None,
    x25519_public: x25519.X25519PublicKey | None = None,
) -> HybridKey:
    if mlkem_public is None:
        assert mlkem_private is not None
        mlkem_public = mlkem_private.public_key()
    if x25519_public is None:
        assert x25519_private is not None
        x25519_public = x25519_private.public_key()
    mlkem_raw = mlkem_public.public_bytes_raw()
    x25519_raw = x25519_public.public_bytes_raw()
    return HybridKey(
        key_id=key_id,
        created_at=created_at,
        mlkem_public=mlkem_public,
        x25519_public=x25519_public,
        mlkem_public_raw=mlkem_raw,
        x25519_public_raw=x25519_raw,
        fingerprint=recipient_fingerprint(mlkem_raw, x25519_raw),
        mlkem_private=mlkem_private,
        x25519_private=x25519_private,
    )


def recipient_fingerprint(mlkem_public_raw: bytes, x25519_public_raw: bytes) -> bytes:
    """SHA-256 over both recipient public keys, bound into every hybrid key derivation."""
    return hashlib.sha256(_FINGERPRINT_LABEL + mlkem_public_raw + x25519_public_raw).digest()


def _parse_key(key_id: str, raw: _Fields) -> RingKey:
    scheme = raw.get("scheme", str)
    created_at = raw.get("created_at", str, default="")
    if scheme == FERNET:
        secret = raw.get("secret", str)
        try:
            fernet = Fernet(secret.encode("ascii"))
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise ConfigurationError(
                f"{raw.where}: 'secret' is not a Fernet key (32 bytes, url-safe base64)"
            ) from None
        return FernetKey(key_id, created_at, secret.encode("ascii"), fernet)
    if scheme != HYBRID:
        raise ConfigurationError(f"{raw.where}: unknown scheme {scheme!r}; expected {SCHEMES}")
    public = _Fields(raw.get("public", dict), f"{raw.where} public")
    mlkem_public_raw = public.material("mlkem768", _MLKEM768_PUBLIC_BYTES)
    x25519_public_raw = public.material("x25519", _X25519_BYTES)
    try:
        mlkem_public = mlkem.MLKEM768PublicKey.from_public_bytes(mlkem_public_raw)
        x25519_public = x25519.X25519PublicKey.from_public_bytes(x25519_public_raw)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(f"{raw.where}: public key is not a valid key") from None
    if "private" not in raw.data:
        return _hybrid_key(
            key_id, created_at, mlkem_public=mlkem_public, x25519_public=x25519_public
        )
    private = _Fields(raw.get("private", dict), f"{raw.where} private")
    seed = private.material("mlkem768_seed", _MLKEM768_SEED_BYTES)
    x25519_secret = private.material("x25519", _X25519_BYTES)
    try:
        mlkem_private = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        x25519_private = x25519.X25519PrivateKey.from_private_bytes(x25519_secret)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(f"{raw.where}: private key is not a valid key") from None
    key = _hybrid_key(
        key_id, created_at, mlkem_private=mlkem_private, x25519_private=x25519_private
    )
    # A private half that does not match the published public half would make
    # every task written by the submit function unreadable; refuse at startup.
    if key.mlkem_public_raw != mlkem_public_raw or key.x25519_public_raw != x25519_public_raw:
        raise ConfigurationError(f"{raw.where}: private key does not match its public key")
    return key


class _Fields:
    """Typed access to one JSON object, with errors that name fields and never values."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigurationError(f"{where} must be a JSON object")
        self.data: dict[str, Any] = data
        self.where = where

    _MISSING: Final = object()

    def get(self, name: str, kind: type[Any], default: Any = _MISSING) -> Any:
        if name not in self.data:
            if default is self._MISSING:
                raise ConfigurationError(f"{self.where}: missing {name!r}")
            return default
        value = self.data[name]
        # bool is an int subclass; a version of `true` is still wrong.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigurationError(f"{self.where}: {name!r} must be a {kind.__name__}")
        return value

    def material(self, name: str, size: int) -> bytes:
        text = self.get(name, str)
        try:
            value = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(f"{self.where}: {name!r} is not valid base64") from None
        if len(value) != size:
            raise ConfigurationError(f"{self.where}: {name!r} must decode to {size} bytes")
        return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
