"""Keep the local stack's function processes alive, as Cloud Functions starts a new instance.

A child that exits (by signal or code) is swept (its whole process group, so no
orphaned worker keeps the port), then started again on the same port after a
backoff. Time comes from an injected clock and processes from an injected
`spawn`, so the policy is tested without real processes or real time.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Process(Protocol):
    """What the supervisor needs of a child (`subprocess.Popen` has it)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...


@dataclass
class RestartPolicy:
    """Delays before restarting: `initial_s` doubling up to `cap_s`, reset by a stable run.

    A process that stayed up `stable_s` before exiting starts a new streak, so one
    crash a day is always restarted quickly while a crash loop backs off.
    """

    initial_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0
    stable_s: float = 30.0
    streak: int = 0  # restarts since the last stable run

    def delay(self, started_at: float, exited_at: float) -> float:
        """The wait before the next start of a process that ran from `started_at` to `exited_at`."""
        if exited_at - started_at >= self.stable_s:
            self.streak = 0
        delay = min(self.cap_s, self.initial_s * self.factor**self.streak)
        self.streak += 1
        return delay


class State(StrEnum):
    STARTING = "starting"  # spawned, not answering yet
    UP = "up"
    DOWN = "down"  # exited; a restart is scheduled


def describe_exit(code: int) -> str:
    """`SIGKILL` for a negative return code, `code 3` otherwise."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@dataclass
class Child:
    """One supervised function: its current process and its restart history."""

    name: str
    spawn: Callable[[], Process]
    proc: Process | None
    started_at: float
    policy: RestartPolicy
    state: State = State.UP
    restarts: int = 0
    last_exit: str | None = None
    exited_at: float | None = None
    restart_at: float | None = None
    last_downtime_s: float | None = None  # exit to answering again, for the latest restart


class Supervisor:
    """Call `tick()` regularly; it restarts what died and reports every change."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        sweep: Callable[[int], None],
        answering: Callable[[str], bool],
        stopping: Callable[[], bool],
        report: Callable[[str], None],
        changed: Callable[[Child], None],
        policy: Callable[[], RestartPolicy] = RestartPolicy,
    ) -> None:
        self._clock = clock
        self._sweep = sweep  # kill what is left of a dead child's group
        self._answering = answering
        self._stopping = stopping
        self._report = report
        self._changed = changed
        self._policy = policy
        self.children: dict[str, Child] = {}

    def add(
        self, name: str, proc: Process, spawn: Callable[[], Process], *, started_at: float
    ) -> Child:
        """Watch `proc` (already answering); `spawn` starts a replacement on the same port."""
        child = Child(
            name=name, spawn=spawn, proc=proc, started_at=started_at, policy=self._policy()
        )
        self.children[name] = child
        return child

    def tick(self) -> None:
        for child in self.children.values():
            if self._stopping():
                return
            if child.state is State.DOWN:
                assert child.restart_at is not None
                if self._clock() >= child.restart_at:
                    self._restart(child)
                continue
            assert child.proc is not None
            code = child.proc.poll()
            if code is not None:
                self._exited(child, code)
            elif child.state is State.STARTING and self._answering(child.name):
                self._up(child)

    def _exited(self, child: Child, code: int) -> None:
        assert child.proc is not None
        now = self._clock()
        self._sweep(child.proc.pid)
        delay = child.policy.delay(child.started_at, now)
        was = child.state
        child.proc = None
        child.state = State.DOWN
        child.last_exit = describe_exit(code)
        child.restart_at = now + delay
        if was is State.UP:  # a crash loop keeps the time of the first exit
            child.exited_at = now
        self._report(
            f"{child.name} exited ({child.last_exit}) after {now - child.started_at:.1f} s; "
            f"restart #{child.restarts + 1} (attempt {child.policy.streak}) in {delay:g} s"
        )
        self._changed(child)

    def _restart(self, child: Child) -> None:
        try:
            proc = child.spawn()
        except OSError as exc:  # e.g. out of file descriptors: back off and try again
            now = self._clock()
            delay = child.policy.delay(now, now)
            child.restart_at = now + delay
            self._report(f"{child.name} could not be started ({exc!r}); next try in {delay:g} s")
            return
        child.proc = proc
        child.started_at = self._clock()
        child.state = State.STARTING
        child.restarts += 1
        child.restart_at = None
        self._report(f"{child.name} restarted (restart #{child.restarts}, pgid {proc.pid})")
        self._changed(child)

    def _up(self, child: Child) -> None:
        child.state = State.UP
        if child.exited_at is not None:
            child.last_downtime_s = self._clock() - child.exited_at
        self._report(f"{child.name} is answering again ({child.last_downtime_s or 0:.2f} s down)")
        self._changed(child)
