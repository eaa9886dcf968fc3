"""What budgets and rate limits cost a submit, on the emulators, as ratios to a plain submit.

The submit use case is built exactly as `submit_task` builds it (`shared.providers`,
settings from the environment) against private Firestore and Pub/Sub emulators,
and called in-process, so the figures are the flow control's and the emulator's,
not HTTP's. Four tenants: plain (no budget, no limit), budgeted (a balance far
above the run, 200 escrow shards), limited (a limit far above the run, so every
submit claims a slot and none is refused; its 256 shards are mostly new to the
instance, so most claims read their shard first: the worst case) and both.

- sequential submits: p50 and p95 per tenant, and p50 as a ratio to plain;
- 16 threads: submits per second against one budgeted tenant, and against the
  plain one in the same run.

A measurement, never a pass/fail: the machine is shared, read ratios.

    python -m bench.economy_bench [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from bench.in_process import providers_on_emulators

PROJECT = "aia-bench"
SEQUENTIAL = 200
QUICK_SEQUENTIAL = 40
BURST = 2000
QUICK_BURST = 300
THREADS = 16
TENANTS = ("plain", "budgeted", "limited", "both")


def _environment(work: Path) -> AbstractContextManager[None]:
    from shared.security.keyring import generate_keyring

    # Submit alone: the public half of a ring is what submit_task holds.
    keyring = generate_keyring().public_only().to_json()
    return providers_on_emulators(PROJECT, work, {"AIA_KEYRING": keyring, "AIA_FLOW_CACHE_S": "60"})


def _prepare() -> None:
    from google.cloud import pubsub_v1

    from shared import providers
    from shared.config import get_settings
    from shared.flow.limits_store import ALL_TYPES, LimitSpec

    settings = get_settings()
    pubsub_v1.PublisherClient().create_topic(
        name=f"projects/{PROJECT}/topics/{settings.tasks_topic}"
    )
    bank = providers.budget_bank()
    for tenant in ("budgeted", "both"):
        bank.set_budget(tenant, monthly=0, shards=200)
        bank.grant(tenant, 10_000_000)
    for tenant in ("limited", "both"):
        providers.flow_config().set_limit(tenant, ALL_TYPES, LimitSpec(rate=100_000, burst=100_000))


def _submit(tenant: str, n: int) -> None:
    from shared import providers

    providers.submit_service().submit(tenant, {"type": "echo", "payload": {"n": n}})


def sequential(n: int) -> dict[str, dict[str, float]]:
    """Submits one after another, tenants interleaved so drift hits each alike."""
    for tenant in TENANTS:  # warm every path: clients, caches, hints
        for i in range(5):
            _submit(tenant, i)
    samples: dict[str, list[float]] = {t: [] for t in TENANTS}
    for i in range(n):
        for tenant in TENANTS:
            started = time.perf_counter()
            _submit(tenant, i)
            samples[tenant].append(time.perf_counter() - started)
    plain = statistics.median(samples["plain"])
    return {
        tenant: {
            "p50_ms": round(statistics.median(s) * 1000, 2),
            "p95_ms": round(statistics.quantiles(s, n=20)[18] * 1000, 2),
            "p50_ratio": round(statistics.median(s) / plain, 2),
        }
        for tenant, s in samples.items()
    }


def burst(tenant: str, total: int) -> float:
    """Submits per second from THREADS clients sharing `total` submits."""
    left = [total]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
                n = left[0]
            try:
                _submit(tenant, n)
            except Exception as exc:  # noqa: BLE001 - re-raised once the threads are done
                errors.append(exc)
                return

    threads = [threading.Thread(target=client) for _ in range(THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return total / elapsed


def measure(*, quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, _environment(Path(tmp)):
        _prepare()
        latency = sequential(QUICK_SEQUENTIAL if quick else SEQUENTIAL)
        total = QUICK_BURST if quick else BURST
        plain_rate = burst("plain", total)
        budget_rate = burst("budgeted", total)
        from shared import providers

        totals = providers.budget_bank().snapshot("budgeted").totals
        return {
            "sequential": latency,
            "threads": THREADS,
            "burst_submits": total,
            "plain_submits_per_s": round(plain_rate, 1),
            "budgeted_submits_per_s": round(budget_rate, 1),
            "budgeted_over_plain": round(budget_rate / plain_rate, 2),
            "budget_escrow_balanced": totals.balanced,
        }


def main(*, quick: bool = False) -> None:
    figures = measure(quick=quick)
    print("tenant      p50 ms   p95 ms   p50 / plain")
    for tenant, row in figures["sequential"].items():
        print(f"{tenant:<10} {row['p50_ms']:>7} {row['p95_ms']:>8} {row['p50_ratio']:>9}")
    print(
        f"{figures['threads']} threads, {figures['burst_submits']} submits: "
        f"plain {figures['plain_submits_per_s']}/s, "
        f"budgeted {figures['budgeted_submits_per_s']}/s "
        f"({figures['budgeted_over_plain']} x), escrow balanced: "
        f"{figures['budget_escrow_balanced']}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(quick=parser.parse_args().quick)
