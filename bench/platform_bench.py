"""AIA against the bare platform floor, on the same fresh emulators, in one table.

The issue: "within 1.3x of the bare platform floor, at most 3 Firestore commits
per task". The floor (`bench/floor/`) is the least a task backend can do here:
an HTTP function doing one Firestore create and one Pub/Sub publish (one
message per batch, waiting for the future), and a push-triggered CloudEvent
function that reads and updates the document, served by functions-framework
with a push subscription made like AIA's.

    python -m bench.platform_bench [--quick] [--json PATH]    (or: make bench)

1. The local stack starts (`devtools.stack_process.start_stack`: fresh
   emulators, every function, the gateway); the floor is served beside it on
   the same emulators, directly and behind its own `devtools.gateway`.
2. Latency and throughput, floor and AIA interleaved, each repeated and
   reported as the median of the repeats: sequential submits, a 16-thread
   burst (and its throughput until every task succeeded), sequential submit →
   succeeded as a client polling its status sees it, and tasks behind a backlog.
3. Counting: both systems served again (as the stack serves them) behind
   `bench.rpc_counter`, a sequential run of echo tasks; Firestore commits,
   reads and writes, publishes, invocations, CPU and wall time per task; then
   a short burst shows how many push deliveries the emulator sends at once.
4. Cold starts (`bench.cold_start_bench`) on the same emulators.
5. Cost per million tasks from the counts (`bench.cost`).

Prints one table, the targets with ✓/✗, the cost assumptions, and writes JSON
(default build/bench/platform.json). The machine is shared: figures are
ratios within this run, and the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from bench import cold_start_bench, cost, harness, stats
from bench.floor import COLLECTION as FLOOR_COLLECTION
from bench.rpc_counter import FIRESTORE, PUBLISHER, SUBSCRIBER, HttpCounter, RpcCounter, Tally
from devtools.emulators import Service
from devtools.pubsub_setup import setup_pubsub
from devtools.stack import KEYRING_FILE, REPO_ROOT
from devtools.stack_process import RunningStack, start_stack
from shared.queries import TASKS as AIA_COLLECTION
from shared.security.keyring import FERNET, HYBRID

DEFAULT_JSON = REPO_ROOT / "build" / "bench" / "platform.json"
WORK_DIR = REPO_ROOT / "build" / "bench" / "work"
# The stack's emulator processes, by the names `devtools.stack` gives them.
EMULATORS = ("firestore-emulator", "pubsub-emulator")
COUNT_PROJECT = "aia-bench-count"
COUNT_TENANT = "bench"
FLOOR_TOPIC = "floor-tasks"
POLL_S = 0.01  # how often a waiting client asks for its task's status
SUBMIT_BLOCK = 20  # sequential submits per turn of a route
E2E_BLOCK = 10  # submit → succeeded waits per turn
PEAK_BURST = 60  # tasks of the burst that shows how many deliveries are pushed at once
THREADS = 16
SCHEMES = (HYBRID, FERNET)  # --keyring-scheme
# Limits from the issue.
RATIO_LIMIT = 1.3
THROUGHPUT_FLOOR = 0.8
MAX_COMMITS = 3
MAX_READS = 3


@dataclass(frozen=True)
class Sizes:
    rounds: int
    sequential: int
    burst: int
    e2e: int
    backlog: int
    counted: int
    cold_runs: int
    profiles: int

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        if quick:
            return cls(
                rounds=2,
                sequential=40,
                burst=60,
                e2e=10,
                backlog=50,
                counted=20,
                cold_runs=2,
                profiles=1,
            )
        # Five rounds: on 2 shared cores one round's backlog or burst figure moved by
        # up to 3x between rounds of one run (floor backlog p50 435, 932, 1,264 ms).
        return cls(
            rounds=5,
            sequential=200,
            burst=300,
            e2e=40,
            backlog=200,
            counted=100,
            cold_runs=5,
            profiles=3,
        )


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


# --- talking to either system -----------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One way to reach one system: where it takes submits and answers status reads."""

    system: str  # "floor" or "aia"
    via: str  # "direct" or "gateway"
    submit_base: str
    status_base: str
    api_key: str | None = None

    @property
    def label(self) -> str:
        return f"{self.system} {self.via}"


class Client:
    """One connection-keeping client (a thread's own), for either system: both speak the same."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.session = requests.Session()
        self.headers = {"Authorization": f"Bearer {route.api_key}"} if route.api_key else {}

    def submit(self, i: int) -> str:
        resp = self.session.post(
            f"{self.route.submit_base}/tasks",
            json={"type": "echo", "payload": {"i": i}},
            headers=self.headers,
            timeout=60,
        )
        if resp.status_code != 202:
            raise RuntimeError(f"{self.route.label} submit: {resp.status_code} {resp.text[:300]}")
        task_id: str = resp.json()["task_id"]
        return task_id

    def status(self, task_id: str) -> str:
        resp = self.session.get(
            f"{self.route.status_base}/tasks/{task_id}", headers=self.headers, timeout=60
        )
        if resp.status_code != 200:
            raise RuntimeError(f"{self.route.label} status: {resp.status_code} {resp.text[:300]}")
        status: str = resp.json()["status"]
        return status

    def wait_succeeded(self, task_id: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (status := self.status(task_id)) != "succeeded":
            if status == "failed":
                raise RuntimeError(f"{self.route.label}: task {task_id} failed")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.route.label}: task {task_id} still {status}")
            time.sleep(POLL_S)

    def close(self) -> None:
        self.session.close()


class Completion:
    """Finished tasks, read straight from the emulator by the benchmark (not by the system).

    It reads only the tasks it waits for, and only their status. A count query
    over the whole collection costs the emulator ~40 ms of CPU per 2,400
    documents: polled every 0.1 s, the observer took most of a core from the
    systems it measured, the more so the larger the collection grew.
    """

    def __init__(self, db: Any, collection: str) -> None:
        self._db = db
        self._tasks = db.collection(collection)

    def wait_for(self, ids: Iterable[str], timeout_s: float = 300.0) -> None:
        """Until every task of `ids` succeeded; checked every 0.1 s (figures use timestamps)."""
        pending = set(ids)
        deadline = time.monotonic() + timeout_s
        while pending:
            refs = [self._tasks.document(task_id) for task_id in pending]
            for snap in self._db.get_all(refs, field_paths=["status"]):
                status = snap.get("status") if snap.exists else None
                if status == "succeeded":
                    pending.discard(snap.id)
                elif status == "failed":
                    raise RuntimeError(f"task {snap.id} failed in {self._tasks.id}")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} tasks not succeeded in {self._tasks.id}")
            time.sleep(0.1)

    def finished_at(self, ids: list[str]) -> dict[str, float]:
        """Epoch seconds each task was finished, as its worker stamped it."""
        refs = [self._tasks.document(task_id) for task_id in ids]
        found: dict[str, float] = {}
        for snap in self._db.get_all(refs):
            value = snap.get("finished_at")
            found[snap.id] = value.timestamp() if isinstance(value, datetime) else float(value)
        return found


# --- the measurements ---------------------------------------------------------------


def sequential_submits(client: Client, n: int) -> tuple[list[float], list[str]]:
    """Each submit's milliseconds, and the ids of the tasks submitted."""
    samples, ids = [], []
    for i in range(n):
        started = time.perf_counter()
        ids.append(client.submit(i))
        samples.append((time.perf_counter() - started) * 1000)
    return samples, ids


@dataclass
class Burst:
    submit_ms: list[float]
    submitted_at: dict[str, float]  # task id -> epoch seconds its submit started
    started_at: float


def burst(route: Route, n: int, threads: int = THREADS) -> Burst:
    local = threading.local()
    clients: list[Client] = []
    lock = threading.Lock()

    def one(i: int) -> tuple[str, float, float]:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = Client(route)
            with lock:
                clients.append(client)
        wall = time.time()
        started = time.perf_counter()
        task_id = client.submit(i)
        return task_id, wall, (time.perf_counter() - started) * 1000

    started_at = time.time()
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            done = list(pool.map(one, range(n)))
    finally:
        for client in clients:
            client.close()
    return Burst([ms for _, _, ms in done], {tid: wall for tid, wall, _ in done}, started_at)


def sequential_e2e(client: Client, n: int) -> list[float]:
    """Submit, then poll the status every POLL_S until succeeded: what one client waits."""
    samples = []
    for i in range(n):
        started = time.perf_counter()
        client.wait_succeeded(client.submit(i))
        samples.append((time.perf_counter() - started) * 1000)
    return samples


@dataclass
class Backlog:
    probe_ms: float  # the task submitted right behind the backlog, as its client waited
    all_ms: list[float]  # every task of the backlog, submit → its worker's finish stamp


def behind_backlog(route: Route, n: int, completion: Completion) -> Backlog:
    queued = burst(route, n)
    client = Client(route)
    try:
        wall = time.time()
        started = time.perf_counter()
        probe = client.submit(n)
        client.wait_succeeded(probe, timeout_s=300)
        probe_ms = (time.perf_counter() - started) * 1000
    finally:
        client.close()
    submitted = {**queued.submitted_at, probe: wall}
    completion.wait_for(submitted)
    finished = completion.finished_at(list(submitted))
    return Backlog(probe_ms, [(finished[t] - submitted[t]) * 1000 for t in submitted])


@dataclass
class RouteFigures:
    """Every repeat of every measurement on one route."""

    sequential: list[stats.Spread] = field(default_factory=list)
    burst: list[stats.Spread] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)
    e2e: list[stats.Spread] = field(default_factory=list)
    backlog: list[stats.Spread] = field(default_factory=list)
    backlog_probe: list[float] = field(default_factory=list)
    # Per burst: CPU ms per task of each process group the burst kept busy.
    burst_cpu_ms: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def spreads(runs: list[stats.Spread]) -> dict[str, Any]:
            if not runs:
                return {}
            m = stats.median_spread(runs)
            return {"p50_ms": m.p50, "p99_ms": m.p99, "runs": [r.__dict__ for r in runs]}

        return {
            "submit_sequential": spreads(self.sequential),
            "submit_burst": spreads(self.burst),
            "burst_throughput_per_s": {
                "median": stats.median(self.throughput) if self.throughput else None,
                "runs": self.throughput,
            },
            "submit_to_succeeded": spreads(self.e2e),
            "backlog": spreads(self.backlog),
            "backlog_probe_ms": self.backlog_probe,
            "burst_cpu_ms_per_task": self.burst_cpu_ms,
        }

    def burst_cpu(self, name: str | None = None) -> float:
        """Median over the bursts of one group's CPU ms per task (None: of all groups)."""
        if not self.burst_cpu_ms:
            return 0.0
        if name is None:
            return stats.median([sum(run.values()) for run in self.burst_cpu_ms])
        return stats.median([run.get(name, 0.0) for run in self.burst_cpu_ms])


def measure_latency(
    routes: list[Route],
    completions: dict[str, Completion],
    sizes: Sizes,
    cpu_groups: Mapping[str, Callable[[], Mapping[str, int]]] | None = None,
) -> dict[str, RouteFigures]:
    """`cpu_groups`: per system, its process groups by role (looked up at each burst)."""
    figures = {route.label: RouteFigures() for route in routes}

    # Warm both systems (lazy clients, connections, the emulators' JIT) before anything
    # counts, with a full-size burst: with a small one, each system's first measured
    # round ran slowest, by up to 2x, and a median of three carried it.
    progress("warming up")
    for route in routes:
        client = Client(route)
        _, ids = sequential_submits(client, 20)
        ids += list(burst(route, sizes.burst).submitted_at)
        sequential_e2e(client, 3)
        client.close()
        completions[route.system].wait_for(ids)

    for round_no in range(sizes.rounds):
        # Alternate who goes first, so neither always follows the other's leftovers.
        order = routes if round_no % 2 == 0 else list(reversed(routes))
        progress(f"round {round_no + 1}/{sizes.rounds}: sequential submits")
        # In blocks, routes taking turns: the machine's load drifts within a round too.
        clients = {route.label: Client(route) for route in order}
        taken: dict[str, list[float]] = {route.label: [] for route in order}
        for block in _blocks(sizes.sequential, SUBMIT_BLOCK):
            for route in order:
                samples, ids = sequential_submits(clients[route.label], block)
                taken[route.label] += samples
                completions[route.system].wait_for(ids)  # not run in the next one's turn
        for route in order:
            figures[route.label].sequential.append(stats.Spread.of(taken[route.label]))
        progress(f"round {round_no + 1}/{sizes.rounds}: {THREADS}-thread bursts")
        for route in order:
            completion = completions[route.system]
            groups = dict(cpu_groups[route.system]()) if cpu_groups else {}
            cpu_before = {name: harness.group_cpu_s(pgid) for name, pgid in groups.items()}
            b = burst(route, sizes.burst)
            completion.wait_for(b.submitted_at)
            last = max(completion.finished_at(list(b.submitted_at)).values())
            figures[route.label].burst_cpu_ms.append(
                {
                    name: (harness.group_cpu_s(pgid) - cpu_before[name]) / sizes.burst * 1000
                    for name, pgid in groups.items()
                }
            )
            figures[route.label].burst.append(stats.Spread.of(b.submit_ms))
            figures[route.label].throughput.append(sizes.burst / (last - b.started_at))
        progress(f"round {round_no + 1}/{sizes.rounds}: submit → succeeded")
        taken = {route.label: [] for route in order}
        for block in _blocks(sizes.e2e, E2E_BLOCK):
            for route in order:
                taken[route.label] += sequential_e2e(clients[route.label], block)
        for route in order:
            figures[route.label].e2e.append(stats.Spread.of(taken[route.label]))
            clients[route.label].close()
        progress(f"round {round_no + 1}/{sizes.rounds}: behind a backlog of {sizes.backlog}")
        for route in order:
            if route.via != "direct":
                continue  # the queue is the worker's: the gateway changes nothing there
            backlog = behind_backlog(route, sizes.backlog, completions[route.system])
            figures[route.label].backlog.append(stats.Spread.of(backlog.all_ms))
            figures[route.label].backlog_probe.append(backlog.probe_ms)
    return figures


# --- counting ---------------------------------------------------------------------


@dataclass
class CountedRun:
    system: str
    tasks: int
    rpc: Tally
    http: dict[str, Any]  # function -> RequestTally
    cpu_s: dict[str, float]
    log_bytes: dict[str, int]
    spans: int = 0  # exported by its functions during the run
    push_peak: int = 0  # most push deliveries in flight at once during a burst after the count

    def per_task(self, value: float) -> float:
        return value / self.tasks

    def costed(self) -> cost.Counted:
        submit, worker = self.http["submit"], self.http["worker"]
        message_bytes = self.rpc.billed_publish_bytes / max(self.rpc.published, 1)
        return cost.Counted(
            tasks=self.tasks,
            reads=self.rpc.reads(),
            writes=self.rpc.writes,
            # AIA's task documents carry a TTL field; the floor's never expire.
            ttl_deletes=self.rpc.creates if self.system == "aia" else 0,
            publish_billed_bytes=self.rpc.billed_publish_bytes,
            deliveries=worker.count,
            delivery_billed_bytes=round(worker.count * max(message_bytes, cost.PUBSUB_MIN_BYTES)),
            invocations=[
                cost.Invocations(
                    "submit", submit.seconds, cost.SUBMIT_SIZE, self.cpu_s.get("submit", 0.0)
                ),
                cost.Invocations(
                    "worker", worker.seconds, cost.WORKER_SIZE, self.cpu_s.get("worker", 0.0)
                ),
            ],
            log_bytes=sum(self.log_bytes.values()),
            spans=self.spans,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "rpc": self.rpc.to_json(),
            "http": {name: tally.to_json() for name, tally in self.http.items()},
            "cpu_s": self.cpu_s,
            "log_bytes": self.log_bytes,
            "spans": self.spans,
            "push_deliveries_in_flight_max": self.push_peak,
            "per_task": {
                "commits": self.per_task(self.rpc.commits()),
                "reads": self.per_task(self.rpc.reads()),
                "writes": self.per_task(self.rpc.writes),
                "published": self.per_task(self.rpc.published),
                "spans": self.per_task(self.spans),
                "invocations": self.per_task(sum(t.count for t in self.http.values())),
                "cpu_ms": {k: self.per_task(v) * 1000 for k, v in self.cpu_s.items()},
                "wall_ms": {k: self.per_task(sum(t.seconds)) * 1000 for k, t in self.http.items()},
            },
        }


def counted_run(
    *,
    system: str,
    n: int,
    submit_url: str,
    api_key: str | None,
    completion: Completion,
    counter: RpcCounter,
    http_counters: dict[str, HttpCounter],
    services: dict[str, Service],
    emulators: Mapping[str, int],
) -> CountedRun:
    """A steady sequential run: each task is submitted when the last one's delivery was answered.

    The wait is on the worker's HTTP counter, not on the emulator: polling a
    task's status would charge the observer's reads to the emulators' CPU.
    """
    route = Route(system, "counted", submit_url, submit_url, api_key)
    client = Client(route)
    worker = http_counters["worker"]

    # The first task builds each function's clients: not part of any task's cost.
    completion.wait_for([client.submit(-1)], timeout_s=60)
    time.sleep(0.5)
    spans_before = harness.settled_span_lines(harness.TRACE_DIR)  # the first task's are out
    rpc_before = counter.snapshot()
    http_before = {name: hc.snapshot() for name, hc in http_counters.items()}
    groups = {name: svc.pgid for name, svc in services.items()} | dict(emulators)
    cpu_before = {name: harness.group_cpu_s(pgid) for name, pgid in groups.items()}
    logs_before = {name: harness.log_bytes(svc) for name, svc in services.items()}
    ids = []
    try:
        for i in range(n):
            answered = worker.answered_ok()
            ids.append(client.submit(i))
            # An echo task is one delivery; a retried one would show in the statuses.
            worker.wait_answered_ok(answered + 1, timeout_s=60)
    finally:
        client.close()
    time.sleep(1.0)  # acknowledgements and last log lines
    counted = CountedRun(
        system=system,
        tasks=n,
        rpc=counter.snapshot().minus(rpc_before),
        http={name: hc.snapshot().minus(http_before[name]) for name, hc in http_counters.items()},
        cpu_s={name: harness.group_cpu_s(pgid) - cpu_before[name] for name, pgid in groups.items()},
        log_bytes={
            name: harness.log_bytes(svc) - logs_before[name] for name, svc in services.items()
        },
    )
    completion.wait_for(ids, timeout_s=60)  # every counted task succeeded
    counted.spans = harness.settled_span_lines(harness.TRACE_DIR) - spans_before
    # After the counts: how many deliveries the emulator pushes at once. With few in
    # flight, a burst's throughput is that number over the worker's time per delivery.
    worker = http_counters["worker"]
    worker.take_peak()
    completion.wait_for(burst(route, PEAK_BURST).submitted_at)
    counted.push_peak = worker.take_peak()
    return counted


def measure_counts(
    firestore: str,
    pubsub: str,
    n: int,
    work: Path,
    emulators: Mapping[str, int],
    *,
    keyring_scheme: str = HYBRID,
) -> dict[str, CountedRun]:
    """Both systems behind the RPC counter, on their own project of the same emulators.

    `emulators` (name -> process group) are charged their CPU during each run: on
    this machine they do the work production's Firestore and Pub/Sub would.
    """
    counter = RpcCounter({FIRESTORE: firestore, PUBLISHER: pubsub, SUBSCRIBER: pubsub}).start()
    keyring = harness.write_keyring(work / "count-keyring.json", keyring_scheme)
    api_key = harness.create_api_key(COUNT_PROJECT, firestore, COUNT_TENANT)
    aia_env = harness.function_env(
        harness.aia_settings(
            project=COUNT_PROJECT,
            firestore=counter.address,
            pubsub=counter.address,
            keyring=keyring,
        )
    )
    floor_env = harness.function_env(
        harness.floor_settings(
            project=COUNT_PROJECT,
            firestore=counter.address,
            pubsub=counter.address,
            topic=FLOOR_TOPIC,
        )
    )
    functions = {
        "aia submit": (harness.AIA["submit_task"], aia_env),
        "aia worker": (harness.AIA["process_task"], aia_env),
        "floor submit": (harness.FLOOR_SUBMIT, floor_env),
        "floor worker": (harness.FLOOR_WORKER, floor_env),
    }
    db = harness.firestore_client(COUNT_PROJECT, firestore)
    http_counters: dict[str, HttpCounter] = {}
    try:
        with harness.serving(functions, work / "count-logs") as services:
            for name, svc in services.items():
                http_counters[name] = HttpCounter(svc.url.removeprefix("http://")).start()
            setup_pubsub(
                COUNT_PROJECT,
                http_counters["aia worker"].url,
                emulator_host=pubsub,
                max_backoff_s=harness.RETRY_MAX_BACKOFF_S,
            )
            setup_floor_pubsub(COUNT_PROJECT, http_counters["floor worker"].url, pubsub)
            runs: dict[str, CountedRun] = {}
            for system, collection, key in (
                ("floor", FLOOR_COLLECTION, None),
                ("aia", AIA_COLLECTION, api_key),
            ):
                progress(f"counting: {n} sequential {system} tasks behind the RPC counter")
                names = [f"{system} submit", f"{system} worker"]
                runs[system] = counted_run(
                    system=system,
                    n=n,
                    submit_url=http_counters[names[0]].url,
                    api_key=key,
                    completion=Completion(db, collection),
                    counter=counter,
                    http_counters={
                        role: http_counters[f"{system} {role}"] for role in ("submit", "worker")
                    },
                    services={role: services[f"{system} {role}"] for role in ("submit", "worker")},
                    emulators=emulators,
                )
            return runs
    finally:
        for hc in http_counters.values():
            hc.stop()
        db.close()
        counter.stop()


# --- serving the floor beside the stack ---------------------------------------------


def setup_floor_pubsub(project: str, worker_url: str, emulator_host: str) -> None:
    """The floor's topic and push subscription, made exactly as AIA's (other names)."""
    setup_pubsub(
        project,
        worker_url,
        emulator_host=emulator_host,
        tasks_topic=FLOOR_TOPIC,
        dead_letter_topic=f"{FLOOR_TOPIC}-dead-letter",
        worker_subscription=f"{FLOOR_TOPIC}-worker",
        backstop_subscription=f"{FLOOR_TOPIC}-backstop-worker",
        dead_letter_subscription=f"{FLOOR_TOPIC}-dead-letter-sub",
        max_backoff_s=harness.RETRY_MAX_BACKOFF_S,
    )


@contextlib.contextmanager
def floor_gateway(upstream: str, log_dir: Path) -> Iterator[str]:
    """`bench.floor.gateway` in its own process group; yields its base URL."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = harness.function_env({})
    with (log_dir / "floor-gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.floor.gateway",
                f"submit_task={upstream}",
                f"task_status={upstream}",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
    svc = Service("floor-gateway", proc, url="")  # type: ignore[arg-type]
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"the floor gateway did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        svc.stop()


@contextlib.contextmanager
def floor_beside(stack: RunningStack, work: Path) -> Iterator[tuple[str, str, dict[str, int]]]:
    """The floor on the stack's emulators and project: its direct URL, gateway URL, pgids."""
    env = stack.env
    project = env["GOOGLE_CLOUD_PROJECT"]
    floor_env = harness.function_env(
        harness.floor_settings(
            project=project,
            firestore=env["FIRESTORE_EMULATOR_HOST"],
            pubsub=env["PUBSUB_EMULATOR_HOST"],
            topic=FLOOR_TOPIC,
        )
    )
    functions = {
        "floor_submit": (harness.FLOOR_SUBMIT, floor_env),
        "floor_worker": (harness.FLOOR_WORKER, floor_env),
    }
    with harness.serving(functions, work / "floor-logs") as services:
        setup_floor_pubsub(project, services["floor_worker"].url, env["PUBSUB_EMULATOR_HOST"])
        direct = services["floor_submit"].url
        with floor_gateway(direct.removeprefix("http://"), work / "floor-logs") as gateway:
            pgids = {
                "submit": services["floor_submit"].pgid,
                "worker": services["floor_worker"].pgid,
            }
            yield direct, gateway, pgids


# --- the report ---------------------------------------------------------------------


@dataclass
class Report:
    sizes: Sizes
    figures: dict[str, RouteFigures]
    counts: dict[str, CountedRun]
    cold: cold_start_bench.ColdResult
    load: dict[str, tuple[float, float, float]]
    elapsed_s: float
    commit: str
    keyring_scheme: str = HYBRID

    def spread(self, label: str, what: str) -> stats.Spread:
        return stats.median_spread(getattr(self.figures[label], what))

    def throughput(self, label: str) -> float:
        return stats.median(self.figures[label].throughput)

    def targets(self) -> list[stats.Target]:
        out: list[stats.Target] = []
        for via in ("direct", "gateway"):
            f, a = f"floor {via}", f"aia {via}"
            for what, name in (("sequential", "sequential"), ("burst", f"{THREADS}-thread burst")):
                out.append(
                    stats.Target(
                        f"submit p50, {name}, {via}",
                        self.spread(a, what).p50,
                        self.spread(f, what).p50,
                        "max-ratio",
                        RATIO_LIMIT,
                    )
                )
            out.append(
                stats.Target(
                    f"burst throughput, {via}",
                    self.throughput(a),
                    self.throughput(f),
                    "min-ratio",
                    THROUGHPUT_FLOOR,
                )
            )
            for q in ("p50", "p99"):
                out.append(
                    stats.Target(
                        f"submit → succeeded {q}, {via}",
                        getattr(self.spread(a, "e2e"), q),
                        getattr(self.spread(f, "e2e"), q),
                        "max-ratio",
                        RATIO_LIMIT,
                    )
                )
        for q in ("p50", "p99"):
            out.append(
                stats.Target(
                    f"submit → succeeded {q}, behind {self.sizes.backlog} queued",
                    getattr(self.spread("aia direct", "backlog"), q),
                    getattr(self.spread("floor direct", "backlog"), q),
                    "max-ratio",
                    RATIO_LIMIT,
                )
            )
        aia = self.counts["aia"]
        out.append(
            stats.Target(
                "Firestore commits per task",
                aia.per_task(aia.rpc.commits()),
                None,
                "max",
                MAX_COMMITS,
            )
        )
        out.append(
            stats.Target(
                "Firestore reads per task", aia.per_task(aia.rpc.reads()), None, "max", MAX_READS
            )
        )
        out.extend(self.cold.targets())
        return out

    def main_rows(self) -> list[list[str]]:
        rows: list[list[str]] = []

        def row(name: str, floor: float, aia: float, fmt: str = "{:.1f}", target: str = "") -> None:
            rows.append(
                [
                    name,
                    fmt.format(floor),
                    fmt.format(aia),
                    f"{stats.ratio(aia, floor):.2f}x",
                    target,
                ]
            )

        limit = f"≤ {RATIO_LIMIT}x"
        for via in ("direct", "gateway"):
            f, a = f"floor {via}", f"aia {via}"
            for what, name in (("sequential", "sequential"), ("burst", f"{THREADS}-thread burst")):
                fs, as_ = self.spread(f, what), self.spread(a, what)
                row(f"submit p50 ms, {name}, {via}", fs.p50, as_.p50, target=limit)
                row(f"submit p99 ms, {name}, {via}", fs.p99, as_.p99)
            row(
                f"burst throughput tasks/s, {via}",
                self.throughput(f),
                self.throughput(a),
                target=f"≥ {THROUGHPUT_FLOOR}x",
            )
            fs, as_ = self.spread(f, "e2e"), self.spread(a, "e2e")
            row(f"submit → succeeded p50 ms, {via}", fs.p50, as_.p50, target=limit)
            row(f"submit → succeeded p99 ms, {via}", fs.p99, as_.p99, target=limit)
        # What bounds a burst on a small machine: the CPU every task costs, summed.
        ff, af = self.figures["floor direct"], self.figures["aia direct"]
        for name in ("submit", "worker", *EMULATORS):
            row(f"burst, direct: {name} CPU ms / task", ff.burst_cpu(name), af.burst_cpu(name))
        row("burst, direct: CPU ms / task, all of them", ff.burst_cpu(), af.burst_cpu())
        for what in ("sequential", "burst"):
            fg = self.spread("floor gateway", what).p50 - self.spread("floor direct", what).p50
            ag = self.spread("aia gateway", what).p50 - self.spread("aia direct", what).p50
            rows.append(
                [f"gateway's own cost, submit p50 ms, {what}", f"{fg:+.1f}", f"{ag:+.1f}", "", ""]
            )
        fb, ab = self.spread("floor direct", "backlog"), self.spread("aia direct", "backlog")
        row(
            f"behind {self.sizes.backlog} queued: p50 ms (all tasks)",
            fb.p50,
            ab.p50,
            "{:.0f}",
            limit,
        )
        row(
            f"behind {self.sizes.backlog} queued: p99 ms (all tasks)",
            fb.p99,
            ab.p99,
            "{:.0f}",
            limit,
        )
        row(
            f"behind {self.sizes.backlog} queued: the next task, ms",
            stats.median(self.figures["floor direct"].backlog_probe),
            stats.median(self.figures["aia direct"].backlog_probe),
            "{:.0f}",
        )
        fl, ai = self.counts["floor"], self.counts["aia"]
        row(
            "Firestore commits / task",
            fl.per_task(fl.rpc.commits()),
            ai.per_task(ai.rpc.commits()),
            "{:.2f}",
            f"≤ {MAX_COMMITS}",
        )
        row(
            "Firestore document reads / task",
            fl.per_task(fl.rpc.reads()),
            ai.per_task(ai.rpc.reads()),
            "{:.2f}",
            f"≤ {MAX_READS}",
        )
        row(
            "Firestore writes / task",
            fl.per_task(fl.rpc.writes),
            ai.per_task(ai.rpc.writes),
            "{:.2f}",
        )
        row(
            "Pub/Sub publishes / task",
            fl.per_task(fl.rpc.published),
            ai.per_task(ai.rpc.published),
            "{:.2f}",
        )
        for role in ("submit", "worker"):
            row(
                f"{role}: CPU ms / task",
                fl.per_task(fl.cpu_s[role]) * 1000,
                ai.per_task(ai.cpu_s[role]) * 1000,
            )
            row(
                f"{role}: wall ms / invocation",
                _mean(fl.http[role].seconds) * 1000,
                _mean(ai.http[role].seconds) * 1000,
            )
        for name in EMULATORS:
            row(
                f"{name}: CPU ms / task",
                fl.per_task(fl.cpu_s.get(name, 0.0)) * 1000,
                ai.per_task(ai.cpu_s.get(name, 0.0)) * 1000,
            )
        peaks = [str(fl.push_peak), str(ai.push_peak)]
        rows.append(["push deliveries in flight, max in a burst", *peaks, "", ""])
        row(
            "time in Firestore + Pub/Sub calls, ms / task",
            fl.per_task(sum(fl.rpc.seconds.values())) * 1000,
            ai.per_task(sum(ai.rpc.seconds.values())) * 1000,
        )
        row(
            "cost per million echo tasks, USD",
            cost.total(fl.costed()),
            cost.total(ai.costed()),
            "{:.2f}",
        )
        base = self.cold.baseline_ms()
        base_cpu = self.cold.cpu_ms(cold_start_bench.PROBES[0].label)
        for probe in (p for p in cold_start_bench.PROBES if p.budget_ms is not None):
            ms = self.cold.median_ms(probe.label)
            cpu = self.cold.cpu_ms(probe.label) - base_cpu
            rows.append(
                [
                    f"cold start {probe.label}, ms (Δ hello; Δ CPU)",
                    f"{base:.0f}",
                    f"{ms:.0f} ({ms - base:+.0f}; {cpu:+.0f})",
                    f"{stats.ratio(ms, base):.2f}x",
                    f"≤ +{probe.budget_ms:.0f} ms",
                ]
            )
        # The floor pays for the same Google clients: what AIA adds beyond it.
        for floor_fn, aia_fn in (("floor_submit", "submit_task"), ("floor_worker", "process_task")):
            f_ms, a_ms = self.cold.median_ms(floor_fn), self.cold.median_ms(aia_fn)
            cpu = self.cold.cpu_ms(aia_fn) - self.cold.cpu_ms(floor_fn)
            rows.append(
                [
                    f"cold start {aia_fn} vs {floor_fn}, ms (Δ; Δ CPU)",
                    f"{f_ms:.0f}",
                    f"{a_ms:.0f} ({a_ms - f_ms:+.0f}; {cpu:+.0f})",
                    f"{stats.ratio(a_ms, f_ms):.2f}x",
                    "",
                ]
            )
        return rows

    def render(self) -> str:
        cpus = os.cpu_count()
        start, end = self.load["start"], self.load["end"]
        head = (
            f"AIA vs the bare platform floor — same emulators, same machine ({cpus} CPUs, "
            f"load average {start[0]} at start, {end[0]} at end), commit {self.commit}, "
            f"{self.sizes.rounds} interleaved rounds (medians), {self.elapsed_s / 60:.1f} min, "
            f"AIA's key ring {self.keyring_scheme}"
        )
        table = stats.render_table(["figure", "floor", "AIA", "ratio", "target"], self.main_rows())
        notes = (
            "  counts, CPU, wall and call times: a steady sequential run of "
            f"{self.sizes.counted} echo tasks per system behind bench.rpc_counter (an extra hop);\n"
            "  status reads excluded; cold-start rows: the floor column is the hello-world"
        )
        marks = [
            f"  {t.mark()} {t.name}: {t.describe_measure()} (target {t.describe_limit()})"
            for t in self.targets()
        ]
        cost_rows = []
        floor_lines = cost.lines(self.counts["floor"].costed())
        aia_lines = cost.lines(self.counts["aia"].costed())
        for fl, ai in zip(floor_lines, aia_lines, strict=True):
            cost_rows.append(
                [
                    fl.item,
                    _quantity(fl.quantity_per_task),
                    _quantity(ai.quantity_per_task),
                    fl.unit,
                    f"{fl.usd_per_million:.2f}",
                    f"{ai.usd_per_million:.2f}",
                ]
            )
        cost_table = stats.render_table(
            ["cost per million echo tasks", "floor/task", "AIA/task", "unit", "floor $", "AIA $"],
            cost_rows,
        )
        assumptions = "\n".join(f"  {name:<20} {text}" for name, text in cost.ASSUMPTIONS)
        return "\n".join(
            [
                head,
                "",
                table,
                notes,
                "",
                "targets:",
                *marks,
                "",
                cost_table,
                "assumptions:",
                assumptions,
                "",
                self.cold.render(),
            ]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "keyring_scheme": self.keyring_scheme,
            "sizes": self.sizes.__dict__,
            "cpus": os.cpu_count(),
            "load_average": self.load,
            "elapsed_s": self.elapsed_s,
            "routes": {label: f.to_json() for label, f in self.figures.items()},
            "counts": {system: run.to_json() for system, run in self.counts.items()},
            "cost_per_million_usd": {
                system: {
                    "total": cost.total(run.costed()),
                    "lines": [line.__dict__ for line in cost.lines(run.costed())],
                }
                for system, run in self.counts.items()
            },
            "cost_assumptions": dict(cost.ASSUMPTIONS),
            "cold_start": self.cold.to_json(),
            "targets": [t.to_json() for t in self.targets()],
        }


def _blocks(total: int, size: int) -> list[int]:
    """`total` split into turns of at most `size`."""
    return [min(size, total - start) for start in range(0, total, size)]


def _quantity(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def run(quick: bool, keyring_scheme: str = HYBRID) -> Report:
    sizes = Sizes.of(quick)
    started = time.monotonic()
    load_start = load_average()
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    WORK_DIR.mkdir(parents=True)
    progress("starting the local stack (fresh emulators)")
    # The stack keeps a key ring it finds in its state directory.
    harness.write_keyring(WORK_DIR / "stack" / KEYRING_FILE, keyring_scheme)
    # No sweep during the run: it is a per-minute cost, not a per-task one.
    stack = start_stack(WORK_DIR / "stack", extra_args=["--redispatch-every", "3600"])
    try:
        env = stack.env
        firestore, pubsub = env["FIRESTORE_EMULATOR_HOST"], env["PUBSUB_EMULATOR_HOST"]
        project = env["GOOGLE_CLOUD_PROJECT"]
        db = harness.firestore_client(project, firestore)
        try:
            completions = {
                "floor": Completion(db, FLOOR_COLLECTION),
                "aia": Completion(db, AIA_COLLECTION),
            }
            progress("starting the floor beside it")
            with floor_beside(stack, WORK_DIR) as (floor_direct, floor_gw, floor_pgids):
                routes = [
                    Route("floor", "direct", floor_direct, floor_direct),
                    Route(
                        "aia",
                        "direct",
                        stack.info["functions"]["submit_task"],
                        stack.info["functions"]["task_status"],
                        stack.api_key,
                    ),
                    Route("floor", "gateway", floor_gw, floor_gw),
                    Route("aia", "gateway", stack.base_url, stack.base_url, stack.api_key),
                ]

                def emulator_pgids() -> dict[str, int]:
                    return {name: stack.pgids[name] for name in EMULATORS}

                def aia_pgids() -> dict[str, int]:
                    pgids = stack.pgids
                    return {
                        "submit": pgids["submit_task"],
                        "worker": pgids["process_task"],
                        **emulator_pgids(),
                    }

                cpu_groups = {
                    "floor": lambda: {**floor_pgids, **emulator_pgids()},
                    "aia": aia_pgids,
                }
                figures = measure_latency(routes, completions, sizes, cpu_groups)
        finally:
            db.close()
        pgids = stack.pgids
        emulators = {name: pgids[name] for name in EMULATORS}
        counts = measure_counts(
            firestore, pubsub, sizes.counted, WORK_DIR, emulators, keyring_scheme=keyring_scheme
        )
        progress("cold starts")
        with cold_start_bench.cold_world(firestore, pubsub, WORK_DIR, keyring_scheme) as world:
            cold = cold_start_bench.measure(
                world, sizes.cold_runs, sizes.profiles, progress=progress
            )
    finally:
        leftovers = stack.stop()
        if leftovers:
            progress(f"the stack left children running (now killed): {leftovers}")
    return Report(
        sizes=sizes,
        figures=figures,
        counts=counts,
        cold=cold,
        load={"start": load_start, "end": load_average()},
        elapsed_s=time.monotonic() - started,
        commit=_commit(),
        keyring_scheme=keyring_scheme,
    )


def main(
    *, quick: bool = False, json_path: Path = DEFAULT_JSON, keyring_scheme: str = HYBRID
) -> None:
    report = run(quick, keyring_scheme)
    print(report.render())
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps(report.to_json(), indent=1, default=str) + "\n", encoding="utf-8"
    )
    print(f"\nJSON: {json_path}")


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.platform_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the JSON goes")
    parser.add_argument(
        "--keyring-scheme",
        choices=SCHEMES,
        default=HYBRID,
        help="AIA's key ring: what the post-quantum wrap costs is the difference to fernet",
    )
    args = parser.parse_args(argv)
    main(quick=args.quick, json_path=args.json, keyring_scheme=args.keyring_scheme)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
