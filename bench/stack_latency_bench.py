"""What one sequential client sees of the local stack: submit, and submit to `succeeded`.

Starts a private stack (emulators, every function, the gateway) on free ports,
submits `echo` tasks one after another through the gateway and waits for each
to succeed. A measurement, never a pass/fail: the machine is shared, so read
the figures relative to each other (the ratio says how much of the round trip
is the push cycle after the submit answered).

    python -m bench.stack_latency_bench [--quick]
    python -m bench stack_latency
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from devtools.client import AiaClient
from devtools.latency import measure
from devtools.stack_process import running_stack

TASKS = 50
QUICK_TASKS = 10


def main(*, quick: bool = False) -> None:
    n = QUICK_TASKS if quick else TASKS
    with (
        tempfile.TemporaryDirectory(prefix="aia-bench-stack-") as tmp,
        running_stack(Path(tmp)) as stack,
    ):
        client = AiaClient(stack.base_url, stack.api_key)
        measure(client, 3)  # untimed: the first requests pay each function's lazy imports
        result = measure(client, n)
    submit, done = result["submit"], result["submit_to_succeeded"]
    print(f"sequential echo x{n} through the gateway (ms)")
    print(f"{'':<22} {'p50':>7} {'p95':>7} {'max':>7}")
    for label, row in (("submit (202)", submit), ("submit -> succeeded", done)):
        print(f"{label:<22} {row['p50_ms']:7.1f} {row['p95_ms']:7.1f} {row['max_ms']:7.1f}")
    ratio = done["p50_ms"] / submit["p50_ms"] if submit["p50_ms"] else float("inf")
    print(f"p50 submit->succeeded / p50 submit: {ratio:.1f}")
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.stack_latency_bench")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TASKS} tasks, not {TASKS}")
    main(quick=parser.parse_args().quick)
