"""A fan-out of 10,000 children to its continuation, and cancelling a running task.

Starts a private stack and submits the diagnostic `fan` task: it fans out N
`echo` children and a continuation that totals them (`join: all`). Measures
the time from the submit to the parent's `succeeded` (its result is the
continuation's) and counts, in the emulator, the documents the fan-out wrote
per child: its task, its join record (`joins/{parent}/done/{child}`, in the
child's own terminal commit) and the bucket records (one per 100 children).
Then cancels `sleep` tasks while they run and measures the time from the
cancel's answer to the task's `cancelled` (the handler checks `ctx.cancelled`).
A measurement, never a pass/fail: the machine is shared.

    python -m bench.fanout_bench [--children N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from devtools.client import AiaClient
from devtools.stack_process import RunningStack, running_stack
from shared import queries

CHILDREN = 10_000
QUICK_CHILDREN = 500
CANCELS = 10
QUICK_CANCELS = 3


def fan_out(client: AiaClient, stack: RunningStack, children: int) -> dict[str, Any]:
    started = time.monotonic()
    resp = client.submit({"type": "fan", "payload": {"children": children}})
    resp.raise_for_status()
    parent = resp.json()["task_id"]
    # About 40 children a second on two shared cores: allow a generous hour.
    done = client.wait_for(parent, timeout_s=3600, interval_s=1.0)
    elapsed = time.monotonic() - started
    assert done["status"] == "succeeded", done
    assert done["result"]["succeeded"] == children, done["result"]
    return {
        "children": children,
        "submit_to_continuation_done_s": round(elapsed, 1),
        "children_per_s": round(children / elapsed, 1),
        **_documents_per_child(stack, parent, children),
    }


def _documents_per_child(stack: RunningStack, parent: str, children: int) -> dict[str, Any]:
    from google.cloud import firestore

    os.environ["FIRESTORE_EMULATOR_HOST"] = stack.env["FIRESTORE_EMULATOR_HOST"]
    db = firestore.Client(project=stack.env["GOOGLE_CLOUD_PROJECT"])
    join = db.collection(queries.JOINS).document(parent)
    records = sum(1 for _ in join.collection(queries.JOIN_DONE).stream())
    buckets = sum(1 for _ in join.collection(queries.JOIN_BUCKETS).stream())
    tasks = sum(
        1
        for _ in db.collection(queries.TASKS)
        .where(filter=firestore.FieldFilter("parent_id", "==", parent))
        .select([])
        .stream()
    )
    return {
        "child_tasks": tasks,
        "join_records_per_child": round(records / children, 3),
        "bucket_records": buckets,
    }


def cancel_latency(client: AiaClient, n: int) -> dict[str, Any]:
    latencies = []
    for _ in range(n):
        resp = client.submit({"type": "sleep", "payload": {"seconds": 25}})
        resp.raise_for_status()
        task_id = resp.json()["task_id"]
        client.wait_for(task_id, ("running",), timeout_s=60)
        time.sleep(0.5)  # well into the attempt
        answered = client.request("POST", f"/tasks/{task_id}:cancel")
        sent = time.monotonic()
        assert answered.status_code == 202, answered.text
        view = client.wait_for(task_id, timeout_s=60, interval_s=0.02)
        latencies.append(time.monotonic() - sent)
        assert view["status"] == "cancelled", view
    return {
        "cancels": n,
        "cancel_to_cancelled_p50_s": round(statistics.median(latencies), 2),
        "cancel_to_cancelled_max_s": round(max(latencies), 2),
    }


def main(*, children: int, cancels: int) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="aia-bench-fanout-") as tmp,
        running_stack(Path(tmp)) as stack,
    ):
        client = AiaClient(stack.base_url, stack.api_key)
        # Untimed: the first requests pay each function's lazy imports.
        warm = client.submit({"type": "fan", "payload": {"children": 2}}).json()["task_id"]
        client.wait_for(warm, timeout_s=120)
        result = {**fan_out(client, stack, children), **cancel_latency(client, cancels)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_bench")
    parser.add_argument("--children", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CHILDREN} children")
    args = parser.parse_args()
    quick = bool(args.quick)
    main(
        children=args.children or (QUICK_CHILDREN if quick else CHILDREN),
        cancels=QUICK_CANCELS if quick else CANCELS,
    )
