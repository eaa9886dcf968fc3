"""Envelope encryption of task data: round trips, tamper and swap detection, rotation."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import struct
from typing import Any

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ConfigurationError, IntegrityError, KeyUnavailable, ValidationFailed
from shared.security.crypto import (
    BLOB_OVERHEAD,
    FERNET,
    FERNET_BODY_BYTES,
    HYBRID,
    HYBRID_BODY_BYTES,
    KeyRing,
    TaskKey,
    TaskOpener,
    TaskSealer,
    generate_keyring,
    key_id_of,
    rotate_keyring,
)
from shared.security.keyring import KEY_ID_PATTERN

DETECTED = (IntegrityError, KeyUnavailable)

SCHEMES = [HYBRID, FERNET]
FIELDS = ["payload", "result", "error"]
SECRET = "the-secret-marker-4711"
PAYLOAD = {"text": SECRET, "n": 42, "nested": [1.5, None, True, {"é": "ünïcode"}]}


@pytest.fixture(scope="module")
def rings() -> dict[str, KeyRing]:
    return {scheme: generate_keyring(scheme) for scheme in SCHEMES}


@pytest.fixture(params=SCHEMES)
def ring(request: pytest.FixtureRequest, rings: dict[str, KeyRing]) -> KeyRing:
    chosen: KeyRing = rings[request.param]
    return chosen


@pytest.fixture
def opener(ring: KeyRing) -> TaskOpener:
    return TaskOpener(ring)


@pytest.fixture
def sealer(ring: KeyRing) -> TaskSealer:
    """What the submit function holds."""
    return TaskSealer(ring.public_only())


def _lp(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">I", len(data)) + data


def _blob_aad(tenant: str, task: str, field: str) -> bytes:
    """The sealed-field associated data, written out from docs/security.md."""
    return b"AIA sealed field" + b"\xad\x01" + _lp(tenant) + _lp(task) + _lp(field)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


# Round trips


@pytest.mark.parametrize("field", FIELDS)
def test_public_sealer_to_private_opener_round_trip(
    field: str, sealer: TaskSealer, opener: TaskOpener
) -> None:
    key = sealer.new_task_key("tenant-a", "task-1")
    blob = key.seal(field, PAYLOAD)

    opened = opener.open_task_key("tenant-a", "task-1", key.wrapped)

    assert opened.open(field, blob) == PAYLOAD
    assert key.open(field, blob) == PAYLOAD  # the writer may read back what it wrote


def test_stored_bytes_hold_no_plaintext(sealer: TaskSealer) -> None:
    key = sealer.new_task_key("tenant-a", "task-1")
    blob = key.seal("payload", PAYLOAD)

    for stored in (blob, key.wrapped):
        assert SECRET.encode() not in stored
        assert b"tenant-a" not in stored
        assert b"task-1" not in stored


def test_every_seal_and_every_task_key_is_fresh(sealer: TaskSealer) -> None:
    key = sealer.new_task_key("tenant-a", "task-1")
    again = sealer.new_task_key("tenant-a", "task-1")

    assert key.seal("payload", PAYLOAD) != key.seal("payload", PAYLOAD)
    assert key.wrapped != again.wrapped


def test_sizes_are_compact(rings: dict[str, KeyRing]) -> None:
    for scheme, body in ((HYBRID, HYBRID_BODY_BYTES), (FERNET, FERNET_BODY_BYTES)):
        ring = rings[scheme]
        key = TaskSealer(ring).new_task_key("t", "x")
        assert len(key.wrapped) == 4 + len(ring.current_key_id) + body
    value = {"a": "b" * 1000}
    blob = key.seal("payload", value)
    assert len(blob) == len(json.dumps(value, separators=(",", ":"))) + BLOB_OVERHEAD
    assert BLOB_OVERHEAD == 30
    assert HYBRID_BODY_BYTES == 1088 + 32 + 32 + 16


@pytest.mark.parametrize(
    "value",
    [None, 0, -1, 10**40, 0.1, -0.0, "", "\ud800 lone surrogate", [], {}, [[[]]], True],
    ids=repr,
)
def test_edge_values_round_trip(value: Any, opener: TaskOpener) -> None:
    key = opener.new_task_key("t", "x")

    opened = key.open("result", key.seal("result", value))

    assert opened == value
    assert type(opened) is type(value)


@pytest.mark.parametrize("value", [{1, 2}, math.nan, math.inf, object(), b"bytes"], ids=repr)
def test_values_that_are_not_json_are_refused(value: Any, opener: TaskOpener) -> None:
    key = opener.new_task_key("t", "x")

    with pytest.raises(ValidationFailed, match="result is not JSON-serialisable") as caught:
        key.seal("result", value)
    assert caught.value.field == "result"


def test_task_key_repr_shows_ids_only(opener: TaskOpener) -> None:
    key = opener.new_task_key("tenant-a", "task-1")

    assert repr(key) == (
        f"TaskKey(tenant='tenant-a', task='task-1', key={opener.ring.current_key_id!r})"
    )


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=JSON, field=st.sampled_from(FIELDS))
def test_any_json_value_round_trips(rings: dict[str, KeyRing], value: Any, field: str) -> None:
    key = TaskOpener(rings[HYBRID]).new_task_key("tenant", "task")

    assert key.open(field, key.seal(field, value)) == value


@settings(max_examples=60, deadline=None)
@given(
    value=JSON,
    tenant=st.text(min_size=1, max_size=64),
    task=st.text(min_size=1, max_size=64),
    scheme=st.sampled_from(SCHEMES),
)
def test_any_ids_and_value_round_trip_through_storage(
    rings: dict[str, KeyRing], value: Any, tenant: str, task: str, scheme: str
) -> None:
    opener = TaskOpener(rings[scheme])
    key = TaskSealer(rings[scheme].public_only()).new_task_key(tenant, task)
    blob = key.seal("payload", value)

    assert opener.open_task_key(tenant, task, key.wrapped).open("payload", blob) == value


# Tamper


def test_every_byte_of_a_sealed_field_is_protected(opener: TaskOpener) -> None:
    key = opener.new_task_key("t", "x")
    blob = key.seal("payload", {"a": 1})

    assert key.open("payload", blob) == {"a": 1}
    for at in range(len(blob)):
        with pytest.raises(IntegrityError):
            key.open("payload", _flip(blob, at))


KEY_ID_LENGTH_AT = 3  # the envelope byte giving the key id's length
KEY_ID_AT = 4  # where the key id itself starts


def _refusal(ring: KeyRing, wrapped: bytes, at: int) -> type[Exception]:
    """What flipping byte `at` of `wrapped` must raise when opened with `ring`.

    Only an altered key id may read as "not in this ring" (retryable: a ring
    deployed late), and only when it still is a valid id the ring lacks;
    every other byte is an integrity failure.
    """
    id_end = KEY_ID_AT + wrapped[KEY_ID_LENGTH_AT]
    if not KEY_ID_AT <= at < id_end:
        return IntegrityError
    altered = _flip(wrapped, at)[KEY_ID_AT:id_end].decode("ascii", "replace")
    if KEY_ID_PATTERN.fullmatch(altered) and ring.get(altered) is None:
        return KeyUnavailable
    return IntegrityError


def test_every_byte_of_a_wrapped_key_is_protected(opener: TaskOpener) -> None:
    wrapped = opener.new_task_key("t", "x").wrapped
    rotated = TaskOpener(rotate_keyring(opener.ring))
    refusals: set[type[Exception]] = set()

    assert opener.open_task_key("t", "x", wrapped).key_id == opener.current_key_id
    for at in range(len(wrapped)):
        if at == KEY_ID_LENGTH_AT:
            continue  # test_a_changed_key_id_length_is_an_integrity_failure
        tampered = _flip(wrapped, at)
        expected = _refusal(opener.ring, wrapped, at)
        refusals.add(expected)
        # Exactly this class: KeyUnavailable is no IntegrityError, nor the reverse.
        with pytest.raises(DETECTED) as caught:
            opener.open_task_key("t", "x", tampered)
        assert type(caught.value) is expected, f"byte {at}: {caught.value!r}"
        # Re-wrapping must not launder a tampered key into a valid one.
        with pytest.raises(DETECTED) as caught:
            rotated.rewrap("t", "x", tampered)
        assert type(caught.value) is _refusal(rotated.ring, wrapped, at), f"byte {at}"
    # Both answers occurred, so the loop really told them apart.
    assert refusals == {IntegrityError, KeyUnavailable}


def test_a_changed_key_id_length_is_an_integrity_failure(opener: TaskOpener) -> None:
    wrapped = opener.new_task_key("t", "x").wrapped

    for flip in (0x01, 0x02, 0x80):
        tampered = bytearray(wrapped)
        tampered[KEY_ID_LENGTH_AT] ^= flip
        with pytest.raises(DETECTED) as caught:
            opener.open_task_key("t", "x", bytes(tampered))
        assert type(caught.value) is IntegrityError, f"flip {flip:#x}: {caught.value!r}"


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 20, -1])
def test_truncated_or_extended_data_is_detected(opener: TaskOpener, cut: int) -> None:
    key = opener.new_task_key("t", "x")
    blob = key.seal("payload", {"a": 1})

    for stored, check in (
        (blob, lambda b: key.open("payload", b)),
        (key.wrapped, lambda b: opener.open_task_key("t", "x", b)),
    ):
        with pytest.raises(IntegrityError):
            check(stored[:cut])
        with pytest.raises(IntegrityError):
            check(stored + b"\0")


# Swaps


def test_field_moved_to_another_task_fails(opener: TaskOpener) -> None:
    one = opener.new_task_key("tenant-a", "task-1")
    two = opener.new_task_key("tenant-a", "task-2")

    with pytest.raises(IntegrityError, match="failed authentication"):
        two.open("payload", one.seal("payload", PAYLOAD))


def test_field_moved_to_another_field_fails(opener: TaskOpener) -> None:
    key = opener.new_task_key("tenant-a", "task-1")
    blob = key.seal("result", PAYLOAD)

    for other in ("payload", "error"):
        with pytest.raises(IntegrityError, match="failed authentication"):
            key.open(other, blob)


def test_wrapped_key_moved_to_another_task_or_tenant_fails(opener: TaskOpener) -> None:
    wrapped = opener.new_task_key("tenant-a", "task-1").wrapped

    # ("tenant-at", "ask-1") concatenates to the same text as the original ids.
    for tenant, task in (("tenant-a", "task-2"), ("tenant-b", "task-1"), ("tenant-at", "ask-1")):
        with pytest.raises(IntegrityError):
            opener.open_task_key(tenant, task, wrapped)


def test_whole_task_moved_to_another_tenant_fails(opener: TaskOpener) -> None:
    """Copying the wrapped key and the bodies together to the same task id elsewhere."""
    key = opener.new_task_key("tenant-a", "task-1")
    blob = key.seal("payload", PAYLOAD)
    wrapped = key.wrapped

    with pytest.raises(IntegrityError):
        opener.open_task_key("tenant-b", "task-1", wrapped).open("payload", blob)


def test_wrapped_keys_swapped_between_tasks_fail(opener: TaskOpener) -> None:
    one = opener.new_task_key("tenant-a", "task-1")
    two = opener.new_task_key("tenant-a", "task-2")

    with pytest.raises(IntegrityError):
        opener.open_task_key("tenant-a", "task-2", one.wrapped)
    with pytest.raises(IntegrityError):
        opener.open_task_key("tenant-a", "task-1", two.wrapped)


def test_ids_and_field_are_bound_unambiguously() -> None:
    """Same concatenated text, different boundaries: a different binding."""
    data_key = bytes(range(32))
    blob = TaskKey("t", "x", "k-1", data_key, b"").seal("payload", PAYLOAD)

    with pytest.raises(IntegrityError):
        TaskKey("t", "xp", "k-1", data_key, b"").open("ayload", blob)
    with pytest.raises(IntegrityError):
        TaskKey("tx", "", "k-1", data_key, b"").open("payload", blob)


def test_sealed_field_layout_matches_the_documentation() -> None:
    data_key = bytes(range(32))
    control = (("type", "echo"), ("max_attempts", "3"), ("timeout_s", "60"))
    key = TaskKey("tenant-a", "task-1", "k-1", data_key, b"", control=control)
    blob = key.seal("result", PAYLOAD)

    assert blob[:2] == b"\xad\x02"
    nonce, sealed = blob[2:14], blob[14:]
    bound = b"".join(_lp(name) + _lp(value) for name, value in control)
    aad = (
        b"AIA sealed field" + b"\xad\x02" + _lp("tenant-a") + _lp("task-1") + bound + _lp("result")
    )
    assert json.loads(AESGCM(data_key).decrypt(nonce, sealed, aad)) == PAYLOAD
    # Another value of any control field makes the same blob fail to open.
    for at in range(len(control)):
        steered = tuple((n, v + "x" if i == at else v) for i, (n, v) in enumerate(control))
        with pytest.raises(IntegrityError):
            TaskKey("tenant-a", "task-1", "k-1", data_key, b"", control=steered).open(
                "result", blob
            )


def test_version_1_blobs_written_before_control_binding_stay_readable() -> None:
    data_key = bytes(range(32))
    nonce = bytes(12)
    legacy = (
        b"\xad\x01"
        + nonce
        + AESGCM(data_key).encrypt(nonce, b'{"a":1}', _blob_aad("t", "x", "payload"))
    )
    control = (("type", "echo"),)
    assert TaskKey("t", "x", "k-1", data_key, b"", control=control).open("payload", legacy) == {
        "a": 1
    }


def test_authentic_blob_that_is_not_json_is_an_integrity_error() -> None:
    data_key = bytes(range(32))
    nonce = bytes(12)
    forged = (
        b"\xad\x01"
        + nonce
        + AESGCM(data_key).encrypt(nonce, b"{no", _blob_aad("t", "x", "payload"))
    )

    with pytest.raises(IntegrityError, match="does not hold JSON"):
        TaskKey("t", "x", "k-1", data_key, b"").open("payload", forged)


def test_hybrid_wrap_layout_matches_the_documentation(rings: dict[str, KeyRing]) -> None:
    """Unwrap by hand, following docs/security.md, and open a sealed field with the result."""
    ring = rings[HYBRID]
    key = TaskSealer(ring.public_only()).new_task_key("tenant-a", "task-1")
    blob = key.seal("payload", PAYLOAD)
    private = json.loads(ring.to_json())["keys"][ring.current_key_id]
    mlkem_sk = mlkem.MLKEM768PrivateKey.from_seed_bytes(
        base64.b64decode(private["private"]["mlkem768_seed"])
    )
    x_sk = x25519.X25519PrivateKey.from_private_bytes(
        base64.b64decode(private["private"]["x25519"])
    )
    kid = ring.current_key_id.encode()
    w = key.wrapped

    assert w[:4] == bytes([0xAE, 0x01, 0x01, len(kid)])
    assert w[4 : 4 + len(kid)] == kid
    header, body = w[: 4 + len(kid)], w[4 + len(kid) :]
    ct_m, ct_x, sealed = body[:1088], body[1088:1120], body[1120:]
    ss_m = mlkem_sk.decapsulate(ct_m)
    ss_x = x_sk.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    pk_m = base64.b64decode(private["public"]["mlkem768"])
    pk_x = base64.b64decode(private["public"]["x25519"])
    fingerprint = hashlib.sha256(b"AIA hybrid-mlkem768-x25519 recipient v1" + pk_m + pk_x).digest()
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=44,
        salt=None,
        info=b"AIA hybrid-mlkem768-x25519 wrap v1",
    ).derive(ss_m + ss_x + ct_m + ct_x + fingerprint)
    aad = b"AIA wrapped data key" + header + _lp("tenant-a") + _lp("task-1")
    data_key = AESGCM(okm[:32]).decrypt(okm[32:], sealed, aad)

    assert TaskKey("tenant-a", "task-1", "k", data_key, b"").open("payload", blob) == PAYLOAD


def test_fernet_wrap_layout_matches_the_documentation(rings: dict[str, KeyRing]) -> None:
    ring = rings[FERNET]
    key = TaskSealer(ring).new_task_key("tenant-a", "task-1")
    blob = key.seal("payload", PAYLOAD)
    secret = json.loads(ring.to_json())["keys"][ring.current_key_id]["secret"]
    kid = ring.current_key_id.encode()
    w = key.wrapped

    assert w[:4] == bytes([0xAE, 0x01, 0x02, len(kid)])
    header, token = w[: 4 + len(kid)], w[4 + len(kid) :]
    plaintext = Fernet(secret).decrypt(base64.urlsafe_b64encode(token))
    aad = b"AIA wrapped data key" + header + _lp("tenant-a") + _lp("task-1")
    assert plaintext[:32] == hashlib.sha256(b"AIA fernet wrap v1" + aad).digest()
    data_key = plaintext[32:]

    assert TaskKey("tenant-a", "task-1", "k", data_key, b"").open("payload", blob) == PAYLOAD


def test_a_data_blob_is_not_a_wrapped_key(opener: TaskOpener) -> None:
    key = opener.new_task_key("t", "x")

    with pytest.raises(IntegrityError, match="malformed"):
        opener.open_task_key("t", "x", key.seal("payload", PAYLOAD))
    with pytest.raises(IntegrityError, match="malformed"):
        key.open("payload", key.wrapped)


# Keys missing or wrong


def test_key_not_in_the_ring_names_the_key_id(
    opener: TaskOpener, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = TaskOpener(generate_keyring(opener.ring.current.scheme))
    key = stranger.new_task_key("tenant-a", "task-1")
    blob = key.seal("payload", PAYLOAD)

    with (
        caplog.at_level(logging.WARNING, logger="aia.security"),
        pytest.raises(KeyUnavailable) as caught,
    ):
        opener.open_task_key("tenant-a", "task-1", key.wrapped)

    kid = stranger.current_key_id
    assert f"wrapped under key {kid!r}, which is not in this key ring" in caught.value.detail
    # Usually a ring deployed after the data it must read: worth another delivery.
    assert caught.value.retryable
    (record,) = [r for r in caplog.records if r.name == "aia.security"]
    assert record.levelno == logging.WARNING
    assert record.__dict__["security_event"] == "key_unavailable"
    assert record.__dict__["key_id"] == kid
    assert record.__dict__["tenant_id"] == "tenant-a"
    assert record.__dict__["task_id"] == "task-1"
    assert stranger.ring.current_key_id in record.getMessage()
    logged = json.dumps(record.__dict__, default=repr)
    assert SECRET not in logged
    assert key.wrapped.hex()[:32] not in logged
    assert blob.hex()[:32] not in logged


def test_tamper_is_logged_as_a_security_event(
    opener: TaskOpener, caplog: pytest.LogCaptureFixture
) -> None:
    key = opener.new_task_key("tenant-a", "task-1")
    blob = key.seal("error", PAYLOAD)

    with (
        caplog.at_level(logging.WARNING, logger="aia.security"),
        pytest.raises(IntegrityError, match="'task-1': sealed field failed authentication"),
    ):
        key.open("error", _flip(blob, len(blob) - 1))

    (record,) = caplog.records
    assert record.__dict__["data_field"] == "error"
    assert record.__dict__["key_id"] == opener.current_key_id
    assert SECRET not in json.dumps(record.__dict__, default=repr)


def test_old_key_without_its_private_half_is_a_clear_error() -> None:
    old = generate_keyring(HYBRID)
    wrapped = TaskSealer(old).new_task_key("t", "x").wrapped
    document = json.loads(rotate_keyring(old).to_json())
    del document["keys"][old.current_key_id]["private"]
    opener = TaskOpener(KeyRing.from_json(json.dumps(document)))

    with pytest.raises(IntegrityError, match=f"key {old.current_key_id!r} .* has no private key"):
        opener.open_task_key("t", "x", wrapped)


def test_scheme_byte_swapped_to_the_other_scheme_is_detected(rings: dict[str, KeyRing]) -> None:
    opener = TaskOpener(rings[HYBRID])
    wrapped = bytearray(opener.new_task_key("t", "x").wrapped)
    wrapped[2] = 0x02  # claims Fernet

    # "claims scheme" today; "malformed" once the header checks the body size first.
    with pytest.raises(IntegrityError):
        opener.open_task_key("t", "x", bytes(wrapped))


# Least privilege


@pytest.mark.parametrize("scheme", SCHEMES)
def test_submit_functions_ring_cannot_decrypt(scheme: str, rings: dict[str, KeyRing]) -> None:
    public = KeyRing.from_json(rings[scheme].public_only().to_json())

    with pytest.raises(ConfigurationError, match="public-only"):
        TaskOpener(public)


def test_hybrid_public_ring_cannot_decrypt_even_without_its_marker(
    rings: dict[str, KeyRing],
) -> None:
    document = json.loads(rings[HYBRID].public_only().to_json())
    document["encrypt_only"] = False
    unmarked = KeyRing.from_json(json.dumps(document))

    assert not unmarked.can_decrypt()
    with pytest.raises(ConfigurationError, match="has no private key"):
        TaskOpener(unmarked)


# Rotation


def test_old_data_stays_readable_and_rewrap_converges(ring: KeyRing) -> None:
    old_key = TaskSealer(ring).new_task_key("t", "x")
    blob = old_key.seal("payload", PAYLOAD)
    rotated = rotate_keyring(ring)
    opener = TaskOpener(rotated)

    assert opener.open_task_key("t", "x", old_key.wrapped).open("payload", blob) == PAYLOAD
    rewrapped = opener.rewrap("t", "x", old_key.wrapped)
    assert rewrapped is not None
    assert key_id_of(rewrapped) == rotated.current_key_id != ring.current_key_id
    assert opener.rewrap("t", "x", rewrapped) is None
    # The body was not touched and opens with the re-wrapped key.
    assert opener.open_task_key("t", "x", rewrapped).open("payload", blob) == PAYLOAD
    # A run interrupted before writing leaves the old wrap, which stays valid.
    assert opener.open_task_key("t", "x", old_key.wrapped).open("payload", blob) == PAYLOAD


def test_rewrap_is_bound_to_its_task(ring: KeyRing) -> None:
    old_key = TaskSealer(ring).new_task_key("t", "x")
    opener = TaskOpener(rotate_keyring(ring))

    with pytest.raises(IntegrityError):
        opener.rewrap("t", "y", old_key.wrapped)
    rewrapped = opener.rewrap("t", "x", old_key.wrapped)
    assert rewrapped is not None
    with pytest.raises(IntegrityError):
        opener.open_task_key("t", "y", rewrapped)


def test_mixed_scheme_ring_reads_everything_and_converges() -> None:
    ring = generate_keyring(FERNET)
    written: list[tuple[str, bytes, bytes]] = []
    for step, scheme in enumerate([HYBRID, FERNET, HYBRID]):
        key = TaskSealer(ring.public_only()).new_task_key("t", f"task-{step}")
        written.append((f"task-{step}", key.wrapped, key.seal("payload", {"step": step})))
        ring = rotate_keyring(ring, scheme)
    opener = TaskOpener(ring)

    schemes = [k.scheme for kid in ring.key_ids if (k := ring.get(kid))]
    assert schemes == [FERNET, HYBRID, FERNET, HYBRID]
    for step, (task, wrapped, blob) in enumerate(written):
        assert opener.open_task_key("t", task, wrapped).open("payload", blob) == {"step": step}
        rewrapped = opener.rewrap("t", task, wrapped)
        assert rewrapped is not None
        assert opener.rewrap("t", task, rewrapped) is None
        assert opener.open_task_key("t", task, rewrapped).open("payload", blob) == {"step": step}


def test_key_id_of_reads_the_header_and_rejects_garbage(opener: TaskOpener) -> None:
    wrapped = opener.new_task_key("t", "x").wrapped

    assert key_id_of(wrapped) == opener.current_key_id
    for garbage in (b"", b"\xae\x01\x01", b"\xae\x01\x01\x05k-1", b"{}" * 10, b"\xae\x02" * 10):
        with pytest.raises(IntegrityError):
            key_id_of(garbage)


# Digests


def test_digest_is_keyed_deterministic_and_shared_with_the_public_ring(
    rings: dict[str, KeyRing],
) -> None:
    ring = rings[HYBRID]
    sealer = TaskSealer(ring.public_only())
    digest = sealer.digest(b'{"amount": 1}')

    assert digest == TaskOpener(ring).digest(b'{"amount": 1}')
    assert digest == TaskSealer(rotate_keyring(ring)).digest(b'{"amount": 1}')
    assert digest != sealer.digest(b'{"amount": 2}')
    assert digest != TaskSealer(rings[FERNET]).digest(b'{"amount": 1}')
    assert digest != hashlib.sha256(b'{"amount": 1}').hexdigest()
    assert len(digest) == 64
    int(digest, 16)
