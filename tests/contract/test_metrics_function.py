"""The deployable `metrics` function, loaded from its file through functions-framework."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from shared.clients import firestore_client
from shared.errors import Unavailable
from shared.operations import metrics
from shared.operations.metrics import MetricsSnapshot, record_duration, record_submitted
from shared.queries import TASKS
from shared.tasks.registry import builtin_registry
from tests.support.problems import assert_problem
from tests.support.routes import assert_serves_only

from .conftest import function_client

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


def load() -> FlaskClient:
    client: FlaskClient = function_client("metrics")
    return client


@pytest.fixture
def client() -> FlaskClient:
    return load()


@pytest.fixture
def no_firestore(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test if the function collects anything."""
    calls: list[str] = []

    def collect() -> MetricsSnapshot:
        calls.append("collect")
        raise AssertionError("must not touch Firestore")

    monkeypatch.setattr(metrics, "collect_current", collect)
    return calls


def test_only_its_routes_and_methods_are_served_without_touching_firestore(
    client: FlaskClient, no_firestore: list[str]
) -> None:
    assert_serves_only(client, path="/metrics", unknown="/metrics/extra")
    assert no_firestore == []


def test_firestore_unavailable_is_503_problem(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def collect() -> MetricsSnapshot:
        raise Unavailable("Firestore did not answer")

    monkeypatch.setattr(metrics, "collect_current", collect)
    body = assert_problem(client.get("/metrics"), 503)
    assert body["detail"] == "Firestore did not answer"


@pytest.fixture
def recorded(emulators_clean: dict[str, str]) -> None:
    db = firestore_client()
    batch = db.batch()
    for i in range(3):
        batch.set(db.collection(TASKS).document(f"e{i}"), {"status": "succeeded", "type": "echo"})
        record_submitted(batch, db, "echo", shards=4)
        record_duration(batch, db, "echo", 0.02 * (i + 1), shards=4, outcome="succeeded")
    batch.set(db.collection(TASKS).document("s0"), {"status": "running", "type": "sleep"})
    record_submitted(batch, db, "sleep", shards=4)
    batch.commit()


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/metrics", "/"])
@pytest.mark.usefixtures("recorded")
def test_exposition_reports_counts_counters_and_histograms(path: str) -> None:
    response = load().get(path, headers={"Accept": PROMETHEUS_ACCEPT})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}

    tasks = {(s.labels["status"], s.labels["type"]): s.value for s in families["aia_tasks"].samples}
    names = builtin_registry().names()
    assert set(tasks) == {(s, t) for s in ("queued", "running") for t in names}
    assert tasks[("running", "sleep")] == 1
    assert tasks[("queued", "echo")] == 0
    finished = {
        (s.labels["status"], s.labels["type"]): s.value
        for s in families["aia_tasks_finished"].samples
    }
    assert set(finished) == {(s, t) for s in ("succeeded", "failed") for t in names}
    assert finished[("succeeded", "echo")] == 3

    submitted = {s.labels["type"]: s.value for s in families["aia_tasks_submitted"].samples}
    assert submitted["echo"] == 3
    assert submitted["sleep"] == 1

    echo = {
        (s.name, s.labels.get("le")): s.value
        for s in families["aia_task_duration_seconds"].samples
        if s.labels["type"] == "echo"
    }
    assert echo[("aia_task_duration_seconds_bucket", "0.025")] == 1
    assert echo[("aia_task_duration_seconds_bucket", "0.05")] == 2
    assert echo[("aia_task_duration_seconds_bucket", "0.1")] == 3
    assert echo[("aia_task_duration_seconds_bucket", "+Inf")] == 3
    assert echo[("aia_task_duration_seconds_count", None)] == 3
    assert echo[("aia_task_duration_seconds_sum", None)] == pytest.approx(0.12)


@pytest.mark.integration
@pytest.mark.usefixtures("recorded")
def test_accept_json_returns_the_same_figures() -> None:
    client = load()
    response = client.get("/metrics", headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.content_type == "application/json"
    assert response.headers["Vary"] == "Accept"
    body = response.get_json()
    assert body["aia_tasks_finished_total"]["succeeded"]["echo"] == 3
    assert body["aia_tasks"]["running"]["sleep"] == 1
    assert body["aia_tasks_submitted_total"]["echo"] == 3
    echo = body["aia_task_duration_seconds"]["echo"]
    assert echo["count"] == 3
    assert echo["buckets"]["0.05"] == 2
    assert echo["buckets"]["+Inf"] == 3

    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "aia_tasks":
                assert body["aia_tasks"][sample.labels["status"]][sample.labels["type"]] == (
                    sample.value
                )
            elif sample.name == "aia_tasks_finished_total":
                finished = body["aia_tasks_finished_total"]
                assert finished[sample.labels["status"]][sample.labels["type"]] == sample.value
            elif sample.name == "aia_tasks_submitted_total":
                assert body["aia_tasks_submitted_total"][sample.labels["type"]] == sample.value


@pytest.mark.integration
def test_wildcard_accept_gets_text(emulators_clean: dict[str, str]) -> None:
    response = load().get("/metrics", headers={"Accept": "*/*"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert b"# TYPE aia_tasks gauge" in response.data
