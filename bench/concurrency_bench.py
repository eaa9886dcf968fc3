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
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devtools.emulators import emulators

PROJECT = "aia-bench-concurrency"
SUBSCRIPTION = "bench-deliveries"
THREADS = 16
LIMIT = 3
SECONDS = 0.2


@contextmanager
def _environment(work: Path) -> Iterator[None]:
    """Private emulators, the settings pointing at them, and providers built afresh."""
    from shared import providers
    from shared.security.keyring import generate_keyring

    with emulators(PROJECT, log_dir=work) as env:
        saved = dict(os.environ)
        os.environ.update(env)
        os.environ.update(
            {
                "AIA_KEYRING": generate_keyring().to_json(),
                "AIA_LOG_LEVEL": "ERROR",
                "AIA_DIAGNOSTIC_DIR": str(work / "diagnostic"),
            }
        )
        providers.reset()
        try:
            yield
        finally:
            providers.reset()
            os.environ.clear()
            os.environ.update(saved)


def _drain(subscriber: Any, sub: str, ids: list[str], threads: int) -> int:
    """Deliver until every task succeeded; how many deliveries waited for a slot."""
    from shared import providers
    from shared.tasks.models import TaskMessage, TaskStatus

    worker, status = providers.worker(), providers.status_service()
    waited = [0]
    lock = threading.Lock()

    def deliver(ack_id: str, task_id: str) -> None:
        try:
            done = worker.process(TaskMessage(task_id=task_id, tenant_id="acme"))
        except Exception:  # noqa: BLE001 - nacked, as the push would be
            subscriber.modify_ack_deadline(
                subscription=sub, ack_ids=[ack_id], ack_deadline_seconds=0
            )
            return
        if done.detail.startswith("concurrency:"):
            with lock:
                waited[0] += 1
        subscriber.acknowledge(subscription=sub, ack_ids=[ack_id])

    deadline = time.monotonic() + 600
    checked = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while ids and time.monotonic() < deadline:
            got = subscriber.pull(subscription=sub, max_messages=threads, return_immediately=True)
            for received in got.received_messages:
                message = TaskMessage.model_validate_json(received.message.data)
                pool.submit(deliver, received.ack_id, message.task_id)
            if got.received_messages:
                continue
            # Reading every status is the harness's own cost: not on each empty pull.
            if time.monotonic() - checked > 2.0:
                ids = [t for t in ids if status.get("acme", t).status is not TaskStatus.SUCCEEDED]
                checked = time.monotonic()
            time.sleep(0.01)
    return waited[0]


def run(tasks: int, work: Path, *, keyed: bool = True) -> dict[str, Any]:
    """The keyed run through THREADS deliveries, or the baseline: no key, LIMIT deliveries."""
    from google.cloud import pubsub_v1

    from shared import providers
    from shared.clients import firestore_client
    from shared.config import get_settings
    from shared.tasks.diagnostic import read_probe

    with _environment(work):
        topic = f"projects/{PROJECT}/topics/{get_settings().tasks_topic}"
        sub = f"projects/{PROJECT}/subscriptions/{SUBSCRIPTION}"
        pubsub_v1.PublisherClient().create_topic(name=topic)
        subscriber = pubsub_v1.SubscriberClient()
        subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=30)
        marker = f"bench-{uuid.uuid4().hex[:10]}"
        body = {
            "type": "probe",
            "payload": {"marker": marker, "seconds": SECONDS},
            "timeout_s": 30,
            **({"concurrency_key": "user-42", "max_running": LIMIT} if keyed else {}),
        }
        # The first call to a fresh emulator opens the channel: not the submit path's cost
        # (and slower than its tight deadlines).
        firestore_client().collection("warm").document("up").get(timeout=30)
        started = time.monotonic()
        submit = providers.submit_service()
        ids = [submit.submit("acme", body).task_id for _ in range(tasks)]
        waited = _drain(subscriber, sub, ids, THREADS if keyed else LIMIT)
        elapsed = time.monotonic() - started
        probe = read_probe(marker, work / "diagnostic")
        return {
            "tasks": tasks,
            "ran": len(probe["attempts"]),
            "max_concurrency": probe["max_concurrency"],
            "overlaps": len(probe["overlaps"]),
            "waited": waited,
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
