"""Run `devtools.stack` as a child process: what end-to-end tests and measurements use."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.procs import RUN_MARKER_ENV, group_alive, kill_group
from devtools.stack import PGIDS_FILE, READY_PREFIX, REPO_ROOT

EMULATORS = ("firestore-emulator", "pubsub-emulator")


@dataclass
class RunningStack:
    """A started stack and what its `AIA_READY` line said.

    Process groups come from `<state_dir>/pgids.json`, which the stack rewrites on
    every start and restart: a restarted function leads a new group.
    """

    proc: subprocess.Popen[bytes]
    output: Path
    state_dir: Path
    # Every child of this stack carries it in its environment (devtools.procs).
    marker: str
    info: dict[str, Any] = field(default_factory=dict)
    frozen_pgids: set[int] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    @property
    def api_key(self) -> str:
        key = self.info.get("api_key")
        if not key:
            raise RuntimeError(f"the stack made no dev API key; its output:\n{self.read_output()}")
        return str(key)

    @property
    def env(self) -> dict[str, str]:
        return dict(self.info["env"])

    # --- process groups ------------------------------------------------------

    def children(self) -> dict[str, dict[str, Any]]:
        """The stack's pgids file: per child its `pgid`, `pgids`, `state`, `restarts`, ..."""
        try:
            text = (self.state_dir / PGIDS_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        doc: dict[str, Any] = json.loads(text)  # replaced atomically: never half-written
        if doc.get("run") != self.marker:
            return {}  # another stack's file (the state dir was reused)
        return dict(doc["children"])

    @property
    def pgids(self) -> dict[str, int]:
        """The current process group of every child (a down function's is its last one)."""
        current = {name: int(entry["pgid"]) for name, entry in self.children().items()}
        return current or {name: int(pgid) for name, pgid in self.info.get("pgids", {}).items()}

    def all_pgids(self) -> dict[str, list[int]]:
        """Every process group each child ever led, oldest first."""
        every: dict[str, list[int]] = {
            name: [int(pgid)] for name, pgid in self.info.get("pgids", {}).items()
        }
        for name, entry in self.children().items():
            for pgid in entry["pgids"]:
                if int(pgid) not in every.setdefault(name, []):
                    every[name].append(int(pgid))
        return every

    def pgid(self, name: str) -> int:
        pgids = self.pgids
        if name not in pgids:
            raise KeyError(f"the stack has no child {name!r}; it has {sorted(pgids)}")
        return pgids[name]

    def restarts(self, name: str) -> int:
        """How many times the stack restarted function `name`."""
        return int(self.children().get(name, {}).get("restarts", 0))

    def state(self, name: str) -> str | None:
        """`up`, `starting` or `down` (exited, restart scheduled); None if unknown."""
        state = self.children().get(name, {}).get("state")
        return None if state is None else str(state)

    def wait_restarted(self, name: str, count: int = 1, timeout_s: float = 60.0) -> None:
        """Wait until `name` was restarted at least `count` times and answers again."""
        deadline = time.monotonic() + timeout_s
        while not (self.restarts(name) >= count and self.state(name) == "up"):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the stack exited with {self.proc.returncode} while waiting for {name}:\n"
                    f"{self.read_output()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name} not restarted {count}x and answering within {timeout_s} s: "
                    f"{self.children().get(name)}"
                )
            time.sleep(0.05)

    def kill_function(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Signal the whole process group of function `name`, as a crash would; returns it."""
        if name in EMULATORS:
            raise ValueError(f"{name} is an emulator: its death stops the stack")
        pgid = self.pgid(name)
        kill_group(pgid, sig, marker=self.marker)
        return pgid

    def freeze(self, name: str) -> int:
        """SIGSTOP the whole group of an emulator or function: it hangs, holding its port."""
        pgid = self.pgid(name)
        kill_group(pgid, signal.SIGSTOP, marker=self.marker)
        self.frozen_pgids.add(pgid)
        return pgid

    def thaw(self, name: str) -> None:
        pgid = self.pgid(name)
        kill_group(pgid, signal.SIGCONT, marker=self.marker)
        self.frozen_pgids.discard(pgid)

    @contextlib.contextmanager
    def frozen(self, name: str) -> Iterator[int]:
        """`name` frozen for the duration of the block, thawed even if the block fails."""
        pgid = self.freeze(name)
        try:
            yield pgid
        finally:
            kill_group(pgid, signal.SIGCONT, marker=self.marker)
            self.frozen_pgids.discard(pgid)

    # --- running it ----------------------------------------------------------

    def read_output(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `python -m shared.cli ARGS` against this stack."""
        env = {**os.environ, **self.env, "PYTHONPATH": str(REPO_ROOT)}
        return subprocess.run(
            [sys.executable, "-m", "shared.cli", *args],
            cwd=self.state_dir,  # not the checkout: its .aia/dev.env may name another stack
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def stop(self, timeout_s: float = 30.0) -> list[str]:
        """SIGTERM the stack, wait, and return the names of children it left running.

        Every process group any child ever led is checked, and leftovers are killed
        here too, so a failing check never leaks processes.
        """
        for pgid in list(self.frozen_pgids):  # a stopped group would ignore SIGTERM
            kill_group(pgid, signal.SIGCONT, marker=self.marker)
        self.frozen_pgids.clear()
        if self.proc.poll() is None:
            kill_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                kill_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        leftovers: list[str] = []
        for name, pgids in self.all_pgids().items():
            for pgid in pgids:
                if group_alive(pgid, self.marker):
                    leftovers.append(name if pgid == pgids[-1] else f"{name} (pgid {pgid})")
                    kill_group(pgid, marker=self.marker)
        return leftovers


def start_stack(
    state_dir: Path, *, extra_args: Sequence[str] = (), timeout_s: float = 180.0
) -> RunningStack:
    """Start `python -m devtools.stack --port 0` and wait for its ready line."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    output = state_dir / "stack.out"
    marker = uuid.uuid4().hex
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devtools.stack",
                "--port",
                "0",
                "--state-dir",
                str(state_dir),
                *extra_args,
            ],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, RUN_MARKER_ENV: marker},
        )
    stack = RunningStack(proc=proc, output=output, state_dir=state_dir, marker=marker)
    try:
        stack.info = _await_ready(stack, time.monotonic() + timeout_s)
    except BaseException:
        # Without a ready line the pgids file still names what was started.
        stack.stop()
        raise
    return stack


def _await_ready(stack: RunningStack, deadline: float) -> dict[str, Any]:
    while True:
        for line in stack.read_output().splitlines():
            if line.startswith(READY_PREFIX):
                info: dict[str, Any] = json.loads(line.removeprefix(READY_PREFIX))
                return info
        if stack.proc.poll() is not None:
            raise RuntimeError(
                f"the stack exited with {stack.proc.returncode} before it was ready:\n"
                f"{stack.read_output()}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"the stack was not ready in time:\n{stack.read_output()}")
        time.sleep(0.2)


@contextlib.contextmanager
def running_stack(state_dir: Path, *, extra_args: Sequence[str] = ()) -> Iterator[RunningStack]:
    """A stack for the duration of the block; raises if it leaves a child behind."""
    stack = start_stack(state_dir, extra_args=extra_args)
    try:
        yield stack
    finally:
        leftovers = stack.stop()
        if leftovers:
            raise RuntimeError(f"the stack left children running: {leftovers}")
