"""The one check of a readiness answer's shape; which status it should carry is the caller's."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

STATUSES = ("ok", "degraded", "down")


def assert_health(
    body: Mapping[str, Any],
    http_status: int,
    *,
    status: str,
    failed: Collection[str] = (),
    checks: Collection[str] = ("firestore", "pubsub"),
) -> dict[str, dict[str, Any]]:
    """Check `body` is a readiness answer with `status` where exactly `failed` failed.

    Returns the checks so the caller can look at the errors it expects.
    """
    assert status in STATUSES, status
    assert body["status"] == status, body
    assert http_status == (503 if status == "down" else 200), (http_status, body)
    assert set(body) == {"status", "version", "checks"}, body
    assert isinstance(body["version"], str), body
    assert body["version"], body
    results: dict[str, dict[str, Any]] = dict(body["checks"])
    assert set(results) == set(checks), body
    assert set(failed) <= set(checks), failed
    for name, result in results.items():
        latency = result["latency_ms"]
        assert isinstance(latency, float), result
        assert latency >= 0, result
        if name in failed:
            assert set(result) == {"ok", "latency_ms", "error"}, result
            assert result["ok"] is False, result
            # Public answer: one short line, the detail goes to the log.
            assert isinstance(result["error"], str), result
            assert result["error"], result
            assert "\n" not in result["error"], result
            assert len(result["error"]) <= 200, result
        else:
            assert result == {"ok": True, "latency_ms": latency}, result
    return results
