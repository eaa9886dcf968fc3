"""Standard Webhooks signatures: `v1` (HMAC-SHA256) and `v1a` (Ed25519) over `id.timestamp.body`.

Secrets are shown to tenants as the specification serialises them: `whsec_<base64>`
for a symmetric secret, `whpk_<base64>` for an asymmetric endpoint's public key
(its private half, `whsk_`, never leaves AIA). During a rotation both keys sign
and `webhook-signature` carries both signatures, space-separated, newest first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SECRET_PREFIX = "whsec_"  # noqa: S105 - the specification's prefix, not a secret
PUBLIC_KEY_PREFIX = "whpk_"
PRIVATE_KEY_PREFIX = "whsk_"
# The specification asks for 24 to 64 random bytes; 32 matches HMAC-SHA256's block strength.
SECRET_BYTES = 32
ED25519_BYTES = 32


class Scheme(StrEnum):
    V1 = "v1"  # HMAC-SHA256 with a shared secret
    V1A = "v1a"  # Ed25519: the receiver verifies with the public key alone


@dataclass(frozen=True)
class SigningKey:
    """One key that signs deliveries: an HMAC secret, or an Ed25519 private key's seed."""

    scheme: Scheme
    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.scheme is Scheme.V1 and not 24 <= len(self.material) <= 64:
            raise ValueError("a v1 secret is 24 to 64 bytes")
        if self.scheme is Scheme.V1A and len(self.material) != ED25519_BYTES:
            raise ValueError("a v1a key is a 32-byte Ed25519 seed")

    @classmethod
    def generate(cls, scheme: Scheme) -> SigningKey:
        if scheme is Scheme.V1:
            return cls(scheme, os.urandom(SECRET_BYTES))
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(scheme, seed)

    def public_key(self) -> str | None:
        """`whpk_<base64>` for a v1a key; None for a shared secret."""
        if self.scheme is Scheme.V1:
            return None
        raw = Ed25519PrivateKey.from_private_bytes(self.material).public_key().public_bytes_raw()
        return PUBLIC_KEY_PREFIX + _b64(raw)

    def shown(self) -> str:
        """What the tenant is shown once: the `whsec_` secret, or the `whpk_` public key."""
        if self.scheme is Scheme.V1:
            return SECRET_PREFIX + _b64(self.material)
        public = self.public_key()
        assert public is not None
        return public

    def sign(self, content: bytes) -> str:
        """`v1,<base64>` or `v1a,<base64>` for the signed content."""
        if self.scheme is Scheme.V1:
            digest = hmac.new(self.material, content, hashlib.sha256).digest()
            return f"v1,{_b64(digest)}"
        signature = Ed25519PrivateKey.from_private_bytes(self.material).sign(content)
        return f"v1a,{_b64(signature)}"


def signed_content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    """`msg_id.timestamp.body`, the bytes every signature covers."""
    # A dot in the id or a non-integer timestamp would let two messages share content.
    if not msg_id or "." in msg_id or not msg_id.isascii():
        raise ValueError("webhook-id must be non-empty ASCII without '.'")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("webhook-timestamp must be a non-negative integer")
    return f"{msg_id}.{timestamp}.".encode() + body


def signature_header(msg_id: str, timestamp: int, body: bytes, keys: Sequence[SigningKey]) -> str:
    """The `webhook-signature` value: one signature per key, space-separated, in key order."""
    if not keys:
        raise ValueError("at least one signing key is needed")
    content = signed_content(msg_id, timestamp, body)
    return " ".join(key.sign(content) for key in keys)


def webhook_headers(
    msg_id: str, timestamp: int, body: bytes, keys: Sequence[SigningKey]
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(msg_id, timestamp, body, keys),
    }


def verify_v1a(public_key: str, msg_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether any `v1a` signature in `header` verifies under `public_key` (`whpk_...`).

    What a receiver does with the public key alone; AIA uses it in its own tests
    and documents it, the official libraries having no `v1a` support yet.
    """
    raw = base64.b64decode(public_key.removeprefix(PUBLIC_KEY_PREFIX), validate=True)
    verifier = Ed25519PublicKey.from_public_bytes(raw)
    content = signed_content(msg_id, timestamp, body)
    for item in header.split(" "):
        version, _, value = item.partition(",")
        if version != Scheme.V1A:
            continue
        try:
            verifier.verify(base64.b64decode(value, validate=True), content)
        except (InvalidSignature, ValueError):
            continue
        return True
    return False


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
