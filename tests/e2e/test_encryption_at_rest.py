"""Through the running stack: Firestore holds no plaintext of what clients send or get back."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import requests

from tests.e2e.support import E2E

pytestmark = pytest.mark.e2e


def raw_document(e2e: E2E, path: str) -> dict[str, Any]:
    """The document exactly as the Firestore emulator stores it (REST, no client decoding)."""
    env = e2e.stack.env
    url = (
        f"http://{env['FIRESTORE_EMULATOR_HOST']}/v1/projects/{env['GOOGLE_CLOUD_PROJECT']}"
        f"/databases/(default)/documents/{path}"
    )
    resp = requests.get(url, headers={"Authorization": "Bearer owner"}, timeout=10)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def all_bytes(fields: dict[str, Any]) -> bytes:
    """Every stored value, byte fields decoded, concatenated: where plaintext would show."""
    out = json.dumps(fields).encode()
    for value in fields.values():
        if "bytesValue" in value:
            out += base64.b64decode(value["bytesValue"])
    return out


def test_payload_result_and_error_are_sealed_in_firestore(e2e: E2E) -> None:
    client = e2e.dev()
    secret = "correct horse battery staple 7731"
    ok = client.submit({"type": "echo", "payload": {"secret": secret}}).json()["task_id"]
    assert client.wait_for(ok)["result"] == {"secret": secret}

    stored = raw_document(e2e, f"tasks/{ok}")["fields"]
    assert set(stored) >= {"payload", "result", "data_key"}
    for field in ("payload", "result", "data_key"):
        assert "bytesValue" in stored[field], field
    assert secret.encode() not in all_bytes(stored)
    # What queries need stays readable.
    assert stored["status"] == {"stringValue": "succeeded"}
    assert stored["type"] == {"stringValue": "echo"}

    failed = client.submit(
        {"type": "fail", "payload": {"times": 3, "retryable": False}, "max_attempts": 1}
    ).json()["task_id"]
    view = client.wait_for(failed)
    assert view["status"] == "failed"
    stored = raw_document(e2e, f"tasks/{failed}")["fields"]
    assert "bytesValue" in stored["error"]
    assert view["error"]["message"].encode() not in all_bytes(stored)


def test_idempotency_records_hold_digests_only(e2e: E2E) -> None:
    client = e2e.dev()
    key = "invoice-8812-unique-e2e"
    secret = "idempotent plaintext 5519"
    resp = client.submit({"type": "echo", "payload": {"s": secret}}, idempotency_key=key)
    assert resp.status_code == 202
    env = e2e.stack.env
    url = (
        f"http://{env['FIRESTORE_EMULATOR_HOST']}/v1/projects/{env['GOOGLE_CLOUD_PROJECT']}"
        "/databases/(default)/documents/idempotency_keys?pageSize=300"
    )
    listing = requests.get(url, headers={"Authorization": "Bearer owner"}, timeout=10).json()
    records = [
        d
        for d in listing["documents"]
        if d["fields"]["task_id"]["stringValue"] == resp.json()["task_id"]
    ]
    assert len(records) == 1
    text = json.dumps(records[0])
    assert key not in text
    assert secret not in text
