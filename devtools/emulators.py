"""Start and stop the official Google emulators, each in its own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from devtools.procs import RUN_MARKER_ENV, kill_group


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http_ok(
    url: str, *, timeout_s: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll `url` until it answers 2xx; fail early if `proc` dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=1) as resp,  # noqa: S310 - loopback only
        ):
            if 200 <= resp.status < 300:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


@dataclass
class Service:
    """A child process started in its own session, stopped by killing its group."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # The stack run's marker in the child's environment (see devtools.procs).
    marker: str | None = None
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pgid(self) -> int:
        """Each service leads its own process group."""
        return self.proc.pid

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
                # A frozen (SIGSTOPped) group only acts on SIGTERM once continued.
                os.killpg(self.proc.pid, signal.SIGCONT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout_s)
        # The group may outlive its leader (gcloud wraps Java): sweep it. Once the
        # leader is reaped its id is free for reuse, hence the marker.
        kill_group(self.proc.pid, marker=self.marker)


def spawn(
    name: str,
    argv: list[str],
    *,
    url: str,
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    append: bool = False,
) -> Service:
    """Start `argv` as the leader of a new process group, output into `<log_dir>/<name>.log`.

    `append` keeps what an earlier run of the same service wrote (a restart after a crash).
    """
    log_path = log_dir / f"{name}.log" if log_dir else None
    out = log_path.open("ab" if append else "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        cwd=cwd,
    )
    if not isinstance(out, int):
        out.close()  # the child holds its own descriptor
    marker = (env if env is not None else os.environ).get(RUN_MARKER_ENV)
    return Service(name=name, proc=proc, url=url, log_path=log_path, marker=marker)


def start_firestore(
    port: int, *, log_dir: Path | None = None, env: dict[str, str] | None = None
) -> Service:
    host = f"127.0.0.1:{port}"
    svc = spawn(
        "firestore-emulator",
        ["gcloud", "emulators", "firestore", "start", f"--host-port={host}", "--quiet"],
        url=f"http://{host}",
        log_dir=log_dir,
        env=env,
    )
    try:
        wait_http_ok(f"http://{host}/", timeout_s=60, proc=svc.proc)
    except BaseException:
        svc.stop()
        raise
    svc.extra["FIRESTORE_EMULATOR_HOST"] = host
    return svc


def start_pubsub(
    port: int, project: str, *, log_dir: Path | None = None, env: dict[str, str] | None = None
) -> Service:
    host = f"127.0.0.1:{port}"
    svc = spawn(
        "pubsub-emulator",
        [
            "gcloud",
            "beta",
            "emulators",
            "pubsub",
            "start",
            f"--host-port={host}",
            f"--project={project}",
            "--quiet",
        ],
        url=f"http://{host}",
        log_dir=log_dir,
        env=env,
    )
    try:
        wait_http_ok(f"http://{host}/", timeout_s=60, proc=svc.proc)
    except BaseException:
        svc.stop()
        raise
    svc.extra["PUBSUB_EMULATOR_HOST"] = host
    return svc


def reset_firestore(host: str, project: str) -> None:
    req = urllib.request.Request(
        f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents",
        method="DELETE",
    )
    with urllib.request.urlopen(req, timeout=30):  # noqa: S310 - a loaded machine is slow to wipe
        pass


def reset_pubsub(host: str) -> None:
    req = urllib.request.Request(f"http://{host}/reset", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=30):  # noqa: S310 - a loaded machine is slow to wipe
        pass


@contextlib.contextmanager
def emulators(project: str, *, log_dir: Path | None = None) -> Iterator[dict[str, str]]:
    """Both emulators on free ports; yields the environment that points at them."""
    fs = start_firestore(free_port(), log_dir=log_dir)
    try:
        ps = start_pubsub(free_port(), project, log_dir=log_dir)
        try:
            yield {"GOOGLE_CLOUD_PROJECT": project, **fs.extra, **ps.extra}
        finally:
            ps.stop()
    finally:
        fs.stop()
