"""API keys on the emulator: the per-instance cache and the bound it puts on revocation."""

from __future__ import annotations

import pytest

from shared.clients import keys_firestore_client
from shared.errors import Unauthorized
from shared.security.apikeys import ApiKeys, FirestoreApiKeyStore

pytestmark = pytest.mark.integration


class Reads(FirestoreApiKeyStore):
    """The real store, counting the reads it makes."""

    def __init__(self) -> None:
        super().__init__(keys_firestore_client())
        self.reads = 0

    def get(self, key_id: str):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().get(key_id)


def test_a_revoked_key_works_on_a_caching_instance_for_at_most_the_bound(
    emulators_clean: dict[str, str],
) -> None:
    now = [1000.0]
    store = Reads()
    instance = ApiKeys(store, cache_s=30.0, clock=lambda: now[0])
    operator = ApiKeys(FirestoreApiKeyStore(keys_firestore_client()))
    key_id, key = operator.create("acme")

    assert instance.authenticate(key) == "acme"
    assert instance.authenticate(key) == "acme"
    assert store.reads == 1  # the busy client costs one read per bound, not one per request

    operator.revoke(key_id)  # on another instance: this one cannot know yet
    now[0] += 29.9
    assert instance.authenticate(key) == "acme"
    now[0] += 0.2  # the bound has passed: the next request reads the revocation
    with pytest.raises(Unauthorized):
        instance.authenticate(key)
    assert store.reads == 2


def test_a_wrong_secret_is_refused_even_for_a_cached_key(emulators_clean: dict[str, str]) -> None:
    instance = ApiKeys(Reads(), cache_s=30.0)
    _, key = ApiKeys(FirestoreApiKeyStore(keys_firestore_client())).create("acme")
    assert instance.authenticate(key) == "acme"
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with pytest.raises(Unauthorized):
        instance.authenticate(forged)


def test_unknown_keys_are_never_cached(emulators_clean: dict[str, str]) -> None:
    store = Reads()
    instance = ApiKeys(store, cache_s=30.0)
    unknown = "aia_0123456789abcdef_" + "A" * 43
    for _ in range(3):
        with pytest.raises(Unauthorized):
            instance.authenticate(unknown)
    assert store.reads == 3
