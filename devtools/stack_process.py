"""Run `devtools.stack` as a child process: what end-to-end tests and measurements use."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.procs import group_alive, kill_group
from devtools.stack import READY_PREFIX, REPO_ROOT


@dataclass
class RunningStack:
    """A started stack and what its `AIA_READY` line said."""

    proc: subprocess.Popen[bytes]
    output: Path
    info: dict[str, Any] = field(default_factory=dict)

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

    @property
    def state_dir(self) -> Path:
        return Path(self.info["state_dir"])

    @property
    def pgids(self) -> dict[str, int]:
        return {name: int(pgid) for name, pgid in self.info.get("pgids", {}).items()}

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

        Leftovers are killed here too, so a failing check never leaks processes.
        """
        if self.proc.poll() is None:
            kill_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                kill_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        leftovers = [name for name, pgid in self.pgids.items() if group_alive(pgid)]
        for name in leftovers:
            kill_group(self.pgids[name])
        return leftovers


def start_stack(
    state_dir: Path, *, extra_args: Sequence[str] = (), timeout_s: float = 180.0
) -> RunningStack:
    """Start `python -m devtools.stack --port 0` and wait for its ready line."""
    state_dir.mkdir(parents=True, exist_ok=True)
    output = state_dir / "stack.out"
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
        )
    stack = RunningStack(proc=proc, output=output)
    try:
        stack.info = _await_ready(stack, time.monotonic() + timeout_s)
    except BaseException:
        # Without a ready line there are no pgids to check: the stack stops its own children.
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
