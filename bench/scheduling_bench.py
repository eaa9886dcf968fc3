"""How late a delayed task starts on the local stack: `started_at - run_at`, p50/p95/max.

Starts a private stack (its ticker called about once a second, as `make dev`
does), submits echo tasks with delays spread evenly over a window, waits for
all to succeed and reads each one's `run_at` and `started_at` from the API.
A measurement, never a pass/fail: the machine is shared. The target is a p95
of at most 2 s.

    python -m bench.scheduling_bench [--quick]
    python -m bench scheduling
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

from devtools.client import AiaClient
from devtools.stack_process import running_stack

TASKS = 100
QUICK_TASKS = 20
FIRST_DELAY_S = 5.0  # every submit answers before the first one is due
WINDOW_S = 20.0


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(client: AiaClient, n: int) -> dict[str, Any]:
    ids = []
    for i in range(n):
        delay = FIRST_DELAY_S + WINDOW_S * i / max(1, n - 1)
        resp = client.submit({"type": "echo", "payload": {"i": i}, "delay_s": delay})
        resp.raise_for_status()
        assert resp.json()["status"] == "scheduled", resp.text
        ids.append(resp.json()["task_id"])
    deadline = time.monotonic() + FIRST_DELAY_S + WINDOW_S + 60
    views: dict[str, dict[str, Any]] = {}
    for task_id in ids:
        views[task_id] = client.wait_for(task_id, timeout_s=max(1.0, deadline - time.monotonic()))
    late = []
    for view in views.values():
        assert view["status"] == "succeeded", view
        started = datetime.fromisoformat(view["started_at"])
        late.append((started - datetime.fromisoformat(view["run_at"])).total_seconds())
    return {
        "tasks": n,
        "lateness_p50_s": round(statistics.median(late), 3),
        "lateness_p95_s": round(_quantile(late, 0.95), 3),
        "lateness_max_s": round(max(late), 3),
        "lateness_min_s": round(min(late), 3),
    }


def main(*, quick: bool = False) -> None:
    n = QUICK_TASKS if quick else TASKS
    with (
        tempfile.TemporaryDirectory(prefix="aia-bench-sched-") as tmp,
        running_stack(Path(tmp)) as stack,
    ):
        client = AiaClient(stack.base_url, stack.api_key)
        # Untimed: the first requests pay each function's lazy imports.
        warm = client.submit({"type": "echo", "payload": {}, "delay_s": 2}).json()["task_id"]
        client.wait_for(warm, timeout_s=60)
        result = measure(client, n)
    print(f"{n} echo tasks delayed {FIRST_DELAY_S:g}-{FIRST_DELAY_S + WINDOW_S:g} s (s late)")
    print(f"{'p50':>7} {'p95':>7} {'max':>7}")
    print(
        f"{result['lateness_p50_s']:7.2f} {result['lateness_p95_s']:7.2f} "
        f"{result['lateness_max_s']:7.2f}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.scheduling_bench")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TASKS} tasks, not {TASKS}")
    main(quick=parser.parse_args().quick)
