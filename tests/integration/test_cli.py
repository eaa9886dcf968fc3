"""The operator CLI (`bin/aia`) against the Firestore emulator, run as operators run it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared.errors import Unauthorized
from shared.queries import API_KEYS
from shared.security.apikeys import ApiKeys, FirestoreApiKeyStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def aia(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "bin" / "aia"), *args],
        cwd=cwd,  # no .aia/dev.env beside the caller; the emulator variables are set
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def keys_db() -> Any:
    """The database AIA_KEYS_DATABASE names (the default here), where `aia keys` writes."""
    from google.cloud import firestore

    from shared.config import get_settings

    settings = get_settings()
    return firestore.Client(project=settings.project, database=settings.keys_database)


@pytest.mark.parametrize(
    "given",
    ["0123456789abcdef", "aia_0123456789abcdef_" + "A" * 43],
    ids=["key id", "whole key"],
)
def test_revoking_an_unknown_key_fails_clearly_and_creates_nothing(
    emulators_clean: dict[str, str], tmp_path: Path, given: str
) -> None:
    result = aia(emulators_clean, tmp_path, "keys", "revoke", given)

    assert result.returncode == 1, result
    assert result.stderr.strip() == "aia: no API key 0123456789abcdef", result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    # update() on a missing document must not have created a revoked stub.
    db = keys_db()
    assert not db.collection(API_KEYS).document("0123456789abcdef").get().exists


def test_revoking_a_known_key_stops_it(emulators_clean: dict[str, str], tmp_path: Path) -> None:
    keys = ApiKeys(FirestoreApiKeyStore(keys_db()))
    key_id, key = keys.create("acme")
    assert keys.authenticate(key) == "acme"

    result = aia(emulators_clean, tmp_path, "keys", "revoke", key_id)

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"revoked key {key_id}"
    with pytest.raises(Unauthorized):
        keys.authenticate(key)


@pytest.mark.parametrize("given", ["a/b", "__x__"])
def test_revoking_a_malformed_key_id_fails_clearly(
    emulators_clean: dict[str, str], tmp_path: Path, given: str
) -> None:
    result = aia(emulators_clean, tmp_path, "keys", "revoke", given)

    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("aia: "), result.stderr
    assert given in result.stderr
