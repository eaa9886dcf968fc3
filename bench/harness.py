"""Serve functions the way `devtools.stack` does, on emulators the benchmark chooses.

The stack owns its functions' environment (it always points them at its own
emulators), so where the benchmark needs a function elsewhere (behind the RPC
counter, or started cold on purpose) it launches it here with the same argv
and the same settings. Every process leads its own group and is stopped with
`os.killpg` (through `devtools.emulators.Service.stop`).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.emulators import Service, free_port, spawn
from devtools.procs import group_members
from devtools.stack import FUNCTIONS, OWNED_ENV, REPO_ROOT

BENCH = Path(__file__).resolve().parent
FLOOR_DIR = BENCH / "floor"
# The stack's settings for its functions (devtools.stack.Options defaults).
# Spans are recorded and exported as the stack's are (to files: Cloud Trace needs
# credentials), so their cost is in every figure.
TRACE_DIR = Path(tempfile.gettempdir()) / "aia-bench-spans"
STACK_SETTINGS = {
    "AIA_REDISPATCH_AFTER_S": "10",
    "AIA_RETRY_MAX_BACKOFF_S": "4",
    "AIA_TRACE_EXPORTER": "file",
    "AIA_TRACE_DIR": str(TRACE_DIR),
}
RETRY_MAX_BACKOFF_S = 4


@dataclass(frozen=True)
class FunctionSpec:
    """One function folder: served as `--target=<target> --source=<folder>/main.py`.

    A `bundled` folder is a deploy bundle (`tools.package`): served from inside it
    with nothing of the repository on the path, as Cloud Functions serves it.
    """

    target: str
    folder: Path
    signature: str = "http"
    bundled: bool = False

    @property
    def source(self) -> Path:
        return self.folder / "main.py"

    @property
    def cwd(self) -> Path:
        return self.folder if self.bundled else REPO_ROOT

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """A bundle brings its own `shared` (the repository's would shadow it)."""
        if not self.bundled:
            return dict(env)
        return {k: v for k, v in env.items() if k != "PYTHONPATH"}


AIA: dict[str, FunctionSpec] = {
    name: FunctionSpec(name, REPO_ROOT / "functions" / name, signature)
    for name, signature in FUNCTIONS
}
FLOOR_SUBMIT = FunctionSpec("floor_submit", FLOOR_DIR / "floor_submit")
FLOOR_WORKER = FunctionSpec("floor_worker", FLOOR_DIR / "floor_worker", "cloudevent")
HELLO = FunctionSpec("hello", FLOOR_DIR / "hello")


def function_argv(spec: FunctionSpec, port: int) -> list[str]:
    """What `devtools.stack` runs for a function (keep the two in step)."""
    return [
        sys.executable,
        "-m",
        "functions_framework",
        f"--target={spec.target}",
        f"--source={spec.source}",
        f"--signature-type={spec.signature}",
        "--host=127.0.0.1",
        f"--port={port}",
    ]


def function_env(settings: Mapping[str, str]) -> dict[str, str]:
    """The inherited environment without what the stack owns, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in OWNED_ENV}
    env.update(settings)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def aia_settings(
    *, project: str, firestore: str, pubsub: str, keyring: Path, base_url: str = ""
) -> dict[str, str]:
    """AIA's environment as the stack gives it, against the given emulator hosts."""
    return {
        "GOOGLE_CLOUD_PROJECT": project,
        "FIRESTORE_EMULATOR_HOST": firestore,
        "PUBSUB_EMULATOR_HOST": pubsub,
        "AIA_KEYRING_FILE": str(keyring),
        "AIA_PUBLIC_BASE_URL": base_url,
        **STACK_SETTINGS,
    }


def floor_settings(*, project: str, firestore: str, pubsub: str, topic: str) -> dict[str, str]:
    return {
        "GOOGLE_CLOUD_PROJECT": project,
        "FIRESTORE_EMULATOR_HOST": firestore,
        "PUBSUB_EMULATOR_HOST": pubsub,
        "FLOOR_TOPIC": f"projects/{project}/topics/{topic}",
    }


def launch(
    name: str, spec: FunctionSpec, env: Mapping[str, str], log_dir: Path, port: int | None = None
) -> Service:
    """Start a function; it answers once `wait_answering` returns."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    return spawn(
        name,
        function_argv(spec, port),
        url=f"http://127.0.0.1:{port}",
        log_dir=log_dir,
        env=spec.env(env),
        cwd=spec.cwd,
    )


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


def wait_answering(svc: Service, timeout_s: float = 60.0) -> None:
    """Until `svc` answers HTTP at all (any status), as the stack waits for its functions."""
    host, port = host_port(svc.url)
    deadline = time.monotonic() + timeout_s
    while True:
        if svc.proc.poll() is not None:
            raise RuntimeError(f"{svc.name} exited with {svc.proc.returncode}: see {svc.log_path}")
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", "/health?probe=live")
            conn.getresponse().read()
        except OSError:
            pass
        else:
            return
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{svc.name} did not answer on {svc.url}: see {svc.log_path}")
        time.sleep(0.05)


@contextlib.contextmanager
def serving(
    functions: Mapping[str, tuple[FunctionSpec, Mapping[str, str]]], log_dir: Path
) -> Iterator[dict[str, Service]]:
    """Start every function at once (they boot in parallel), wait for all, stop all after."""
    services: dict[str, Service] = {}
    try:
        for name, (spec, env) in functions.items():
            services[name] = launch(name, spec, env, log_dir)
        for svc in services.values():
            wait_answering(svc)
        yield services
    finally:
        for svc in services.values():
            with contextlib.suppress(OSError):
                svc.stop()


# --- CPU and log accounting ---------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def stat_cpu_ticks(stat: str) -> tuple[int, int]:
    """(process group, utime + stime + reaped children's) from a /proc/<pid>/stat line."""
    # The command name is parenthesised and may hold spaces: split after its last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); pgrp is field 5, utime..cstime are fields 14-17.
    return int(fields[2]), sum(int(f) for f in fields[11:15])


def group_cpu_s(pgid: int) -> float:
    """CPU seconds used so far by the live members of a process group (and children they reaped)."""
    ticks = 0
    for pid in group_members(pgid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            group, used = stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())
            if group == pgid:
                ticks += used
    return ticks / CLOCK_TICKS


def span_lines(directory: Path) -> int:
    """Spans the file exporter has written under `directory` (one JSON line each)."""
    total = 0
    for path in directory.glob("spans-*.jsonl"):
        with contextlib.suppress(OSError), path.open("rb") as f:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    return total


def settled_span_lines(directory: Path, quiet_s: float = 6.0, limit_s: float = 20.0) -> int:
    """`span_lines` once no span was written for `quiet_s` (the batch exporter waits 5 s)."""
    deadline = time.monotonic() + limit_s
    last, since = span_lines(directory), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.5)
        now = span_lines(directory)
        if now != last:
            last, since = now, time.monotonic()
    return last


def log_bytes(svc: Service) -> int:
    try:
        return svc.log_path.stat().st_size if svc.log_path else 0
    except OSError:
        return 0


# --- set-up on the emulators ----------------------------------------------------


@contextlib.contextmanager
def emulator_env(firestore: str | None = None, pubsub: str | None = None) -> Iterator[None]:
    """Google clients built inside the block talk to these hosts (they read the variables once)."""
    wanted = {"FIRESTORE_EMULATOR_HOST": firestore, "PUBSUB_EMULATOR_HOST": pubsub}
    saved = {name: os.environ.get(name) for name in wanted}
    try:
        for name, value in wanted.items():
            if value is not None:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def firestore_client(project: str, host: str) -> Any:
    from google.cloud import firestore

    with emulator_env(firestore=host):
        return firestore.Client(project=project)


def write_keyring(path: Path, scheme: str | None = None) -> Path:
    """A fresh private key ring, as `aia keyring generate [--scheme]` writes it."""
    from shared.security.keyring import HYBRID, generate_keyring

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generate_keyring(scheme or HYBRID).to_json(), encoding="utf-8")
    path.chmod(0o600)
    return path


def create_api_key(project: str, firestore: str, tenant: str) -> str:
    """A key for `tenant`, stored as `aia keys create` stores it (straight to the emulator)."""
    from shared.security.apikeys import ApiKeys, FirestoreApiKeyStore

    db = firestore_client(project, firestore)
    try:
        return ApiKeys(FirestoreApiKeyStore(db)).create(tenant)[1]
    finally:
        db.close()


def create_topics(pubsub: str, project: str, topics: list[str]) -> None:
    """Topics without subscriptions: what is published to them goes nowhere."""
    import grpc
    from google.api_core.exceptions import AlreadyExists
    from google.pubsub_v1 import PublisherClient
    from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport

    client = PublisherClient(
        transport=PublisherGrpcTransport(channel=grpc.insecure_channel(pubsub))
    )
    try:
        for topic in topics:
            with contextlib.suppress(AlreadyExists):
                client.create_topic(request={"name": f"projects/{project}/topics/{topic}"})
    finally:
        client.transport.close()  # type: ignore[no-untyped-call]
