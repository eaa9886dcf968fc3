"""`make dev`: the whole of AIA on this machine, under one base URL.

Starts the Firestore and Pub/Sub emulators, creates the topics and the push
subscription to the worker, serves every function with functions-framework,
puts them behind one gateway, creates a dev API key and writes `.aia/dev.env`.
Ctrl-C (or SIGTERM) stops everything it started: each child runs in its own
process group and is stopped with `os.killpg`.

A function process that dies is started again on the same port with backoff,
as production starts a new instance; only an emulator's death stops the stack.
`<state-dir>/pgids.json` always names the current process groups (rewritten on
every start and restart), so tests can kill or freeze the right ones.

Tests run it as `python -m devtools.stack --port 0 --state-dir DIR` and read
the single `AIA_READY <json>` line it prints once everything answers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import errno
import http.client
import json
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from devtools.emulators import Service, free_port, spawn, start_firestore, start_pubsub
from devtools.gateway import GatewayServer
from devtools.procs import RUN_MARKER_ENV, group_alive, kill_group
from devtools.pubsub_setup import setup_pubsub, setup_webhook_pubsub
from devtools.supervisor import Child, Process, RestartPolicy, State, Supervisor
from shared.config import DEFAULT_PROJECT

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_PREFIX = "AIA_READY "
DEFAULT_PORT = 8080
PGIDS_FILE = "pgids.json"
# Made once per state directory; a ring already there is kept (and used).
KEYRING_FILE = "keyring.json"
# How often the run loop looks for dead children and due restarts.
TICK_S = 0.1

# (function, signature type) — entry point = folder name under functions/.
FUNCTIONS: tuple[tuple[str, str], ...] = (
    ("health", "http"),
    ("metrics", "http"),
    ("submit_task", "http"),
    ("task_status", "http"),
    ("redispatch", "http"),
    ("usage", "http"),
    ("process_task", "cloudevent"),
    ("schedules", "http"),
    ("schedule_tick", "http"),
    ("openapi", "http"),
    ("dashboard", "http"),
    ("webhooks", "http"),
    ("deliver_webhooks", "http"),
    ("workflows", "http"),
)
# Settings the stack decides; inherited values would point functions elsewhere.
# AIA_KEYRING (an inline secret) would silently win over AIA_KEYRING_FILE.
OWNED_ENV = (
    "GOOGLE_CLOUD_PROJECT",
    "FIRESTORE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "AIA_KEYRING",
    "AIA_KEYRING_FILE",
    "AIA_PUBLIC_BASE_URL",
    "AIA_REDISPATCH_AFTER_S",
    "AIA_RETRY_MAX_BACKOFF_S",
    "AIA_KEYS_DATABASE",
    "AIA_DIAGNOSTIC_DIR",
    "AIA_METRICS_TOKEN",
    "AIA_WEBHOOKS_ALLOW_LOOPBACK",
    "AIA_BASE_URL",
    "AIA_API_KEY",
    "AIA_TRACE_EXPORTER",
    "AIA_TRACE_DIR",
    RUN_MARKER_ENV,
)

KEYS_DATABASE = "aia-keys"

log = logging.getLogger("aia.stack")


class StackError(Exception):
    """A start-up problem with a message meant for the user."""


class Stopping(Exception):
    """Raised inside start-up once a stop signal arrived."""


@dataclass
class Options:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    state_dir: Path = REPO_ROOT / ".aia"
    project: str = DEFAULT_PROJECT
    redispatch_every_s: float = 15.0
    # Delayed tasks start within about this of their run_at (production: every second too).
    tick_every_s: float = 1.0
    redispatch_after_s: float = 10.0
    # The worker subscription's maximum backoff; the sweep must wait longer than it.
    retry_max_backoff_s: int = 4
    ready_timeout_s: float = 90.0
    functions_dir: Path = REPO_ROOT / "functions"
    # First wait before restarting a crashed function; doubles per crash, up to the cap.
    restart_backoff_s: float = 0.5
    restart_backoff_cap_s: float = 30.0


@dataclass
class Stack:
    """Everything one `make dev` started; `stop()` undoes it in reverse order."""

    opts: Options
    stop_event: threading.Event = field(default_factory=threading.Event)
    emulators: list[Service] = field(default_factory=list)
    function_services: dict[str, Service] = field(default_factory=dict)  # the current process
    functions: dict[str, str] = field(default_factory=dict)  # name -> base URL
    env: dict[str, str] = field(default_factory=dict)  # what dev.env exports
    api_key: str | None = None
    gateway: GatewayServer | None = None
    supervisor: Supervisor | None = None
    # Inherited by every child, so ids of groups it no longer leads are never signalled
    # blindly (devtools.procs); a test harness may choose it to find our children.
    run_id: str = field(default_factory=lambda: os.environ.get(RUN_MARKER_ENV) or uuid.uuid4().hex)
    pgid_history: dict[str, list[int]] = field(default_factory=dict)
    _launch: dict[str, tuple[list[str], str, dict[str, str]]] = field(default_factory=dict)
    _serving: bool = False
    _dev_env_text: str | None = None

    @property
    def services(self) -> list[Service]:
        """Every child running now (or last started), emulators first."""
        return [*self.emulators, *self.function_services.values()]

    @property
    def logs(self) -> Path:
        return self.opts.state_dir / "logs"

    @property
    def traces(self) -> Path:
        """Where the functions write their spans (`AIA_TRACE_EXPORTER=file`)."""
        return self.opts.state_dir / "traces"

    @property
    def keyring_path(self) -> Path:
        return self.opts.state_dir / KEYRING_FILE

    @property
    def dev_env_path(self) -> Path:
        return self.opts.state_dir / "dev.env"

    @property
    def pgids_path(self) -> Path:
        return self.opts.state_dir / PGIDS_FILE

    # --- start ----------------------------------------------------------------

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        # Bind first: a taken port must fail before anything is started.
        self.gateway = _bind_gateway(self.opts.host, self.opts.port)
        base_url = self.gateway.base_url
        _attach_log("aia.gateway", self.logs / "gateway.log")
        _attach_log("aia.scheduler", self.logs / "scheduler.log")
        _attach_log("aia.stack", self.logs / "stack.log")

        cli_ok = _cli_available()
        if cli_ok:
            self._ensure_keyring()
        else:
            _warn(
                "shared/cli.py is missing: no key ring and no dev API key can be made; "
                "authenticated endpoints will fail until it exists"
            )
        self._check_stop()

        fs, ps = self._start_emulators()
        self.env = {
            "GOOGLE_CLOUD_PROJECT": self.opts.project,
            "FIRESTORE_EMULATOR_HOST": fs.extra["FIRESTORE_EMULATOR_HOST"],
            "PUBSUB_EMULATOR_HOST": ps.extra["PUBSUB_EMULATOR_HOST"],
            "AIA_BASE_URL": base_url,
            "AIA_KEYRING_FILE": str(self.keyring_path),
            # As in production: API keys in a database of their own.
            "AIA_KEYS_DATABASE": KEYS_DATABASE,
            "AIA_DIAGNOSTIC_DIR": str(self.opts.state_dir / "diagnostic"),
            # As in production: /metrics and the detailed /health need the operators' token.
            "AIA_METRICS_TOKEN": self._metrics_token(),
        }
        self._check_stop()

        key_proc = self._start_key_creation() if cli_ok else None
        try:
            self._start_functions(base_url)
            worker = self.functions.get("process_task")
            if worker is None:
                _warn("functions/process_task is missing: nothing will consume the tasks topic")
            setup_pubsub(
                self.opts.project,
                worker or "http://127.0.0.1:9",
                emulator_host=self.env["PUBSUB_EMULATOR_HOST"],
                max_backoff_s=self.opts.retry_max_backoff_s,
            )
            deliver = self.functions.get("deliver_webhooks")
            if deliver is not None:
                setup_webhook_pubsub(
                    self.opts.project,
                    deliver,
                    emulator_host=self.env["PUBSUB_EMULATOR_HOST"],
                    max_backoff_s=self.opts.retry_max_backoff_s,
                )
            if key_proc is not None:
                self.api_key = _finish_key_creation(key_proc, self.logs / "cli.log")
                self.env["AIA_API_KEY"] = self.api_key
        finally:
            if key_proc is not None and key_proc.poll() is None:
                _kill_proc_group(key_proc)

        self.gateway.upstreams.update(
            {name: url.removeprefix("http://") for name, url in self.functions.items()}
        )
        self._supervise()
        self.gateway.start()
        self._serving = True
        jobs = (
            ("redispatch", "redispatch", "", self.opts.redispatch_every_s),
            ("schedule_tick", "schedule_tick", "", self.opts.tick_every_s),
            ("webhook sweep", "deliver_webhooks", "/sweep", self.opts.redispatch_every_s),
        )
        for name, function, path, every_s in jobs:
            if function in self.functions:
                self._start_scheduler(name, self.functions[function] + path, every_s)
        self._write_dev_env()

    def _check_stop(self) -> None:
        if self.stop_event.is_set():
            raise Stopping

    def _metrics_token(self) -> str:
        """The operators' token, kept across restarts of the stack (like the key ring)."""
        path = self.opts.state_dir / "metrics-token"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(secrets.token_urlsafe(32))
        return path.read_text(encoding="utf-8").strip()

    def _ensure_keyring(self) -> None:
        ring = self.keyring_path
        if ring.exists():
            return
        result = subprocess.run(
            [sys.executable, "-m", "shared.cli", "keyring", "generate", "--out", str(ring)],
            cwd=REPO_ROOT,
            env=self._child_env({}),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            start_new_session=True,  # Ctrl-C is the stack's to handle, not this child's
        )
        if result.returncode != 0 or not self.keyring_path.exists():
            raise StackError(
                f"`python -m shared.cli keyring generate` failed ({result.returncode}):\n"
                f"{result.stderr.strip() or result.stdout.strip()}"
            )

    def _start_emulators(self) -> tuple[Service, Service]:
        env = {**os.environ, RUN_MARKER_ENV: self.run_id}
        # In parallel: each takes a second or more of JVM start-up.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = [
                pool.submit(start_firestore, free_port(), log_dir=self.logs, env=env),
                pool.submit(
                    start_pubsub, free_port(), self.opts.project, log_dir=self.logs, env=env
                ),
            ]
            errors: list[BaseException] = []
            for future in futures:
                try:
                    svc = future.result()
                except (RuntimeError, OSError) as exc:  # start-up failure or timeout
                    errors.append(exc)
                else:
                    self.emulators.append(svc)
                    self.pgid_history[svc.name] = [svc.pgid]
        self._write_pgids()
        if errors:
            raise StackError(
                f"an emulator did not start: {errors[0]!r} (see {self.logs}/*-emulator.log; "
                "are Java 17 and the gcloud emulator components installed?)"
            )
        return self.emulators[0], self.emulators[1]

    def _start_key_creation(self) -> subprocess.Popen[str]:
        # Runs while the functions boot; it talks to Firestore only.
        return subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "keys", "create", "--tenant", "dev"],
            cwd=REPO_ROOT,
            env=self._child_env(self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def _start_functions(self, base_url: str) -> None:
        env = self._child_env(
            {
                **self.env,
                "AIA_PUBLIC_BASE_URL": base_url,
                "AIA_REDISPATCH_AFTER_S": _num(self.opts.redispatch_after_s),
                "AIA_RETRY_MAX_BACKOFF_S": _num(self.opts.retry_max_backoff_s),
                # Developers and tests receive webhooks on this machine, over plain http.
                "AIA_WEBHOOKS_ALLOW_LOOPBACK": "true",
                # Spans as JSON lines, one file per process (shared.tracing).
                "AIA_TRACE_EXPORTER": "file",
                "AIA_TRACE_DIR": str(self.traces),
                # Exported within a second (the SDK's default batches every 5 s).
                "OTEL_BSP_SCHEDULE_DELAY": "1000",
                "PYTHONUNBUFFERED": "1",
            }
        )
        started: list[tuple[str, Service]] = []
        for name, signature in FUNCTIONS:
            source = self.opts.functions_dir / name / "main.py"
            if not source.exists():
                _warn(f"functions/{name}/main.py is missing: {name} is not served")
                continue
            port = free_port()
            argv = [
                sys.executable,
                "-m",
                "functions_framework",
                f"--target={name}",
                f"--source={source}",
                f"--signature-type={signature}",
                "--host=127.0.0.1",
                f"--port={port}",
            ]
            url = f"http://127.0.0.1:{port}"
            self._launch[name] = (argv, url, env)
            started.append((name, self._spawn_function(name, restart=False)))
        deadline = time.monotonic() + self.opts.ready_timeout_s
        for name, svc in started:
            self._wait_answering(svc, deadline)
            self.functions[name] = svc.url

    def _wait_answering(self, svc: Service, deadline: float) -> None:
        """Wait until `svc` answers HTTP at all (a 4xx for GET / still means it is up)."""
        host, _, port = svc.url.removeprefix("http://").rpartition(":")
        while True:
            self._check_stop()
            if svc.proc.poll() is not None:
                raise StackError(
                    f"{svc.name} exited with {svc.proc.returncode} while starting:\n"
                    f"{_tail(svc.log_path)}"
                )
            conn = http.client.HTTPConnection(host, int(port), timeout=2)
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
                raise StackError(f"{svc.name} did not answer on {svc.url}:\n{_tail(svc.log_path)}")
            time.sleep(0.1)

    def _spawn_function(self, name: str, *, restart: bool) -> Service:
        """Start `name` on its port; a restart keeps the old log and marks where it begins."""
        argv, url, env = self._launch[name]
        if restart:
            with (self.logs / f"{name}.log").open("a", encoding="utf-8") as out:
                out.write(f"\n--- aia: {name} restarted at {datetime.now(UTC).isoformat()} ---\n")
        svc = spawn(name, argv, url=url, log_dir=self.logs, env=env, cwd=REPO_ROOT, append=restart)
        self.function_services[name] = svc
        self.pgid_history.setdefault(name, []).append(svc.pgid)
        self._write_pgids()  # before anything else can fail: the group must be findable
        return svc

    # --- keeping functions alive ------------------------------------------------

    def _supervise(self) -> None:
        def respawn(name: str) -> Callable[[], Process]:
            return lambda: self._spawn_function(name, restart=True).proc

        initial, cap = self.opts.restart_backoff_s, self.opts.restart_backoff_cap_s
        self.supervisor = Supervisor(
            clock=time.monotonic,
            sweep=self._sweep_group,
            answering=self._answering,
            stopping=self.stop_event.is_set,
            report=_report,
            changed=self._on_change,
            policy=lambda: RestartPolicy(initial_s=initial, cap_s=max(cap, initial)),
        )
        for name in self.functions:
            svc = self.function_services[name]
            self.supervisor.add(name, svc.proc, respawn(name), started_at=svc.started_at)
        self._write_pgids()

    def _sweep_group(self, pgid: int) -> None:
        """Kill what is left of a dead function's group, so nothing holds its port."""
        kill_group(pgid, marker=self.run_id)
        deadline = time.monotonic() + 5
        while group_alive(pgid, self.run_id) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _answering(self, name: str) -> bool:
        host, _, port = self.functions[name].removeprefix("http://").rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=1)
        try:
            conn.request("GET", "/health?probe=live")
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
        return True

    def _on_change(self, child: Child) -> None:
        # While a function is not answering the gateway says so (503) instead of
        # trying its port; Pub/Sub's own retries cover the worker.
        if self.gateway is not None:
            if child.state is State.UP:
                self.gateway.upstreams[child.name] = self.functions[child.name].removeprefix(
                    "http://"
                )
            else:
                self.gateway.upstreams.pop(child.name, None)
        self._write_pgids()

    def _write_pgids(self) -> None:
        """Name every current process group, atomically: tests read it at any moment."""
        children: dict[str, dict[str, Any]] = {}
        for svc in self.emulators:
            children[svc.name] = {"pgid": svc.pgid, "pgids": self.pgid_history[svc.name]}
            children[svc.name].update(state=str(State.UP), restarts=0)
        watched = self.supervisor.children if self.supervisor is not None else {}
        for name, svc in self.function_services.items():
            entry: dict[str, Any] = {"pgid": svc.pgid, "pgids": self.pgid_history[name]}
            child = watched.get(name)
            if child is None:
                entry.update(state=str(State.STARTING), restarts=0)
            else:
                entry.update(
                    state=str(child.state),
                    restarts=child.restarts,
                    last_exit=child.last_exit,
                    last_downtime_s=child.last_downtime_s,
                )
            children[name] = entry
        doc = {"run": self.run_id, "pid": os.getpid(), "children": children}
        tmp = self.pgids_path.with_name(f".{PGIDS_FILE}.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(self.pgids_path)

    def _child_env(self, extra: dict[str, str]) -> dict[str, str]:
        return _child_env({**extra, RUN_MARKER_ENV: self.run_id})

    def _start_scheduler(self, name: str, url: str, every_s: float) -> None:
        """POST to `url` (a function, or a path on it) every `every_s`, as Cloud Scheduler does."""
        sched = logging.getLogger("aia.scheduler")
        address, _, path = url.removeprefix("http://").partition("/")
        host, _, port = address.rpartition(":")

        def tick() -> None:
            while not self.stop_event.wait(every_s):
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                try:
                    conn.request(
                        "POST", f"/{path}", body=b"{}", headers={"Content-Type": "application/json"}
                    )
                    resp = conn.getresponse()
                    sched.info("POST %s -> %s %s", name, resp.status, resp.read()[:500])
                except OSError as exc:
                    sched.warning("POST %s failed: %r", name, exc)
                finally:
                    conn.close()

        threading.Thread(target=tick, name=f"scheduler-{name}", daemon=True).start()

    def _write_dev_env(self) -> None:
        lines = [
            f"# Written by devtools.stack at {datetime.now(UTC).isoformat(timespec='seconds')}"
            f" (pid {os.getpid()}); valid while that stack runs.",
            *(f"export {key}={shlex.quote(value)}" for key, value in self.env.items()),
        ]
        self._dev_env_text = "\n".join(lines) + "\n"
        tmp = self.dev_env_path.with_suffix(".tmp")
        tmp.write_text(self._dev_env_text, encoding="utf-8")
        tmp.replace(self.dev_env_path)

    # --- run and stop ---------------------------------------------------------

    def dead_emulator(self) -> Service | None:
        """An emulator that exited: the one death the stack does not survive."""
        return next((svc for svc in self.emulators if svc.proc.poll() is not None), None)

    def supervise(self) -> None:
        """Restart whatever function died; call it regularly from the run loop."""
        if self.supervisor is not None:
            self.supervisor.tick()

    def stop(self) -> None:
        self.stop_event.set()
        if self.gateway is not None:
            if self._serving:
                self.gateway.shutdown()
            self.gateway.server_close()
        # Signal every group at once (each gunicorn takes ~0.3 s to wind down), then
        # wait for each; Service.stop escalates to SIGKILL after its timeout and sweeps
        # the group, which can outlive its leader (gcloud wraps Java).
        services = self.services
        for svc in services:
            if svc.proc.poll() is None:
                kill_group(svc.pgid, signal.SIGTERM)
                kill_group(svc.pgid, signal.SIGCONT)  # a frozen group acts on it only then
        for svc in reversed(services):
            try:
                svc.stop()
            except (OSError, subprocess.SubprocessError) as exc:  # keep stopping the others
                _warn(f"could not stop {svc.name} (pgid {svc.pgid}): {exc!r}")
        # Only remove dev.env if it is still ours: it points at what just stopped.
        with contextlib.suppress(OSError):
            if self.dev_env_path.read_text(encoding="utf-8") == self._dev_env_text:
                self.dev_env_path.unlink()

    def ready_info(self) -> dict[str, Any]:
        assert self.gateway is not None
        return {
            "base_url": self.gateway.base_url,
            "api_key": self.api_key,
            "env": self.env,
            "state_dir": str(self.opts.state_dir),
            "dev_env": str(self.dev_env_path),
            "logs": str(self.logs),
            "functions": self.functions,
            # Each child leads its own process group: pid == pgid. After a restart
            # only the pgids file is current.
            "pgids": {svc.name: svc.pgid for svc in self.services},
            "pgids_file": str(self.pgids_path),
            "run": self.run_id,
            "pid": os.getpid(),
        }


def _bind_gateway(host: str, port: int) -> GatewayServer:
    try:
        return GatewayServer(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StackError(
                f"port {port} on {host} is already in use (another `make dev`?). "
                "Stop whatever holds it, or pick another port: "
                "python -m devtools.stack --port N"
            ) from exc
        raise


def _cli_available() -> bool:
    return (REPO_ROOT / "shared" / "cli.py").exists()


def _finish_key_creation(proc: subprocess.Popen[str], log_path: Path) -> str:
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise StackError("`shared.cli keys create --tenant dev` hung for 60 s") from exc
    log_path.write_text(err, encoding="utf-8")
    key = out.strip()
    if proc.returncode != 0 or not key or "\n" in key:
        raise StackError(
            f"`shared.cli keys create --tenant dev` failed ({proc.returncode}):\n"
            f"{err.strip() or out.strip()}"
        )
    return key


def _kill_proc_group(proc: subprocess.Popen[Any]) -> None:
    kill_group(proc.pid)
    proc.wait(timeout=5)


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OWNED_ENV}
    env.update(extra)
    # The checkout first (shared/, tasks/), then whatever the user adds (their task modules).
    extra_path = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), extra_path) if p)
    return env


def _attach_log(name: str, path: Path) -> None:
    logger = logging.getLogger(name)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _tail(path: Path | None, lines: int = 25) -> str:
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(cannot read {path})"
    return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def _warn(message: str) -> None:
    print(f"aia: warning: {message}", file=sys.stderr, flush=True)


def _report(message: str) -> None:
    """A supervision event: on stderr for the person, in logs/stack.log for the record."""
    print(f"aia: {message}", file=sys.stderr, flush=True)
    log.warning("%s", message)


def banner(stack: Stack) -> str:
    """What a person sees once the stack is up."""
    info = stack.ready_info()
    url = info["base_url"]
    lines = [
        "",
        f"AIA is running at {url}  (logs: {stack.logs}, Ctrl-C stops everything)",
        f"  environment for other shells: source {stack.dev_env_path}",
    ]
    if stack.api_key:
        body = '{"type": "echo", "payload": {"hello": "world"}}'
        lines += [
            f"  dev API key (tenant dev): {stack.api_key}",
            "",
            "  Try it:",
            f"    KEY={shlex.quote(stack.api_key)}",
            f'    ID=$(curl -s -X POST {url}/tasks -H "Authorization: Bearer $KEY" '
            f"-H 'Content-Type: application/json' -d '{body}' "
            '| sed -E \'s/.*"task_id": *"([^"]+)".*/\\1/\')',
            f'    sleep 1; curl -s {url}/tasks/$ID -H "Authorization: Bearer $KEY"',
            "",
            "  More keys: aia keys create --tenant NAME   (aia keys revoke KEY_ID)",
        ]
    else:
        lines.append("  no dev API key (see the warnings above)")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _signals_set(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


def run(opts: Options) -> int:
    """Start, report readiness, wait for a signal or a dead child, stop. Returns the exit code."""
    stack = Stack(opts)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only set a flag: start-up and the wait loop check it at safe points,
        # so no child can be spawned and then forgotten.
        if stack.stop_event.is_set():
            print("aia: already stopping…", file=sys.stderr, flush=True)
        stack.stop_event.set()

    with _signals_set(on_signal):
        code = 0
        try:
            stack.start()
            # The machine-readable line first, so a person reads the banner last.
            print(READY_PREFIX + json.dumps(stack.ready_info(), sort_keys=True), flush=True)
            print(banner(stack), flush=True)
            while not stack.stop_event.wait(TICK_S):
                dead = stack.dead_emulator()
                if dead is not None:
                    _warn(
                        f"{dead.name} exited with {dead.proc.returncode}; stopping the stack. "
                        f"Last lines of {dead.log_path}:\n{_tail(dead.log_path)}"
                    )
                    code = 1
                    break
                stack.supervise()
        except Stopping:
            pass
        except StackError as exc:
            print(f"aia: {exc}", file=sys.stderr, flush=True)
            code = 2
        finally:
            started = bool(stack.services)
            if started:
                print("aia: stopping…", file=sys.stderr, flush=True)
            stack.stop()
            if started:
                print("aia: stopped", file=sys.stderr, flush=True)
    return code


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m devtools.stack", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="gateway address")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="gateway port; 0 picks a free one"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=REPO_ROOT / ".aia",
        help="key ring, dev.env and logs (default: .aia/)",
    )
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="emulated project id")
    parser.add_argument(
        "--redispatch-every", type=float, default=15.0, help="seconds between redispatch calls"
    )
    parser.add_argument(
        "--tick-every", type=float, default=1.0, help="seconds between schedule_tick calls"
    )
    parser.add_argument(
        "--redispatch-after",
        type=float,
        default=10.0,
        help="AIA_REDISPATCH_AFTER_S given to the functions",
    )
    parser.add_argument(
        "--functions-dir",
        type=Path,
        default=REPO_ROOT / "functions",
        help="where the function folders are (tests of the stack itself use another)",
    )
    parser.add_argument(
        "--restart-backoff",
        type=float,
        default=0.5,
        help="seconds before restarting a crashed function; doubles per crash up to 30 s",
    )
    args = parser.parse_args(argv)
    return Options(
        host=args.host,
        port=args.port,
        state_dir=args.state_dir.resolve(),
        project=args.project,
        redispatch_every_s=args.redispatch_every,
        tick_every_s=args.tick_every,
        redispatch_after_s=args.redispatch_after,
        functions_dir=args.functions_dir.resolve(),
        restart_backoff_s=args.restart_backoff,
    )


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
