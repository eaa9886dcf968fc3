"""The figures behind docs/reliability.md, measured on a private local stack.

- recovery after a worker is SIGKILLed mid-task: kill -> the task succeeded on attempt 2
  (the lease outlives the attempt's deadline, then the sweep republishes it);
- the answer time of a submit with each dependency frozen (SIGSTOP of its emulator);
- burst throughput: 16 clients submit N tasks, until all succeeded.

A measurement, never a pass/fail: the machine is shared, so read the figures as
orders of magnitude and as ratios to each other.

    python -m bench.reliability_bench [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from devtools.client import AiaClient
from devtools.stack_process import RunningStack, running_stack
from shared.tasks.diagnostic import read_probe

BURST = 1000
QUICK_BURST = 200
FREEZES = 5
QUICK_FREEZES = 2


def _wait_started(stack: RunningStack, marker: str) -> None:
    base = Path(stack.env["AIA_DIAGNOSTIC_DIR"])
    deadline = time.monotonic() + 60
    while read_probe(marker, base)["attempts"] != [1]:
        if time.monotonic() > deadline:
            raise TimeoutError("the probe never started")
        time.sleep(0.05)


def recovery_after_worker_kill(stack: RunningStack, client: AiaClient) -> dict[str, float]:
    marker = f"b-{uuid.uuid4().hex[:12]}"
    timeout_s = 2
    body = {
        "type": "probe",
        "payload": {"marker": marker, "hold_attempts": 1},
        "timeout_s": timeout_s,
        "max_attempts": 3,
    }
    task_id = client.submit(body).json()["task_id"]
    _wait_started(stack, marker)
    killed = time.monotonic()
    stack.kill_function("process_task")
    stack.wait_restarted("process_task", stack.restarts("process_task") + 1)
    restarted = time.monotonic() - killed
    view = client.wait_for(task_id, timeout_s=120)
    assert view["attempts"] == 2, view
    return {
        "timeout_s": timeout_s,
        "function_back_s": round(restarted, 2),
        "task_succeeded_s": round(time.monotonic() - killed, 2),
    }


def frozen_answers(stack: RunningStack, client: AiaClient, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for emulator in ("pubsub-emulator", "firestore-emulator"):
        times: list[float] = []
        statuses: set[int] = set()
        for _ in range(n):
            with stack.frozen(emulator):
                started = time.perf_counter()
                resp = client.submit({"type": "echo", "payload": {}})
                times.append(time.perf_counter() - started)
                statuses.add(resp.status_code)
            time.sleep(0.5)  # let the thawed dependency settle between samples
        out[emulator] = {
            "statuses": sorted(statuses),
            "p50_s": round(statistics.median(times), 2),
            "max_s": round(max(times), 2),
        }
    return out


def burst(stack: RunningStack, n: int) -> dict[str, float]:
    ids: list[str] = []
    lock = threading.Lock()

    def sender(count: int) -> None:
        own = AiaClient(stack.base_url, stack.api_key, timeout_s=60)
        for _ in range(count):
            resp = own.submit({"type": "echo", "payload": {}})
            if resp.status_code == 202:
                with lock:
                    ids.append(resp.json()["task_id"])

    started = time.perf_counter()
    threads = [threading.Thread(target=sender, args=(n // 16 + (i < n % 16),)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    submitted = time.perf_counter() - started
    reader = AiaClient(stack.base_url, stack.api_key)
    lost = sum(reader.wait_for(t, timeout_s=600)["status"] != "succeeded" for t in ids)
    total = time.perf_counter() - started
    return {
        "tasks": n,
        "accepted": len(ids),
        "lost": lost,
        "submit_per_s": round(n / submitted, 1),
        "succeeded_per_s": round(n / total, 1),
    }


def main(*, quick: bool = False) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="aia-bench-reliability-") as tmp,
        running_stack(Path(tmp), extra_args=["--redispatch-every", "2"]) as stack,
    ):
        client = AiaClient(stack.base_url, stack.api_key, timeout_s=30)
        client.wait_for(client.submit({"type": "echo", "payload": {}}).json()["task_id"])
        result = {
            "recovery": recovery_after_worker_kill(stack, client),
            "frozen": frozen_answers(stack, client, QUICK_FREEZES if quick else FREEZES),
            "burst": burst(stack, QUICK_BURST if quick else BURST),
        }
    print(json.dumps(result, indent=2))
    out = Path("build") / "bench" / "reliability.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(quick=parser.parse_args().quick)
