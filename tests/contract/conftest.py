"""Load each real function file through functions_framework.create_app, on the emulators."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app

from shared import providers
from shared.security.keyring import KeyRing, generate_keyring
from tests.conftest import observed_topics

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "aia-test"


def function_client(name: str, signature_type: str = "http") -> Any:
    app = create_app(name, str(ROOT / "functions" / name / "main.py"), signature_type)  # type: ignore[no-untyped-call]
    return app.test_client()


@pytest.fixture(scope="session")
def ring() -> KeyRing:
    return generate_keyring()


@pytest.fixture
def configure(emulators_clean: dict[str, str], ring: KeyRing) -> Iterator[Callable[..., None]]:
    """Set the functions' environment (key ring, settings) and rebuild providers."""
    saved = dict(os.environ)

    def apply(keyring_json: str | None = None, **env: str) -> None:
        os.environ["AIA_KEYRING"] = keyring_json or ring.to_json()
        os.environ["AIA_PUBLIC_BASE_URL"] = "https://aia.example"
        os.environ.update(env)
        providers.reset()

    apply()
    observed_topics(PROJECT, ("aia-tasks", "aia-tasks-dead-letter"))
    yield apply
    os.environ.clear()
    os.environ.update(saved)
    providers.reset()


@pytest.fixture
def api_key(configure: Callable[..., None]) -> Callable[[str], str]:
    def make(tenant: str = "acme") -> str:
        return providers.api_keys().create(tenant)[1]

    return make
