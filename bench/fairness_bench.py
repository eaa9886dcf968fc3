"""Fairness across tenants: a quiet tenant's tasks behind a busy tenant's 1,000, on the emulators.

The busy tenant's 1,000 `probe` tasks are submitted first, then the quiet
tenant's 10, all before any delivery, so every one of the busy tenant's
messages is ahead of the quiet tenant's in Pub/Sub. Then 16 threads deliver
them as the push would (`bench.in_process.deliver_all`), once with a tenant
limit (`AIA_TENANT_MAX_RUNNING`) and once without (the baseline), each on
fresh emulators in this process.

Printed, per run: when the quiet tenant's tasks started (seconds after the
deliveries began: median and last), how many of the busy tenant's had started
by then, and the ratio of the quiet tenant's last start with the limit to
without it. With the limit, the busy tenant's tasks beyond its share wait in
Firestore, acknowledged, so Pub/Sub reaches the quiet tenant's messages after
parking the backlog ahead of them (3 Firestore calls each), not after running
it. On the emulator, which serves about a hundred calls a second in all,
parking is what the quiet tenant waits for; in production the parks of many
worker instances proceed in parallel.

    python -m bench.fairness_bench [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.in_process import (
    deliver_all,
    delivery_subscription,
    providers_on_emulators,
    warm_firestore,
)

PROJECT = "aia-bench-fairness"
SUBSCRIPTION = "bench-deliveries"
THREADS = 16
TENANT_LIMIT = 4
SECONDS = 1.0
QUIET_TASKS = 10


def run(busy_tasks: int, work: Path, *, limit: int) -> dict[str, Any]:
    """One run: the busy tenant's backlog, the quiet tenant's tasks behind it, delivered."""
    from shared import providers

    settings = {"AIA_TENANT_MAX_RUNNING": str(limit), "AIA_FLOW_CACHE_S": "60"}
    with providers_on_emulators(PROJECT, work, settings):
        subscriber, sub = delivery_subscription(PROJECT, SUBSCRIPTION)
        warm_firestore()
        submit, status = providers.submit_service(), providers.status_service()
        body = {"type": "probe", "payload": {"marker": uuid.uuid4().hex, "seconds": SECONDS}}
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            busy = list(pool.map(lambda _: submit.submit("busy", body).task_id, range(busy_tasks)))
        quiet = [submit.submit("quiet", body).task_id for _ in range(QUIET_TASKS)]
        began = datetime.now(UTC)
        started = time.monotonic()
        # Until the quiet tenant's tasks are done: the rest of the backlog is the busy
        # tenant's own business (with the limit it runs 4 at a time, for minutes).
        deliver_all(subscriber, sub, dict.fromkeys(quiet, "quiet"), threads=THREADS)
        elapsed = time.monotonic() - started

        def after(tenant: str, task_id: str, field: str) -> float:
            view = status.get(tenant, task_id)
            moment = getattr(view, field)
            assert moment is not None
            return float((moment - began).total_seconds())

        quiet_starts = sorted(after("quiet", t, "started_at") for t in quiet)
        busy_started = sum(status.get("busy", t).started_at is not None for t in busy)
        return {
            "limit": limit,
            "busy_tasks": busy_tasks,
            "quiet_start_p50_s": statistics.median(quiet_starts),
            "quiet_start_last_s": quiet_starts[-1],
            "busy_started_meanwhile": busy_started,
            "seconds": elapsed,
        }


def main(*, quick: bool = False) -> None:
    busy_tasks = 200 if quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        fair = run(busy_tasks, Path(tmp), limit=TENANT_LIMIT)
    with tempfile.TemporaryDirectory() as tmp:
        base = run(busy_tasks, Path(tmp), limit=0)
    print(
        f"busy tenant: {busy_tasks} probe tasks of {SECONDS:g} s queued first; quiet tenant: "
        f"{QUIET_TASKS} behind them; {THREADS} deliveries at once"
    )
    for name, got in (("max_running 4", fair), ("no tenant limit", base)):
        print(
            f"  {name:16} quiet tenant started: p50 {got['quiet_start_p50_s']:6.2f} s, "
            f"last {got['quiet_start_last_s']:6.2f} s; busy tasks started by then: "
            f"{got['busy_started_meanwhile']}"
        )
    ratio = fair["quiet_start_last_s"] / base["quiet_start_last_s"]
    print(f"  quiet tenant's last start, limit / no limit: {ratio:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.fairness_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(quick=parser.parse_args().quick)
