"""Cost per million tasks at list prices, from operations counted in a benchmark run.

The prices cannot be looked up from here: they are the ones docs/deploy.md
("Cost per million tasks") states — tier-1 region, Firestore multi-region,
before free tiers. Function sizes are those of terraform/modules/task_service.
Pure arithmetic: the unit tests check it on fixed counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# --- prices (docs/deploy.md, "Cost per million tasks") -------------------------
FIRESTORE_READ_USD = 0.06 / 100_000
FIRESTORE_WRITE_USD = 0.18 / 100_000
FIRESTORE_DELETE_USD = 0.02 / 100_000
PUBSUB_USD_PER_TIB = 40.0
FUNCTION_REQUEST_USD = 0.40 / 1_000_000
VCPU_SECOND_USD = 0.000024
GIB_SECOND_USD = 0.0000025
LOGGING_USD_PER_GIB = 0.50
TRACE_SPAN_USD = 0.20 / 1_000_000
# Request-based billing rounds each request's instance time up to this (docs/deploy.md).
BILLING_QUANTUM_S = 0.1
# Pub/Sub bills each publish and each delivery as at least this many bytes.
PUBSUB_MIN_BYTES = 1000
TIB = 1024**4
GIB = 1024**3


@dataclass(frozen=True)
class FunctionSize:
    """vCPU, memory and request concurrency of one function (terraform task_service)."""

    vcpu: float
    gib: float
    concurrency: int = 1


# The floor's functions are sized as the AIA functions they stand in for.
SUBMIT_SIZE = FunctionSize(vcpu=1.0, gib=0.5, concurrency=8)  # submit_task: "1", "512Mi", 8
WORKER_SIZE = FunctionSize(vcpu=1.0, gib=1.0, concurrency=4)  # process_task: "1", "1Gi", 4


@dataclass(frozen=True)
class Invocations:
    """One function's requests during the counted run: wall seconds of each, its size, CPU."""

    name: str
    seconds: Sequence[float]
    size: FunctionSize
    cpu_s: float = 0.0  # CPU the function's processes used over those requests


def instance_seconds(inv: Invocations) -> float:
    """Instance time billed for `inv`'s requests.

    One request at a time: each request's wall time rounded up to the quantum.
    With `concurrency` requests sharing an instance under sustained load, the
    instance is billed once for the requests it overlaps: their wall time over
    the concurrency, but never less than the CPU they needed on its vCPUs.
    """
    if inv.size.concurrency <= 1:
        return sum(billed_seconds(s) for s in inv.seconds)
    shared = sum(inv.seconds) / inv.size.concurrency
    return max(shared, inv.cpu_s / inv.size.vcpu)


@dataclass(frozen=True)
class Counted:
    """What one system did for `tasks` tasks (sums over the run, not per task)."""

    tasks: int
    reads: int
    writes: int
    ttl_deletes: int  # documents created with a TTL field: each is deleted once, later
    publish_billed_bytes: int  # with the per-message minimum
    deliveries: int  # push deliveries (each billed like its message)
    delivery_billed_bytes: int
    invocations: Sequence[Invocations]
    log_bytes: int
    spans: int = 0  # spans exported (Cloud Trace bills each one ingested)


def billed_seconds(seconds: float, quantum: float = BILLING_QUANTUM_S) -> float:
    """Instance time one request is billed for: its wall time rounded up to the quantum."""
    # The epsilon keeps 0.3 (a float a hair above 0.3/0.1 = 3) from billing as 0.4.
    return max(1, math.ceil(seconds / quantum - 1e-9)) * quantum


@dataclass(frozen=True)
class Line:
    item: str
    quantity_per_task: float
    unit: str
    usd_per_million: float


def lines(c: Counted) -> list[Line]:
    """Each cost line per million tasks, with the per-task quantity it comes from."""
    per = 1.0 / c.tasks
    million = 1_000_000
    requests = sum(len(inv.seconds) for inv in c.invocations)
    vcpu_s = sum(instance_seconds(inv) * inv.size.vcpu for inv in c.invocations)
    gib_s = sum(instance_seconds(inv) * inv.size.gib for inv in c.invocations)
    pubsub_bytes = c.publish_billed_bytes + c.delivery_billed_bytes
    return [
        Line(
            "Firestore reads", c.reads * per, "reads", c.reads * per * FIRESTORE_READ_USD * million
        ),
        Line(
            "Firestore writes",
            c.writes * per,
            "writes",
            c.writes * per * FIRESTORE_WRITE_USD * million,
        ),
        Line(
            "Firestore TTL deletes",
            c.ttl_deletes * per,
            "deletes",
            c.ttl_deletes * per * FIRESTORE_DELETE_USD * million,
        ),
        Line(
            "Pub/Sub publish + delivery",
            pubsub_bytes * per,
            "billed bytes",
            pubsub_bytes * per / TIB * PUBSUB_USD_PER_TIB * million,
        ),
        Line(
            "function requests",
            requests * per,
            "requests",
            requests * per * FUNCTION_REQUEST_USD * million,
        ),
        Line("function CPU", vcpu_s * per, "vCPU-s", vcpu_s * per * VCPU_SECOND_USD * million),
        Line("function memory", gib_s * per, "GiB-s", gib_s * per * GIB_SECOND_USD * million),
        Line(
            "Cloud Logging",
            c.log_bytes * per,
            "log bytes",
            c.log_bytes * per / GIB * LOGGING_USD_PER_GIB * million,
        ),
        Line("Cloud Trace spans", c.spans * per, "spans", c.spans * per * TRACE_SPAN_USD * million),
    ]


def total(c: Counted) -> float:
    return sum(line.usd_per_million for line in lines(c))


ASSUMPTIONS: tuple[tuple[str, str], ...] = (
    ("Firestore read", "$0.06 / 100,000 (docs/deploy.md; multi-region, before free tier)"),
    ("Firestore write", "$0.18 / 100,000 (docs/deploy.md)"),
    ("Firestore delete", "$0.02 / 100,000 (docs/deploy.md; one TTL delete per task document)"),
    ("Pub/Sub throughput", "$40 / TiB, each publish and delivery ≥ 1,000 bytes (docs/deploy.md)"),
    ("function request", "$0.40 / million (docs/deploy.md)"),
    ("function CPU", "$0.000024 / vCPU-s (docs/deploy.md)"),
    ("function memory", "$0.0000025 / GiB-s (docs/deploy.md)"),
    ("Cloud Logging", "$0.50 / GiB of log bytes written locally (docs/deploy.md)"),
    (
        "Cloud Trace",
        "$0.20 / million spans, as exported locally at the deployed sample ratio (docs/deploy.md)",
    ),
    (
        "instance time",
        "sustained load at each function's concurrency: wall time / concurrency, at least its CPU",
    ),
    (
        "sizes",
        "submit 1 vCPU / 512 MiB / 8 at once, worker 1 vCPU / 1 GiB / 4 (terraform task_service)",
    ),
    ("not counted", "status reads, redispatch sweeps, /metrics scrapes, storage, idle instances"),
)
