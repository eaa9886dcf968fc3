"""The deployable `health` function, loaded from its file through functions-framework."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from shared.clients import publisher, topic_path
from shared.config import get_settings
from shared.operations import health
from shared.operations.health import Check
from tests.support.health import assert_health
from tests.support.problems import assert_problem
from tests.support.routes import assert_serves_only

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
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert_health(response.get_json(), response.status_code, status="ok")
    assert response.get_json()["version"] == get_settings().version


def test_down_is_answered_as_503_json(client: FlaskClient, checks: dict[str, Check]) -> None:
    # Which failures mean "down" is tests/unit/test_health.py's; here: how it is sent.
    checks["firestore"] = fail
    response = client.get("/health")
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    results = assert_health(
        response.get_json(), response.status_code, status="down", failed=("firestore",)
    )
    assert results["firestore"]["error"] == "ConnectionError: refused"


def test_a_hung_check_is_answered_at_the_configured_budget(
    client: FlaskClient, checks: dict[str, Check], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The budget comes from settings (capped at 2 s there: tests/unit/test_edges.py).
    monkeypatch.setenv("AIA_HEALTH_TIMEOUT_S", "0.05")
    get_settings.cache_clear()
    release, finished = threading.Event(), threading.Event()

    def hang(timeout_s: float) -> None:
        release.wait(30)
        finished.set()

    checks["firestore"] = hang
    try:
        response = client.get("/health")
        assert not finished.is_set(), "the answer waited for the hung check"
    finally:
        release.set()
        # Read again after monkeypatch restores the environment, by the next user.
        get_settings.cache_clear()
    results = assert_health(
        response.get_json(), response.status_code, status="down", failed=("firestore",)
    )
    assert results["firestore"]["error"] == "timed out after 0.05 s"


def test_only_its_routes_and_methods_are_served(client: FlaskClient) -> None:
    assert_serves_only(client, path="/health", unknown="/nope")


def test_unknown_probe_is_400_problem(client: FlaskClient) -> None:
    assert_problem(client.get("/health?probe=deep"), 400, "probe")


@pytest.mark.integration
def test_ready_against_the_emulators(emulators_clean: dict[str, str]) -> None:
    publisher().create_topic(name=topic_path(get_settings().tasks_topic))
    response = load().get("/health")
    assert_health(response.get_json(), response.status_code, status="ok")
