"""Standard Webhooks signatures: the specification's own vector, RFC 8032 for v1a, rotation."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.errors import IntegrityError
from shared.security.crypto import TaskOpener, TaskSealer
from shared.security.keyring import KeyRing, generate_keyring
from shared.webhooks.keys import ROTATION_OVERLAP, open_key, rotated, seal_key
from shared.webhooks.models import StoredSecret
from shared.webhooks.signing import (
    Scheme,
    SigningKey,
    signature_header,
    signed_content,
    verify_v1a,
    webhook_headers,
)

# From the specification repository's Python library tests (test_sign_function).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_PAYLOAD = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

# RFC 8032 section 7.1, TEST 1 and TEST 2: (seed, public key, message, signature).
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


def spec_key() -> SigningKey:
    return SigningKey(Scheme.V1, base64.b64decode(SPEC_SECRET.removeprefix("whsec_")))


def test_v1_matches_the_specifications_test_vector() -> None:
    content = signed_content(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD)
    assert content == b'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}'
    assert signature_header(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD, [spec_key()]) == (
        SPEC_SIGNATURE
    )


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032)
def test_v1a_is_rfc8032_ed25519(seed: str, public: str, message: str, signature: str) -> None:
    key = SigningKey(Scheme.V1A, bytes.fromhex(seed))
    assert key.public_key() == "whpk_" + base64.b64encode(bytes.fromhex(public)).decode()
    assert key.sign(bytes.fromhex(message)) == (
        "v1a," + base64.b64encode(bytes.fromhex(signature)).decode()
    )
    assert key.shown() == key.public_key()  # a v1a endpoint is shown its public key only


def test_the_official_library_verifies_a_generated_secret_as_shown() -> None:
    key = SigningKey.generate(Scheme.V1)
    shown = key.shown()
    assert shown.startswith("whsec_")
    assert len(base64.b64decode(shown.removeprefix("whsec_"))) == 32
    body = b'{"task_id":"abc","status":"succeeded"}'
    headers = webhook_headers("evt_1", int(time.time()), body, [key])
    assert Webhook(shown).verify(body, headers) == {"task_id": "abc", "status": "succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(shown).verify(body + b" ", headers)


def test_two_keys_give_two_signatures_each_verifying_alone() -> None:
    new, old = SigningKey.generate(Scheme.V1), SigningKey.generate(Scheme.V1)
    body = b"{}"
    headers = webhook_headers("evt_2", int(time.time()), body, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert headers["webhook-signature"].split(" ")[0].startswith("v1,")
    for key in (new, old):
        Webhook(key.shown()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SigningKey.generate(Scheme.V1).shown()).verify(body, headers)


def test_v1a_verifies_with_the_public_key_alone() -> None:
    key = SigningKey.generate(Scheme.V1A)
    public = key.public_key()
    assert public is not None
    body = b'{"a":1}'
    stamp = int(time.time())
    header = signature_header("evt_3", stamp, body, [key])
    assert verify_v1a(public, "evt_3", stamp, body, header)
    assert not verify_v1a(public, "evt_3", stamp, b'{"a":2}', header)
    assert not verify_v1a(public, "evt_3", stamp + 1, body, header)
    # Independently, with cryptography's Ed25519 and nothing of AIA's.
    raw = Ed25519PublicKey.from_public_bytes(base64.b64decode(public.removeprefix("whpk_")))
    version, _, signature = header.partition(",")
    assert version == "v1a"
    raw.verify(base64.b64decode(signature), f"evt_3.{stamp}.".encode() + body)


@pytest.mark.parametrize("msg_id", ["", "evt.1", "évt"])
def test_ids_that_could_blur_the_signed_content_are_refused(msg_id: str) -> None:
    with pytest.raises(ValueError, match="webhook-id"):
        signed_content(msg_id, 1, b"")


def test_key_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="24 to 64"):
        SigningKey(Scheme.V1, b"short")
    with pytest.raises(ValueError, match="32-byte"):
        SigningKey(Scheme.V1A, b"x" * 31)
    assert "material" not in repr(SigningKey.generate(Scheme.V1)).split("(", 1)[1]


# Keys at rest


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return generate_keyring()


@pytest.mark.parametrize("scheme", list(Scheme))
def test_a_sealed_key_opens_only_with_the_private_ring(ring: KeyRing, scheme: Scheme) -> None:
    now = datetime.now(UTC)
    key = SigningKey.generate(scheme)
    stored = seal_key(TaskSealer(ring.public_only()), "acme", "ep_" + "a" * 32, key, now)
    assert key.material not in stored.sealed
    assert base64.b64encode(key.material) not in stored.sealed
    assert open_key(TaskOpener(ring), "acme", "ep_" + "a" * 32, scheme, stored) == key
    assert stored.public_key == key.public_key()


def test_a_sealed_key_is_bound_to_its_tenant_endpoint_and_scheme(ring: KeyRing) -> None:
    now = datetime.now(UTC)
    endpoint = "ep_" + "b" * 32
    stored = seal_key(TaskSealer(ring), "acme", endpoint, SigningKey.generate(Scheme.V1A), now)
    opener = TaskOpener(ring)
    for tenant, other, scheme in (
        ("globex", endpoint, Scheme.V1A),
        ("acme", "ep_" + "c" * 32, Scheme.V1A),
        ("acme", endpoint, Scheme.V1),  # an Ed25519 seed must not serve as an HMAC secret
    ):
        with pytest.raises(IntegrityError):
            open_key(opener, tenant, other, scheme, stored)
    swapped = stored.model_copy(update={"secret_id": "sk_" + "0" * 16})
    with pytest.raises(IntegrityError):
        open_key(opener, "acme", endpoint, Scheme.V1A, swapped)


# Rotation windows


def _secret(created: datetime, expires: datetime | None = None) -> StoredSecret:
    return StoredSecret(
        secret_id=f"sk_{int(created.timestamp()):016x}",
        data_key=b"k",
        sealed=b"s",
        created_at=created,
        expires_at=expires,
    )


def test_after_a_rotation_both_keys_sign_for_24_hours_then_only_the_new() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first = _secret(t0)
    t1 = t0 + timedelta(days=3)
    second = _secret(t1)
    keys = rotated([first], second, t1)
    assert [k.secret_id for k in keys] == [second.secret_id, first.secret_id]
    assert keys[1].expires_at == t1 + ROTATION_OVERLAP

    def signing(at: datetime) -> list[str]:
        return [s.secret_id for s in keys if s.signs_at(at)]

    assert signing(t1 + ROTATION_OVERLAP - timedelta(seconds=1)) == [
        second.secret_id,
        first.secret_id,
    ]
    assert signing(t1 + ROTATION_OVERLAP) == [second.secret_id]


def test_rotating_again_within_the_overlap_retires_the_oldest_at_once() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    a, b, c = _secret(t0), _secret(t0 + timedelta(hours=1)), _secret(t0 + timedelta(hours=2))
    after_b = rotated([a], b, b.created_at)
    after_c = rotated(after_b, c, c.created_at)
    assert [k.secret_id for k in after_c] == [c.secret_id, b.secret_id]
    assert after_c[1].expires_at == c.created_at + ROTATION_OVERLAP
