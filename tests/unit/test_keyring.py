"""Key rings: generation, rotation, public-only copies and the JSON form."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.errors import ConfigurationError
from shared.security.keyring import (
    FERNET,
    HYBRID,
    KeyRing,
    generate_keyring,
    rotate_keyring,
)

KEY_ID = re.compile(r"^k-\d{8}-[0-9a-f]{8}$")


@pytest.fixture(scope="module")
def hybrid_ring() -> KeyRing:
    return generate_keyring(HYBRID)


@pytest.fixture(scope="module")
def mixed_ring() -> KeyRing:
    """fernet -> hybrid -> fernet: a ring that went both ways."""
    return rotate_keyring(rotate_keyring(generate_keyring(FERNET), HYBRID), FERNET)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def _material(ring: KeyRing) -> list[str]:
    """Every base64 value in the ring's JSON: none may ever appear in an error."""
    document = json.loads(ring.to_json())
    keys = [
        text
        for text in _strings(document)
        if len(text) >= 40 and text not in (HYBRID, FERNET, document["current"])
    ]
    assert len(keys) > 3
    return keys


@pytest.mark.parametrize("scheme", [HYBRID, FERNET])
def test_generated_ring_has_one_current_key_with_a_dated_random_id(scheme: str) -> None:
    ring = generate_keyring(scheme)

    assert ring.key_ids == (ring.current_key_id,)
    assert KEY_ID.fullmatch(ring.current_key_id)
    assert ring.current.scheme == scheme
    assert ring.can_decrypt()
    assert not ring.encrypt_only


def test_unknown_scheme_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown key scheme"):
        generate_keyring("rot13")


def test_key_ids_are_unique_across_rings_and_rotations() -> None:
    ring = generate_keyring(FERNET)
    for _ in range(30):
        ring = rotate_keyring(ring)
    other = generate_keyring(FERNET)

    assert len(set(ring.key_ids)) == 31
    assert other.current_key_id not in ring.key_ids


def test_rotation_adds_a_current_key_and_keeps_old_keys_and_digest_key(
    hybrid_ring: KeyRing,
) -> None:
    rotated = rotate_keyring(hybrid_ring)

    assert rotated.current_key_id not in hybrid_ring.key_ids
    assert set(rotated.key_ids) == {*hybrid_ring.key_ids, rotated.current_key_id}
    assert rotated.current.scheme == HYBRID  # the current scheme is the default
    assert rotated.digest_key == hybrid_ring.digest_key
    assert hybrid_ring.key_ids == (hybrid_ring.current_key_id,)  # the input is unchanged


def test_rotation_may_change_scheme_both_ways(mixed_ring: KeyRing) -> None:
    schemes = [key.scheme for key_id in mixed_ring.key_ids if (key := mixed_ring.get(key_id))]

    assert schemes == [FERNET, HYBRID, FERNET]
    assert mixed_ring.current.scheme == FERNET


def test_public_only_ring_cannot_be_rotated(hybrid_ring: KeyRing) -> None:
    with pytest.raises(ConfigurationError, match="public-only"):
        rotate_keyring(hybrid_ring.public_only())


def test_ring_is_immutable(hybrid_ring: KeyRing) -> None:
    with pytest.raises(AttributeError):
        hybrid_ring._keys = {}  # slots alone would allow it; the ring must not
    with pytest.raises(AttributeError):
        hybrid_ring.current_key_id = "k-other"  # type: ignore[misc]  # read-only for mypy too


@pytest.mark.parametrize("ring_name", ["hybrid_ring", "mixed_ring"])
def test_json_round_trip_is_lossless(ring_name: str, request: pytest.FixtureRequest) -> None:
    ring: KeyRing = request.getfixturevalue(ring_name)
    text = ring.to_json()
    again = KeyRing.from_json(text)

    assert again.to_json() == text
    assert again.current_key_id == ring.current_key_id
    assert again.key_ids == ring.key_ids
    assert again.digest_key == ring.digest_key
    assert json.loads(text)["version"] == 1


def test_public_only_hybrid_ring_holds_no_private_material(hybrid_ring: KeyRing) -> None:
    public = hybrid_ring.public_only()
    document = json.loads(public.to_json())
    full = json.loads(hybrid_ring.to_json())

    assert public.encrypt_only
    assert not public.can_decrypt()
    assert all("private" in key for key in full["keys"].values())
    assert not any("private" in key for key in document["keys"].values())
    assert document["digest_key"] == full["digest_key"]  # submit needs it for idempotency
    private_values = list(_strings(next(iter(full["keys"].values()))["private"]))
    assert not any(value in public.to_json() for value in private_values)
    assert hybrid_ring.least_privilege()


def test_public_only_survives_json_round_trip(hybrid_ring: KeyRing) -> None:
    again = KeyRing.from_json(hybrid_ring.public_only().to_json())

    assert again.encrypt_only
    assert not again.can_decrypt()


def test_public_only_fernet_ring_keeps_only_the_current_secret(mixed_ring: KeyRing) -> None:
    public = mixed_ring.public_only()
    fernet_ids = [
        k for k in mixed_ring.key_ids if (key := mixed_ring.get(k)) and key.scheme == FERNET
    ]
    old_fernet = next(k for k in fernet_ids if k != mixed_ring.current_key_id)

    assert mixed_ring.current_key_id in public.key_ids
    assert old_fernet not in public.key_ids
    assert not public.can_decrypt()
    # The symmetric key must stay to wrap at all: the restriction is policy, not cryptography.
    assert not mixed_ring.least_privilege()


def test_repr_never_shows_material(mixed_ring: KeyRing) -> None:
    shown = repr(mixed_ring) + "".join(
        repr(mixed_ring.get(key_id)) for key_id in mixed_ring.key_ids
    )
    for value in _material(mixed_ring):
        assert value not in shown
    assert mixed_ring.current_key_id in shown


def _edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[KeyRing], str]:
    def apply(ring: KeyRing) -> str:
        document = json.loads(ring.to_json())
        edit(document)
        return json.dumps(document)

    return apply


def _first(document: dict[str, Any]) -> dict[str, Any]:
    key: dict[str, Any] = next(iter(document["keys"].values()))
    return key


def _swap_private(document: dict[str, Any]) -> None:
    foreign = json.loads(generate_keyring(HYBRID).to_json())
    _first(document)["private"] = _first(foreign)["private"]


BAD_RINGS: dict[str, tuple[Callable[[KeyRing], str], str]] = {
    "not json": (lambda ring: ring.to_json()[:-40], "not valid JSON"),
    "cut inside material": (lambda ring: ring.to_json()[:300], "not valid JSON"),
    "not an object": (lambda ring: "[1, 2]", "must be a JSON object"),
    "no version": (_edit(lambda d: d.pop("version")), "missing 'version'"),
    "future version": (_edit(lambda d: d.update(version=2)), "version 2 is not supported"),
    "boolean version": (_edit(lambda d: d.update(version=True)), "'version' must be a int"),
    "no current": (_edit(lambda d: d.pop("current")), "missing 'current'"),
    "unknown current": (_edit(lambda d: d.update(current="k-nope")), "'k-nope' is not in"),
    "no keys": (_edit(lambda d: d.update(keys={})), "has no keys"),
    "bad key id": (
        _edit(lambda d: d.update(keys={"bad id!": _first(d)}, current="bad id!")),
        "key ids must be",
    ),
    "unknown scheme": (_edit(lambda d: _first(d).update(scheme="rsa")), "unknown scheme"),
    "bad base64": (
        _edit(lambda d: _first(d)["public"].update(x25519="not*base64")),
        "'x25519' is not valid base64",
    ),
    "short public key": (
        _edit(lambda d: _first(d)["public"].update(mlkem768=_first(d)["public"]["x25519"])),
        "'mlkem768' must decode to 1184 bytes",
    ),
    "private of another key": (_edit(_swap_private), "does not match its public key"),
    "private not an object": (
        _edit(lambda d: _first(d).update(private="secret")),
        "'private' must be a dict",
    ),
    "short digest key": (
        _edit(lambda d: d.update(digest_key=_first(d)["public"]["x25519"][:20])),
        "'digest_key'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_RINGS))
def test_bad_ring_is_a_configuration_error_without_material(
    case: str, hybrid_ring: KeyRing
) -> None:
    make, message = BAD_RINGS[case]

    with pytest.raises(ConfigurationError, match=re.escape(message)) as caught:
        KeyRing.from_json(make(hybrid_ring))

    shown = str(caught.value) + repr(caught.value) + json.dumps(caught.value.problem())
    for value in _material(hybrid_ring):
        assert value not in shown
    # Tracebacks must not print a parser's error, which may quote its input.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_bad_fernet_secret_is_a_configuration_error() -> None:
    ring = generate_keyring(FERNET)
    document = json.loads(ring.to_json())
    _first(document)["secret"] = "too-short"

    with pytest.raises(ConfigurationError, match="not a Fernet key"):
        KeyRing.from_json(json.dumps(document))


def test_non_text_ring_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="JSON text"):
        KeyRing.from_json(None)  # type: ignore[arg-type]
