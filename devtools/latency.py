"""Measure submit latency and submit-to-succeeded latency of `echo` on a local stack.

    python -m devtools.latency              # against the running `make dev` (.aia/dev.env)
    python -m devtools.latency --start      # starts its own stack on a free port

Sequential on purpose: it reports what one client sees, not throughput.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from devtools.client import AiaClient
from devtools.stack import REPO_ROOT


def percentile(samples: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[round(q * 100) - 1]


def measure(client: AiaClient, n: int = 50, *, poll_s: float = 0.005) -> dict[str, Any]:
    """Submit `n` echo tasks one after another; time the 202 and the `succeeded` view."""
    submit_ms: list[float] = []
    done_ms: list[float] = []
    for i in range(n):
        started = time.perf_counter()
        resp = client.submit({"type": "echo", "payload": {"i": i}})
        accepted = time.perf_counter()
        if resp.status_code != 202:
            raise RuntimeError(f"submit answered {resp.status_code}: {resp.text[:300]}")
        view = client.wait_for(resp.json()["task_id"], ("succeeded", "failed"), interval_s=poll_s)
        finished = time.perf_counter()
        if view["status"] != "succeeded":
            raise RuntimeError(f"echo task failed: {view}")
        submit_ms.append((accepted - started) * 1000)
        done_ms.append((finished - started) * 1000)

    def summary(samples: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(percentile(samples, 0.50), 1),
            "p95_ms": round(percentile(samples, 0.95), 1),
            "max_ms": round(max(samples), 1),
        }

    return {"n": n, "submit": summary(submit_ms), "submit_to_succeeded": summary(done_ms)}


def _dev_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"] and len(words) == 2 and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.latency", description=__doc__)
    parser.add_argument("-n", type=int, default=50, help="tasks to submit (default 50)")
    parser.add_argument("--start", action="store_true", help="start a private stack")
    parser.add_argument("--dev-env", type=Path, default=REPO_ROOT / ".aia" / "dev.env")
    args = parser.parse_args(argv)
    if args.start:
        from devtools.stack_process import running_stack

        with (
            tempfile.TemporaryDirectory(prefix="aia-latency-") as tmp,
            running_stack(Path(tmp)) as stack,
        ):
            result = measure(AiaClient(stack.base_url, stack.api_key), args.n)
    else:
        env = _dev_env(args.dev_env)
        result = measure(AiaClient(env["AIA_BASE_URL"], env["AIA_API_KEY"]), args.n)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
