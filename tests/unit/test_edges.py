"""Pure logic at the edges: config, API keys, page tokens, ack/nack mapping, logs, timeouts."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from datetime import UTC, datetime

import pytest

from shared.config import ENVIRONMENT, Settings, load_settings
from shared.errors import (
    BadRequest,
    ConfigurationError,
    IntegrityError,
    NonRetryable,
    TaskBusy,
    TaskTimeout,
    Unauthorized,
    ValidationFailed,
)
from shared.events import MalformedMessage, decode_task_message, should_ack
from shared.logs import CloudLoggingFormatter, bind, trace_id_from_headers
from shared.security.apikeys import ApiKeys
from shared.tasks.models import ApiKeyRecord
from shared.tasks.repository import decode_page_token, encode_page_token


class MemoryKeyStore:
    def __init__(self) -> None:
        self.records: dict[str, ApiKeyRecord] = {}

    def get(self, key_id: str) -> ApiKeyRecord | None:
        return self.records.get(key_id)

    def add(self, record: ApiKeyRecord) -> None:
        self.records[record.key_id] = record

    def revoke(self, key_id: str, when: datetime) -> None:
        self.records[key_id] = self.records[key_id].model_copy(update={"revoked_at": when})


def test_settings_defaults_and_validation_name_the_variable() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert load_settings({"AIA_METRICS_SHARDS": "8"}).metrics_shards == 8
    with pytest.raises(ConfigurationError, match="AIA_METRICS_SHARDS"):
        load_settings({"AIA_METRICS_SHARDS": "zero"})
    with pytest.raises(ConfigurationError, match="AIA_TASKS_TOPIC"):
        load_settings({"AIA_TASKS_TOPIC": "ab"})
    assert set(ENVIRONMENT.values()) == {f.name for f in dataclasses.fields(Settings)}


def test_settings_convert_text_by_their_rules_and_refuse_the_rest() -> None:
    settings = load_settings(
        {
            "AIA_DIAGNOSTIC_TASKS": "off",
            "AIA_TASK_MODULES": " tasks.billing , tasks.reports,",
            "AIA_TASK_PRICES": "echo=1, analytics.summary=5",
            "AIA_HEALTH_TIMEOUT_S": "0.5",
            "AIA_DIAGNOSTIC_DIR": "/tmp/probe",
            "AIA_RATE_LIMIT_DEFAULT": "10/20",
        }
    )
    assert settings.diagnostic_tasks is False
    assert settings.task_modules == ("tasks.billing", "tasks.reports")
    assert settings.task_prices == {"echo": 1, "analytics.summary": 5}
    assert settings.health_timeout_s == 0.5
    assert str(settings.diagnostic_dir) == "/tmp/probe"
    assert settings.rate_limit_default == "10/20"
    refused = {
        "AIA_DIAGNOSTIC_TASKS": "maybe",
        "AIA_TASK_PRICES": "echo",
        "AIA_HEALTH_TIMEOUT_S": "3",
        "AIA_METRICS_SHARDS": "1.5",
        "AIA_LOG_LEVEL": "LOUD",
        "AIA_RATE_LIMIT_DEFAULT": "fast",
        "AIA_METRICS_FLUSH_S": "nan",
    }
    for variable, value in refused.items():
        with pytest.raises(ConfigurationError, match=variable):
            load_settings({variable: value})
    with pytest.raises(ConfigurationError, match="price of 'echo' must be >= 0"):
        load_settings({"AIA_TASK_PRICES": "echo=-1"})
    # The sweep must wait out Pub/Sub's backoff: a rule across two settings.
    with pytest.raises(ConfigurationError, match="AIA_REDISPATCH_AFTER_S"):
        load_settings({"AIA_REDISPATCH_AFTER_S": "60", "AIA_RETRY_MAX_BACKOFF_S": "60"})
    # Built in code, the same rules hold.
    with pytest.raises(ValueError, match="metrics_shards"):
        Settings(metrics_shards=0)
    assert Settings(metrics_token="t") == Settings(metrics_token="t")  # type: ignore[arg-type]


def test_keyring_text_from_variable_file_or_clear_error(tmp_path: object) -> None:
    assert load_settings({"AIA_KEYRING": "{}"}).keyring_text() == "{}"
    # A value no other setting's repr could contain (an empty mapping prints as "{}").
    secret = '{"ring": "s3cret-ring"}'
    assert "s3cret-ring" not in repr(load_settings({"AIA_KEYRING": secret}))
    with pytest.raises(ConfigurationError, match="AIA_KEYRING"):
        Settings().keyring_text()
    with pytest.raises(ConfigurationError, match="AIA_KEYRING_FILE"):
        load_settings({"AIA_KEYRING_FILE": "/nonexistent/ring.json"}).keyring_text()


def test_api_keys_authenticate_only_live_keys() -> None:
    store = MemoryKeyStore()
    keys = ApiKeys(store)
    key_id, key = keys.create("acme")
    assert keys.authenticate(key) == "acme"
    assert key.split("_")[2] not in json.dumps(
        [r.model_dump(mode="json") for r in store.records.values()]
    )
    # Not the last character: its low bits are base64 padding, so some changes decode the same.
    tampered = key[:-5] + ("A" if key[-5] != "A" else "B") + key[-4:]
    for bad in (tampered, "aia_0000000000000000_" + "x" * 43, "nonsense", ""):
        with pytest.raises(Unauthorized):
            keys.authenticate(bad)
    keys.revoke(key_id)
    with pytest.raises(Unauthorized):
        keys.authenticate(key)
    with pytest.raises(ValidationFailed):
        keys.create("Bad Tenant!")


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    task_id = "0123456789abcdef0123456789abcdef"
    assert decode_page_token(encode_page_token(created, task_id)) == (created, task_id)
    forged = [encode_page_token(created, bad) for bad in ("a/b", "__x__", "", "ABC")]
    naive = base64.urlsafe_b64encode(b'{"c": "2026-01-01T00:00:00", "i": "x"}').decode()
    for bad in ("%%%", "e30", naive, base64.urlsafe_b64encode(b"[]").decode(), *forged):
        with pytest.raises(BadRequest):
            decode_page_token(bad)


def test_ack_only_what_a_redelivery_cannot_fix() -> None:
    assert should_ack(None)
    assert should_ack(NonRetryable("x"))
    assert should_ack(MalformedMessage("x"))
    assert should_ack(IntegrityError("x"))
    assert not should_ack(TaskBusy("x"))
    assert not should_ack(TaskTimeout("x"))
    assert not should_ack(RuntimeError("x"))


def test_decode_task_message() -> None:
    task_id = "0123456789abcdef0123456789abcdef"
    raw = json.dumps({"task_id": task_id, "tenant_id": "acme"}).encode()
    message = decode_task_message({"message": {"data": base64.b64encode(raw).decode()}})
    assert (message.task_id, message.tenant_id) == (task_id, "acme")
    not_an_id = base64.b64encode(b'{"task_id": "../x", "tenant_id": "acme"}').decode()
    for bad in (
        {},
        {"message": {"data": "***"}},
        {"message": {"data": base64.b64encode(b"{}").decode()}},
        {"message": {"data": not_an_id}},
    ):
        with pytest.raises(MalformedMessage):
            decode_task_message(bad)


def test_log_lines_are_cloud_logging_json_with_trace() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_from_headers({"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}) == trace
    assert trace_id_from_headers({"X-Cloud-Trace-Context": f"{trace}/1;o=1"}) == trace
    assert trace_id_from_headers({}) is None
    bind(trace, path="/tasks")
    record = logging.LogRecord("aia", logging.WARNING, __file__, 1, "hello %s", ("x",), None)
    record.task_id = "t1"
    line = json.loads(CloudLoggingFormatter("proj").format(record))
    assert line["severity"] == "WARNING"
    assert line["message"] == "hello x"
    assert line["logging.googleapis.com/trace"] == f"projects/proj/traces/{trace}"
    assert (line["path"], line["task_id"]) == ("/tasks", "t1")
    bind(None)


def test_the_health_budget_cannot_exceed_two_seconds() -> None:
    # /health must answer within 2 s; the budget is the only wait in it.
    assert load_settings({"AIA_HEALTH_TIMEOUT_S": "2"}).health_timeout_s == 2.0
    for bad in ("2.01", "0", "-1"):
        with pytest.raises(ConfigurationError, match="AIA_HEALTH_TIMEOUT_S"):
            load_settings({"AIA_HEALTH_TIMEOUT_S": bad})
