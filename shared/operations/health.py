"""Liveness and readiness: is this instance up, and can it reach Firestore and Pub/Sub?

Checks run side by side on a shared pool and the answer waits at most the
budget (`settings.health_timeout_s`): a check still running then is reported
as timed out and left to finish on its own (its client call has the same
deadline), never joined. Google clients are imported on the first readiness
check, not when this module is imported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from shared.clients import fast_publisher, firestore_client, topic_path
from shared.config import get_settings
from shared.errors import BadRequest

log = logging.getLogger(__name__)

# A check gets its deadline in seconds and raises when the dependency is not usable.
Check = Callable[[float], object]

# Without Firestore nothing can be stored or read; without Pub/Sub submits are
# still stored and dispatched later, so the service is only degraded.
CRITICAL: frozenset[str] = frozenset({"firestore"})
PROBES = ("live", "ready")

# Threads are started on demand; bounded so a dependency that hangs on every
# request cannot grow the instance without limit (queued checks then time out).
_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")
_MAX_ERROR_CHARS = 200
# The first readiness check imports and builds both Google clients; doing that
# one at a time avoids two threads importing the shared grpc/protobuf stack at
# once (and building a client twice when two requests arrive together).
_CLIENT_LOCK = threading.Lock()


def firestore_check(timeout_s: float, *, client: Any | None = None) -> None:
    """One document read (absent is fine): proves the database answers and we may read."""
    if client is None:
        with _CLIENT_LOCK:
            client = firestore_client()
    # retry=None: one attempt inside the budget, not the client's minute of retries.
    client.collection("health").document("probe").get(timeout=timeout_s, retry=None)


def pubsub_check(timeout_s: float, *, client: Any | None = None, topic: str | None = None) -> None:
    """Fetch the tasks topic: proves Pub/Sub answers and the topic submits publish to exists."""
    if client is None:
        with _CLIENT_LOCK:
            client = fast_publisher()
    name = topic or topic_path(get_settings().tasks_topic)
    client.get_topic(name, timeout=timeout_s)


def warm_clients() -> None:
    """Import and build both clients once (no I/O: their channels connect on first use).

    Done before the budget starts: it bounds waiting for the dependencies, and a
    cold instance's second of imports must not read as a dependency that is down.
    A client that cannot be built is left for its check to report.
    """
    with _CLIENT_LOCK:
        for build in (firestore_client, lambda: fast_publisher().prepare()):
            try:
                build()
            except Exception:  # the check names the failure in its answer
                log.debug("client not built before the checks", exc_info=True)


def default_checks() -> dict[str, Check]:
    warm_clients()
    return {"firestore": firestore_check, "pubsub": pubsub_check}


def _elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def _describe(exc: BaseException) -> str:
    # The endpoint is public: a short first line here, full detail goes to the log.
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text[:_MAX_ERROR_CHARS]


def _run(name: str, check: Check, timeout_s: float) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        check(timeout_s)
    except Exception as exc:
        # Any failure of a dependency's client means "not ready", whatever its type.
        log.warning("health check %s failed", name, exc_info=True)
        return {"ok": False, "latency_ms": _elapsed_ms(start), "error": _describe(exc)}
    return {"ok": True, "latency_ms": _elapsed_ms(start)}


def run_checks(checks: Mapping[str, Check], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Run every check concurrently; wait at most `timeout_s` for all of them together."""
    started = time.perf_counter()
    futures: dict[str, Future[dict[str, Any]]] = {
        name: _POOL.submit(_run, name, check, timeout_s) for name, check in checks.items()
    }
    wait(futures.values(), timeout=timeout_s)
    results: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        if future.done():
            results[name] = future.result()
            continue
        # cancel() only helps if it never started; a running check is abandoned, not joined.
        future.cancel()
        log.warning("health check %s timed out after %.1f s", name, timeout_s)
        results[name] = {
            "ok": False,
            "latency_ms": _elapsed_ms(started),
            "error": f"timed out after {timeout_s:g} s",
        }
    return results


def overall(results: Mapping[str, Mapping[str, Any]], critical: frozenset[str] = CRITICAL) -> str:
    failed = {name for name, r in results.items() if not r["ok"]}
    if failed & critical:
        return "down"
    return "degraded" if failed else "ok"


def check_health(
    *,
    probe: str | None,
    checks: Mapping[str, Check] | None = None,
    timeout_s: float | None = None,
    version: str | None = None,
) -> tuple[dict[str, Any], int]:
    """Health body and HTTP status: 200 for ok/degraded, 503 for down.

    `probe="live"` answers at once without touching a dependency; `None` or
    `"ready"` runs the checks (the defaults unless `checks` is given).
    """
    if probe is not None and probe not in PROBES:
        raise BadRequest(f"unknown probe {probe!r}; use one of: {', '.join(PROBES)}", field="probe")
    if version is None:
        version = get_settings().version
    if probe == "live":
        return {"status": "ok", "version": version, "checks": {}}, 200
    budget = get_settings().health_timeout_s if timeout_s is None else timeout_s
    results = run_checks(default_checks() if checks is None else checks, budget)
    status = overall(results)
    return {
        "status": status,
        "version": version,
        "checks": results,
    }, 503 if status == "down" else 200
