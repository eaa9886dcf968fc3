"""What a cold instance loads before its first answer: only what that answer needs.

Each case builds a function's use case in a fresh interpreter, as a cold start
does, and lists the features it pulled in. Clients are made but never called,
so no emulator is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.security.keyring import generate_keyring

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, ssl, sys

def refuse(*args, **kwargs):
    raise AssertionError("a TLS context was made before any delivery")

ssl.create_default_context = refuse
from shared import providers

for name in sys.argv[1].split(","):
    getattr(providers, name)()
print(json.dumps(sorted(sys.modules)))
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    ring = tmp_path / "keyring.json"
    ring.write_text(generate_keyring().to_json(), encoding="utf-8")
    return {
        "PATH": os.environ.get("PATH", ""),
        "GOOGLE_CLOUD_PROJECT": "aia-cold",
        # Discard ports: a client made is fine, a call made would fail.
        "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9",
        "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
        "AIA_KEYRING_FILE": str(ring),
        "AIA_TRACE_EXPORTER": "none",
    }


def loaded(env: dict[str, str], *providers: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(providers)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    modules: list[str] = json.loads(result.stdout.splitlines()[-1])
    return modules


def under(modules: list[str], *prefixes: str) -> list[str]:
    return [m for m in modules if m.startswith(prefixes)]


def test_a_status_read_loads_no_pubsub_and_no_feature_that_follows_an_outcome(
    env: dict[str, str],
) -> None:
    modules = loaded(env, "status_service")
    assert "google.cloud.firestore_v1.client" in modules  # the probe sees what it builds
    assert under(modules, "google.pubsub_v1", "google.cloud.pubsub") == []
    assert under(modules, "shared.webhooks", "shared.workflows", "shared.flow.ledger") == []


def test_a_submit_service_loads_neither_pubsub_nor_webhooks_before_it_needs_them(
    env: dict[str, str],
) -> None:
    modules = loaded(env, "submit_service")
    assert "shared.tasks.submission" in modules
    assert under(modules, "google.pubsub_v1", "google.cloud.pubsub") == []
    assert under(modules, "shared.webhooks") == []


def test_the_publisher_client_is_not_made_before_a_publish(env: dict[str, str]) -> None:
    # The worker holds one: a delivery that publishes nothing never loads Pub/Sub.
    modules = loaded(env, "task_publisher", "redispatcher")
    assert "shared.tasks.dispatch" in modules
    assert under(modules, "google.pubsub_v1", "google.cloud.pubsub") == []
