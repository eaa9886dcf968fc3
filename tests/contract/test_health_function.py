"""The deployable `health` function, loaded from its file through functions-framework."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from shared.clients import publisher, topic_path
from shared.config import get_settings
from shared.operations import health
from shared.operations.health import Check

from .conftest import function_client

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "functions" / "health" / "main.py"


def load() -> FlaskClient:
    client: FlaskClient = function_client("health")
    return client


@pytest.fixture
def client() -> FlaskClient:
    return load()


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> dict[str, Check]:
    """The checks the function will run, replaced by in-memory ones."""
    fake: dict[str, Check] = {"firestore": lambda t: None, "pubsub": lambda t: None}
    monkeypatch.setattr(health, "default_checks", lambda: fake)
    return fake


def fail(timeout_s: float) -> None:
    raise ConnectionError("refused")


def test_importing_the_function_imports_no_google_client() -> None:
    # functions_framework itself ships google.cloud.functions(_v1).context;
    # anything else under google.cloud, or grpc/api_core, would come from us.
    code = f"""
import sys
from functions_framework import create_app

def google_clients():
    return sorted(
        m for m in sys.modules
        if (m.startswith("google.cloud.") and not m.startswith("google.cloud.functions"))
        or m.startswith(("grpc", "google.api_core", "google.auth"))
    )

app = create_app("health", {str(SOURCE)!r})
response = app.test_client().get("/health?probe=live")
assert response.status_code == 200, response.status_code
assert google_clients() == [], google_clients()
import google.cloud.firestore  # the detector above must be able to see a client
assert "google.cloud.firestore" in google_clients()
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_live_probe_answers_200_without_checks(
    client: FlaskClient, checks: dict[str, Check]
) -> None:
    checks["firestore"] = fail
    response = client.get("/health?probe=live")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_json() == {"status": "ok", "version": get_settings().version, "checks": {}}


@pytest.mark.parametrize("path", ["/", "/health", "/health/"])
def test_readiness_is_served_at_root_and_health(
    client: FlaskClient, checks: dict[str, Check], path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["version"] == get_settings().version
    assert set(body["checks"]) == {"firestore", "pubsub"}
    assert all(
        c["ok"] is True and isinstance(c["latency_ms"], float) for c in body["checks"].values()
    )


def test_pubsub_down_is_degraded_200(client: FlaskClient, checks: dict[str, Check]) -> None:
    checks["pubsub"] = fail
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["status"] == "degraded"
    assert response.get_json()["checks"]["pubsub"]["error"] == "ConnectionError: refused"


def test_firestore_down_is_503(client: FlaskClient, checks: dict[str, Check]) -> None:
    checks["firestore"] = fail
    response = client.get("/health")
    assert response.status_code == 503
    assert response.content_type == "application/json"
    assert response.get_json()["status"] == "down"


def test_a_hung_check_answers_within_two_seconds(
    client: FlaskClient, checks: dict[str, Check]
) -> None:
    release = threading.Event()
    checks["firestore"] = lambda t: release.wait(30)
    try:
        start = time.monotonic()
        response = client.get("/health")
        elapsed = time.monotonic() - start
    finally:
        release.set()
    assert response.status_code == 503
    assert "timed out" in response.get_json()["checks"]["firestore"]["error"]
    assert elapsed < 2.0


def test_unknown_path_is_404_problem(client: FlaskClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    body = response.get_json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow(client: FlaskClient, method: str) -> None:
    response = client.open("/health", method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert response.content_type == "application/problem+json"
    assert response.get_json()["status"] == 405


def test_unknown_probe_is_400_problem(client: FlaskClient) -> None:
    response = client.get("/health?probe=deep")
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert response.get_json()["field"] == "probe"


@pytest.mark.integration
def test_ready_against_the_emulators(emulators_clean: dict[str, str]) -> None:
    publisher().create_topic(name=topic_path(get_settings().tasks_topic))
    response = load().get("/health")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok", response.get_json()
