"""Cold start as a user feels it: process start → first successful answer to a real request.

Each function is started as `devtools.stack` starts it (`python -m
functions_framework ...`), but from its deploy bundle (`tools.package`: our
modules compiled, as the dependencies are by the runtime's install) and with
nothing of the repository on the path, and sent its real first request at once, retried
every 2 ms until the port accepts: `GET /health?probe=live` and `GET /health`
(readiness: Firestore and the tasks topic), a real submit for `submit_task`, a
real read for `task_status`, one Pub/Sub push delivery of a queued task for
`process_task`. Figures are medians over fresh processes, next to a
functions-framework hello-world measured the same way in the same rounds; the
delta to it is what AIA's code costs. The floor's two functions are measured
too, for scale.

What dominates is read from one more in-process run per function
(`bench.cold_probe`): phase timings, and `python -X importtime` grouped by
package, split into module load and first request.

    python -m bench cold_start [--quick]   # on emulators of its own
    python -m bench.cold_start_bench [--quick] --against REV   # this tree against REV
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import harness, stats
from bench.cold_probe import FIRST_REQUEST_MARKER
from bench.floor import COLLECTION as FLOOR_COLLECTION
from bench.harness import AIA, FLOOR_SUBMIT, FLOOR_WORKER, HELLO, FunctionSpec
from devtools.emulators import Service, free_port
from devtools.stack import REPO_ROOT
from shared.queries import TASKS as AIA_COLLECTION
from tools import package

COLD_PROJECT = "aia-bench-cold"
TENANT = "bench"
FLOOR_TOPIC = "floor-tasks"
TASKS_TOPIC = "aia-tasks"
# The budgets over the hello-world, in ms.
LIVE_BUDGET_MS = 60.0
OTHER_BUDGET_MS = 400.0
RETRY_CONNECT_S = 0.002


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


@dataclass
class ColdWorld:
    """A project on the emulators where cold functions answer real requests."""

    project: str
    firestore: str
    pubsub: str
    keyring: Path
    api_key: str
    log_dir: Path
    db: Any
    bundles: Path  # AIA's deploy bundles (`tools.package`): what a cold start loads
    queued: dict[str, list[str]] = field(default_factory=lambda: {"aia": [], "floor": []})
    known: list[str] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)  # delivered, not yet checked

    def served(self, spec: FunctionSpec) -> FunctionSpec:
        """What runs for `spec`: AIA's functions from their deploy bundles, with bytecode."""
        if spec.folder.parent == harness.FLOOR_DIR:
            return spec
        return dataclasses.replace(spec, folder=self.bundles / spec.target, bundled=True)

    def env_for(self, spec: FunctionSpec) -> dict[str, str]:
        if spec.folder.parent == harness.FLOOR_DIR:
            return harness.function_env(
                harness.floor_settings(
                    project=self.project,
                    firestore=self.firestore,
                    pubsub=self.pubsub,
                    topic=FLOOR_TOPIC,
                )
            )
        return self.served(spec).env(
            harness.function_env(
                harness.aia_settings(
                    project=self.project,
                    firestore=self.firestore,
                    pubsub=self.pubsub,
                    keyring=self.keyring,
                )
            )
        )

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def push(self, system: str, topic: str) -> Request:
        """The body the Pub/Sub emulator pushes, for the oldest task queued by a cold submit."""
        task_id = self.queued[system].pop(0)
        self.pushed.append(task_id)
        data = {"task_id": task_id}
        attributes = {"type": "echo"}
        if system == "aia":
            data["tenant_id"] = TENANT
            attributes["tenant_id"] = TENANT
        now = datetime.now(UTC).isoformat()
        message_id = uuid.uuid4().hex
        body = {
            "subscription": f"projects/{self.project}/subscriptions/{topic}-worker",
            "message": {
                "data": base64.b64encode(json.dumps(data).encode()).decode(),
                "attributes": attributes,
                "messageId": message_id,
                "message_id": message_id,
                "publishTime": now,
                "publish_time": now,
            },
        }
        return Request(
            "POST",
            f"/projects/{self.project}/topics/{topic}",
            {"Content-Type": "application/json"},
            json.dumps(body).encode(),
        )


@dataclass(frozen=True)
class Probe:
    label: str
    spec: FunctionSpec
    request: Callable[[ColdWorld], Request]
    ok: Callable[[int, bytes], bool]
    budget_ms: float | None  # allowed delta over hello-world; None: shown for scale only
    after: Callable[[ColdWorld, bytes], None] = lambda world, body: None


def _status_is(*codes: int) -> Callable[[int, bytes], bool]:
    return lambda status, body: status in codes


def _health_ok(status: int, body: bytes) -> bool:
    return status == 200 and json.loads(body).get("status") == "ok"


def _submitted(system: str) -> Callable[[ColdWorld, bytes], None]:
    def note(world: ColdWorld, body: bytes) -> None:
        task_id = json.loads(body)["task_id"]
        world.queued[system].append(task_id)
        if system == "aia":
            world.known.append(task_id)

    return note


def _processed(collection: str) -> Callable[[ColdWorld, bytes], None]:
    """The delivery really ran the task: a skip would also answer 2xx."""

    def check(world: ColdWorld, body: bytes) -> None:
        task_id = world.pushed.pop(0)
        snap = world.db.collection(collection).document(task_id).get()
        if not snap.exists or snap.get("status") != "succeeded":
            raise RuntimeError(f"the delivery of {task_id} answered but did not run it")

    return check


def _submit(world: ColdWorld) -> Request:
    body = json.dumps({"type": "echo", "payload": {"cold": True}}).encode()
    return Request("POST", "/tasks", {**world.auth(), "Content-Type": "application/json"}, body)


PROBES: tuple[Probe, ...] = (
    Probe("hello-world", HELLO, lambda w: Request("GET", "/"), _status_is(200), None),
    Probe(
        "health ?probe=live",
        AIA["health"],
        lambda w: Request("GET", "/health?probe=live"),
        _status_is(200),
        LIVE_BUDGET_MS,
    ),
    Probe(
        "health (ready)",
        AIA["health"],
        lambda w: Request("GET", "/health"),
        _health_ok,
        OTHER_BUDGET_MS,
    ),
    Probe(
        "submit_task",
        AIA["submit_task"],
        _submit,
        _status_is(202),
        OTHER_BUDGET_MS,
        _submitted("aia"),
    ),
    Probe(
        "task_status",
        AIA["task_status"],
        lambda w: Request("GET", f"/tasks/{w.known[-1]}", w.auth()),
        _status_is(200),
        OTHER_BUDGET_MS,
    ),
    Probe(
        "process_task",
        AIA["process_task"],
        lambda w: w.push("aia", TASKS_TOPIC),
        _status_is(200, 204),
        OTHER_BUDGET_MS,
        _processed(AIA_COLLECTION),
    ),
    Probe("floor_submit", FLOOR_SUBMIT, _submit, _status_is(202), None, _submitted("floor")),
    Probe(
        "floor_worker",
        FLOOR_WORKER,
        lambda w: w.push("floor", FLOOR_TOPIC),
        _status_is(200, 204),
        None,
        _processed(FLOOR_COLLECTION),
    ),
)


@dataclass(frozen=True)
class ColdSample:
    total_ms: float  # spawn → first successful answer
    listen_ms: float  # spawn → the port accepted
    refused: int = 0  # answers before it that were not a success (e.g. health "degraded")
    # CPU the function's processes used until then: unlike wall time, barely moved by
    # other engineers' load on a shared machine.
    cpu_ms: float = 0.0


def _connect(port: int, svc: Service, label: str, deadline: float) -> http.client.HTTPConnection:
    """A connection to the function's port, tried every RETRY_CONNECT_S until it accepts."""
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.connect()
        except OSError:
            conn.close()
            if svc.proc.poll() is not None:
                raise RuntimeError(f"{label} exited: see {svc.log_path}") from None
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{label} never listened: see {svc.log_path}") from None
            time.sleep(RETRY_CONNECT_S)
            continue
        return conn


def cold_run(probe: Probe, world: ColdWorld) -> ColdSample:
    """Start the function, send its request as soon as the port accepts, until it succeeds.

    A user whose first answer is not a success (a readiness check whose client import
    outran its budget says "degraded") asks again: the figure is the first success.
    """
    world.pushed.clear()
    req = probe.request(world)
    port = free_port()
    started = time.perf_counter()
    spec = world.served(probe.spec)
    svc = harness.launch(spec.target, spec, world.env_for(probe.spec), world.log_dir, port)
    try:
        deadline = started + 90
        listening: float | None = None
        refused = 0
        while True:
            conn = _connect(port, svc, probe.label, deadline)
            listening = listening or time.perf_counter()
            try:
                conn.request(req.method, req.path, body=req.body, headers=req.headers)
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
            answered = time.perf_counter()
            if probe.ok(resp.status, body):
                cpu_ms = harness.group_cpu_s(svc.pgid) * 1000
                probe.after(world, body)
                return ColdSample(
                    (answered - started) * 1000, (listening - started) * 1000, refused, cpu_ms
                )
            refused += 1
            if answered > deadline:
                raise RuntimeError(
                    f"{probe.label}: still {resp.status} {body[:300]!r} (see {svc.log_path})"
                )
            time.sleep(0.01)
    finally:
        _stop(svc)


def _stop(svc: Service) -> None:
    # Nothing is left to finish once it answered: SIGKILL saves gunicorn's graceful second.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(svc.pgid, signal.SIGKILL)
    svc.stop()


# --- what dominates --------------------------------------------------------------


def import_group(module: str) -> str:
    """The package an import is charged to: `google.cloud.firestore_v1`, `google.protobuf`..."""
    parts = module.strip().split(".")
    if parts[0] == "google":
        depth = 3 if len(parts) > 2 and parts[1] == "cloud" else 2
        return ".".join(parts[:depth])
    return parts[0]


def parse_importtime(text: str) -> dict[str, dict[str, float]]:
    """Self time (ms) per package from `-X importtime` output, per phase (`load`, `request`).

    Self times add up to the whole import time; cumulative ones would count nested
    packages twice. Lines before the marker are module load, after it the first request.
    """
    phases: dict[str, dict[str, float]] = {
        "load": defaultdict(float),
        "request": defaultdict(float),
    }
    phase = "load"
    for line in text.splitlines():
        if line.startswith(FIRST_REQUEST_MARKER):
            phase = "request"
            continue
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        try:
            self_us, _cumulative, name = line.removeprefix("import time:").split("|", 2)
            # Imports in other threads (health runs its checks in a pool) upset the nesting
            # importtime assumes, which can make a self time negative: count those as 0.
            phases[phase][import_group(name)] += max(int(self_us), 0) / 1000
        except ValueError:
            continue
    return {phase: dict(groups) for phase, groups in phases.items()}


def top_imports(groups: dict[str, dict[str, float]], n: int = 5) -> list[tuple[str, float]]:
    both: dict[str, float] = defaultdict(float)
    for phase in groups.values():
        for name, ms in phase.items():
            both[name] += ms
    return sorted(both.items(), key=lambda item: -item[1])[:n]


def profile(probe: Probe, world: ColdWorld) -> dict[str, Any]:
    """One in-process cold load and first request (`bench.cold_probe`) under -X importtime.

    importtime slows imports a little; the phase timings are for proportion, the
    spawn-to-answer figures above are the measurement.
    """
    world.pushed.clear()
    first = probe.request(world)
    second = probe.request(world) if probe.spec.signature == "cloudevent" else first
    served = world.served(probe.spec)
    spec = {
        "target": served.target,
        "source": str(served.source),
        "signature": served.signature,
        "method": first.method,
        "path": first.path,
        "headers": first.headers,
        "body": first.body.decode() if first.body else None,
        "second_body": second.body.decode() if second.body else None,
    }
    # By path, not `-m`: the working directory goes first on the path, and a bundle's
    # own `shared` must not be shadowed by the repository's.
    argv = [sys.executable, "-X", "importtime", str(REPO_ROOT / "bench" / "cold_probe.py")]
    result = subprocess.run(
        [*argv, json.dumps(spec)],
        env=world.env_for(probe.spec),
        cwd=served.cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        start_new_session=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cold probe of {probe.label} failed:\n{result.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    bodies = out.pop("bodies")
    # Only timings are wanted here; a first answer that is no success is noted, not fatal.
    out["first_ok"] = probe.ok(out["status"], bodies[0].encode())
    for status, body in zip((out["status"], out["second_status"]), bodies, strict=True):
        if probe.ok(status, body.encode()):
            probe.after(world, body.encode())
    out["imports"] = parse_importtime(result.stderr)
    return out


# --- the whole measurement ----------------------------------------------------------


@dataclass
class ColdResult:
    samples: dict[str, list[ColdSample]]
    profiles: dict[str, dict[str, Any]]
    runs: int

    def median_ms(self, label: str) -> float:
        return stats.median(s.total_ms for s in self.samples[label])

    def baseline_ms(self) -> float:
        return self.median_ms(PROBES[0].label)

    def cpu_ms(self, label: str) -> float:
        return stats.median(s.cpu_ms for s in self.samples[label])

    def targets(self) -> list[stats.Target]:
        base = self.baseline_ms()
        return [
            stats.Target(
                f"cold start {p.label}",
                self.median_ms(p.label),
                base,
                "max-delta",
                p.budget_ms,
                " ms",
            )
            for p in PROBES
            if p.budget_ms is not None
        ]

    def rows(self) -> list[list[str]]:
        base = self.baseline_ms()
        base_cpu = self.cpu_ms(PROBES[0].label)
        rows = []
        for probe in PROBES:
            samples = self.samples[probe.label]
            total = self.median_ms(probe.label)
            listen = stats.median(s.listen_ms for s in samples)
            prof = self.profiles.get(probe.label, {})
            imports = prof.get("imports", {})
            load_imp = sum(imports.get("load", {}).values())
            req_imp = sum(imports.get("request", {}).values())
            budget = "" if probe.budget_ms is None else f"+{probe.budget_ms:.0f}"
            met = (
                "" if probe.budget_ms is None else ("✓" if total - base <= probe.budget_ms else "✗")
            )
            rows.append(
                [
                    probe.label,
                    f"{total:.0f}",
                    f"{listen:.0f}",
                    f"{total - listen:.0f}",
                    f"{total - base:+.0f}",
                    f"{stats.ratio(total, base):.2f}",
                    f"{self.cpu_ms(probe.label):.0f} ({self.cpu_ms(probe.label) - base_cpu:+.0f})",
                    f"{load_imp:.0f}/{req_imp:.0f}",
                    budget,
                    met,
                ]
            )
        return rows

    def render(self) -> str:
        header = [
            f"cold start (median of {self.runs})",
            "ms",
            "listen",
            "1st req",
            "Δ hello",
            "ratio",
            "CPU ms (Δ)",
            "imports load/req",
            "budget",
            "",
        ]
        refused = [
            f"  {label}: {sum(s.refused for s in samples)} answers before the first success "
            f"in {len(samples)} starts (counted until that success)"
            for label, samples in self.samples.items()
            if any(s.refused for s in samples)
        ]
        lines = [
            stats.render_table(header, self.rows()),
            *refused,
            "",
            "what dominates (-X importtime self ms, top 5):",
        ]
        for probe in PROBES:
            prof = self.profiles.get(probe.label)
            if not prof:
                continue
            top = ", ".join(f"{name} {ms:.0f}" for name, ms in top_imports(prof.get("imports", {})))
            lines.append(
                f"  {probe.label:<19} framework {prof['framework_ms']:.0f} ms, load "
                f"{prof['load_ms']:.0f}, 1st request {prof['first_request_ms']:.0f} "
                f"(warm {prof['warm_request_ms']:.1f}) | {top}"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        base = self.baseline_ms()
        return {
            "runs": self.runs,
            "functions": {
                p.label: {
                    "median_ms": self.median_ms(p.label),
                    "listen_ms": stats.median(s.listen_ms for s in self.samples[p.label]),
                    "delta_ms": self.median_ms(p.label) - base,
                    "ratio": stats.ratio(self.median_ms(p.label), base),
                    "samples_ms": [round(s.total_ms, 1) for s in self.samples[p.label]],
                    "refused_answers": sum(s.refused for s in self.samples[p.label]),
                    "cpu_ms": self.cpu_ms(p.label),
                    "cpu_delta_ms": self.cpu_ms(p.label) - self.cpu_ms(PROBES[0].label),
                    "budget_ms": p.budget_ms,
                    "profile": self.profiles.get(p.label),
                    "top_imports": top_imports(self.profiles.get(p.label, {}).get("imports", {})),
                }
                for p in PROBES
            },
        }


@contextlib.contextmanager
def cold_world(
    firestore: str, pubsub: str, work_dir: Path, keyring_scheme: str | None = None
) -> Iterator[ColdWorld]:
    """The cold project: topics without subscriptions (only probes deliver), key ring, API key."""
    harness.create_topics(pubsub, COLD_PROJECT, [TASKS_TOPIC, "aia-tasks-dead-letter", FLOOR_TOPIC])
    keyring = harness.write_keyring(work_dir / "cold-keyring.json", keyring_scheme)
    api_key = harness.create_api_key(COLD_PROJECT, firestore, TENANT)
    db = harness.firestore_client(COLD_PROJECT, firestore)
    bundles = work_dir / "bundles"
    package.build_all(REPO_ROOT, bundles, [p.spec.target for p in PROBES if p.spec in AIA.values()])
    try:
        yield ColdWorld(
            COLD_PROJECT,
            firestore,
            pubsub,
            keyring,
            api_key,
            work_dir / "cold-logs",
            db,
            bundles,
        )
    finally:
        db.close()


def measure(
    world: ColdWorld, runs: int, profiles: int = 1, *, progress: Callable[[str], None] = print
) -> ColdResult:
    samples: dict[str, list[ColdSample]] = {p.label: [] for p in PROBES}
    # One untimed round first, so the page cache favours no one.
    for probe in PROBES:
        cold_run(probe, world)
    for round_no in range(runs):
        progress(f"cold start round {round_no + 1}/{runs}")
        for probe in PROBES:
            samples[probe.label].append(cold_run(probe, world))
    progress(f"import profiles ({profiles} per function)")
    taken: dict[str, list[dict[str, Any]]] = {p.label: [] for p in PROBES}
    for _ in range(profiles):
        for probe in PROBES:
            try:
                taken[probe.label].append(profile(probe, world))
            except (RuntimeError, IndexError, subprocess.TimeoutExpired) as exc:
                # IndexError: a failed submit left no queued task for the worker's probe.
                progress(f"profile of {probe.label} skipped: {exc}")
    return ColdResult(
        samples,
        {label: median_profile(runs) for label, runs in taken.items() if runs},
        runs,
    )


def median_profile(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per phase and per package, the median over profile runs (a package absent counts 0)."""
    out: dict[str, Any] = {
        key: stats.median(r[key] for r in runs)
        for key in ("framework_ms", "load_ms", "first_request_ms", "warm_request_ms")
    }
    out["first_ok"] = sum(bool(r.get("first_ok", True)) for r in runs)
    out["profiled"] = len(runs)
    imports: dict[str, dict[str, float]] = {}
    for phase in ("load", "request"):
        names = {name for r in runs for name in r["imports"][phase]}
        imports[phase] = {
            name: stats.median(r["imports"][phase].get(name, 0.0) for r in runs) for name in names
        }
    out["imports"] = imports
    return out


# --- against another revision ---------------------------------------------------------


def bundles_of(revision: str, work: Path) -> Path:
    """The deploy bundles `revision` builds, by its own `tools.package` (as it would deploy)."""
    source = work / f"source-{revision}"
    source.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    out = work / f"bundles-{revision}"
    names = [p.spec.target for p in PROBES if p.spec in AIA.values()]
    subprocess.run(
        [sys.executable, "-m", "tools.package", "--out", str(out), *dict.fromkeys(names)],
        cwd=source,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        check=True,
    )
    return out


def compare(world: ColdWorld, other: Path, revision: str, runs: int) -> str:
    """This tree's bundles and `revision`'s, interleaved run by run: the change, not the noise."""
    probes = [p for p in PROBES if p.spec in AIA.values()]
    mine = world.bundles
    taken: dict[tuple[str, str], list[ColdSample]] = defaultdict(list)
    for round_no in range(runs + 1):
        for side, bundles in (("this tree", mine), (revision, other)):
            world.bundles = bundles
            for probe in probes:
                sample = cold_run(probe, world)
                if round_no:  # the first round only warms the page cache
                    taken[(side, probe.label)].append(sample)
    world.bundles = mine
    lines = [
        f"cold start, this tree against {revision} (interleaved, median of {runs}):",
        f"  {'function':<20} {'this tree':>16} {revision:>16} {'Δ wall':>8} {'Δ CPU':>8}",
    ]
    for probe in probes:
        a, b = taken[("this tree", probe.label)], taken[(revision, probe.label)]
        wall = stats.median(s.total_ms for s in a), stats.median(s.total_ms for s in b)
        cpu = stats.median(s.cpu_ms for s in a), stats.median(s.cpu_ms for s in b)
        lines.append(
            f"  {probe.label:<20} {wall[0]:>9.0f} ms wall {wall[1]:>9.0f} ms wall"
            f" {wall[0] - wall[1]:>+6.0f} ms {cpu[0] - cpu[1]:>+6.0f} ms"
        )
    return "\n".join(lines)


def main(*, quick: bool = False, against: str | None = None) -> None:
    from devtools.emulators import emulators

    runs = 2 if quick else 5
    with tempfile.TemporaryDirectory(prefix="aia-cold-") as tmp:
        work = Path(tmp)
        other = bundles_of(against, work) if against else None
        with emulators(COLD_PROJECT, log_dir=work) as env:
            host_fs, host_ps = env["FIRESTORE_EMULATOR_HOST"], env["PUBSUB_EMULATOR_HOST"]
            with cold_world(host_fs, host_ps, work) as world:
                if against and other:
                    print(compare(world, other, against, runs))
                    return
                result = measure(world, runs, 1 if quick else 3)
    print(result.render())
    for t in result.targets():
        print(f"  {t.mark()} {t.name}: {t.describe_measure()} ({t.describe_limit()})")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.cold_start_bench")
    parser.add_argument("--quick", action="store_true", help="2 runs instead of 5")
    parser.add_argument(
        "--against", metavar="REV", help="compare with the bundles a git revision builds"
    )
    cli = parser.parse_args()
    main(quick=cli.quick, against=cli.against)
