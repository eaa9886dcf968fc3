"""Webhook delivery latency on the local stack: from a task's completion to its signed delivery.

Starts a private stack, registers an endpoint on a receiver in this process,
submits `echo` tasks and measures, for each, the time from the task's
`finished_at` (as the delivered body states it) to the moment the receiver read
the delivery, and from the submit to that moment. Every delivery is verified
with the official `standardwebhooks` library. A measurement, never a pass/fail:
the machine is shared, so read the figures as orders of magnitude.

    python -m bench.webhooks_bench [--quick]
    python -m bench webhooks
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from standardwebhooks.webhooks import Webhook

from devtools.receiver import ReceiverServer, receiver
from devtools.stack_process import RunningStack, running_stack

TASKS = 50
QUICK_TASKS = 10
WARM_UP = 3
BURST = 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{label:<34} {percentile(ms, 0.5):8.1f} {percentile(ms, 0.95):8.1f} "
        f"{max(ms):8.1f} {statistics.fmean(ms):8.1f}"
    )


class Tenant:
    def __init__(self, stack: RunningStack) -> None:
        key = stack.cli("keys", "create", "--tenant", "bench-webhooks").stdout.strip()
        self.base = stack.base_url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.session = requests.Session()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.session.post(self.base + path, json=body, headers=self.headers, timeout=30)
        resp.raise_for_status()
        return dict(resp.json())


def measure(
    tenant: Tenant, hook: ReceiverServer, secret: str, n: int, *, concurrent: bool
) -> tuple[list[float], list[float]]:
    """(finished -> received, submit -> received) for `n` tasks, in seconds."""
    before = len(hook.on("/bench"))
    submitted: dict[str, float] = {}
    if concurrent:
        for i in range(n):
            submitted[str(tenant.post("/tasks", _task(i))["task_id"])] = time.time()
        hook.wait_for("/bench", before + n, timeout_s=300)
    else:
        for i in range(n):
            submitted[str(tenant.post("/tasks", _task(i))["task_id"])] = time.time()
            hook.wait_for("/bench", before + i + 1, timeout_s=120)
    after_finish, after_submit = [], []
    for got in hook.on("/bench")[before:]:
        view = Webhook(secret).verify(got.body, got.headers)
        finished = datetime.fromisoformat(str(view["finished_at"])).timestamp()
        after_finish.append(got.at - finished)
        after_submit.append(got.at - submitted[str(view["task_id"])])
    return after_finish, after_submit


def _task(i: int) -> dict[str, Any]:
    return {"type": "echo", "payload": {"i": i}}


def main(*, quick: bool = False) -> None:
    n = QUICK_TASKS if quick else TASKS
    burst = QUICK_TASKS if quick else BURST
    with (
        tempfile.TemporaryDirectory(prefix="aia-bench-webhooks-") as tmp,
        running_stack(Path(tmp)) as stack,
        receiver() as hook,
    ):
        tenant = Tenant(stack)
        endpoint = tenant.post(
            "/webhooks", {"url": hook.url + "/bench", "events": ["task.succeeded"]}
        )
        secret = str(endpoint["secret"])
        # Untimed: the first deliveries pay each function's lazy imports and clients.
        measure(tenant, hook, secret, WARM_UP, concurrent=False)
        sequential = measure(tenant, hook, secret, n, concurrent=False)
        together = measure(tenant, hook, secret, burst, concurrent=True)
    print("webhook delivery on the local stack (ms)")
    print(f"{'':<34} {'p50':>8} {'p95':>8} {'max':>8} {'mean':>8}")
    print(row(f"finished -> delivered (x{n}, seq)", sequential[0]))
    print(row(f"submit -> delivered (x{n}, seq)", sequential[1]))
    print(row(f"finished -> delivered (x{burst}, burst)", together[0]))
    summary = {
        name: {
            "n": len(values),
            "p50_ms": round(percentile(values, 0.5) * 1000, 1),
            "p95_ms": round(percentile(values, 0.95) * 1000, 1),
        }
        for name, values in (("sequential", sequential[0]), ("burst", together[0]))
    }
    print(json.dumps({"finished_to_delivered": summary}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks_bench")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TASKS} tasks, not {TASKS}")
    main(quick=parser.parse_args().quick)
