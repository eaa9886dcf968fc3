"""A concurrency key under load: 200 tasks on one key with a limit of 3, on the emulators.

The submit use case and the worker are built as `submit_task` and `process_task`
build them (`shared.providers`) against private emulators and called in-process.
16 threads take deliveries from a pull subscription as the push would hand them
over (acknowledged when the worker returns, nacked when it raises), so the
releases' wake-ups arrive as real messages. Each task is a diagnostic `probe`
holding for `seconds`, which records how many ran at once.

Printed: the highest concurrency observed (must be at most the limit), how many
deliveries found every slot taken and waited, the run's time, and its
throughput as a share of what the limit allows (limit / seconds per task) and
as a ratio to a baseline run of the same tasks without a key through as many
deliveries at once as the limit (fresh emulators, same process).

    python -m bench.concurrency_bench [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.in_process import (
    deliver_all,
    delivery_subscription,
    providers_on_emulators,
    warm_firestore,
)

PROJECT = "aia-bench-concurrency"
SUBSCRIPTION = "bench-deliveries"
THREADS = 16
LIMIT = 3
SECONDS = 0.2


def run(tasks: int, work: Path, *, keyed: bool = True) -> dict[str, Any]:
    """The keyed run through THREADS deliveries, or the baseline: no key, LIMIT deliveries."""
    from shared import providers
    from shared.tasks.diagnostic import read_probe

    with providers_on_emulators(PROJECT, work):
        subscriber, sub = delivery_subscription(PROJECT, SUBSCRIPTION)
        marker = f"bench-{uuid.uuid4().hex[:10]}"
        body = {
            "type": "probe",
            "payload": {"marker": marker, "seconds": SECONDS},
            "timeout_s": 30,
            **({"concurrency_key": "user-42", "max_running": LIMIT} if keyed else {}),
        }
        warm_firestore()
        started = time.monotonic()
        submit = providers.submit_service()
        ids = {submit.submit("acme", body).task_id: "acme" for _ in range(tasks)}
        waited = [0]

        def count_waits(done: Any) -> None:
            waited[0] += done.detail.startswith("concurrency:")

        deliver_all(
            subscriber, sub, ids, threads=THREADS if keyed else LIMIT, on_result=count_waits
        )
        elapsed = time.monotonic() - started
        probe = read_probe(marker, work / "diagnostic")
        return {
            "tasks": tasks,
            "ran": len(probe["attempts"]),
            "max_concurrency": probe["max_concurrency"],
            "overlaps": len(probe["overlaps"]),
            "waited": waited[0],
            "seconds": elapsed,
            "throughput": tasks / elapsed,
            "ideal": LIMIT / SECONDS,
        }


def main(*, quick: bool = False) -> None:
    tasks = 40 if quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        got = run(tasks, Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        # The same tasks without a key through LIMIT deliveries at once: what running
        # LIMIT at a time costs without slots, hand-offs and wake-ups.
        base = run(tasks, Path(tmp), keyed=False)
    print(
        f"{got['tasks']} probe tasks of {SECONDS:g} s on one key, limit {LIMIT}, {THREADS} threads"
    )
    print(f"  ran: {got['ran']} (each once: {got['overlaps'] == 0})")
    verdict = "✓" if got["max_concurrency"] <= LIMIT else "✗"
    print(f"  highest concurrency observed: {got['max_concurrency']} (limit {LIMIT}) {verdict}")
    print(f"  deliveries that found every slot taken and waited: {got['waited']}")
    print(
        f"  {got['seconds']:.1f} s: {got['throughput']:.1f} tasks/s, "
        f"{got['throughput'] / got['ideal']:.0%} of what the limit allows ({got['ideal']:g}/s)"
    )
    print(
        f"  baseline, no key, {LIMIT} deliveries at once: {base['seconds']:.1f} s, "
        f"{base['throughput']:.1f} tasks/s"
    )
    print(f"  keyed / baseline throughput: {got['throughput'] / base['throughput']:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(quick=parser.parse_args().quick)
