"""The local stack's restart policy and supervisor, on a fake clock and fake processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools.procs import RUN_MARKER_ENV, group_alive, group_members, kill_group
from devtools.stack_process import RunningStack
from devtools.supervisor import Child, RestartPolicy, State, Supervisor, describe_exit

# --- the backoff policy ---------------------------------------------------------------


def test_delays_double_from_half_a_second_up_to_the_cap() -> None:
    policy = RestartPolicy()
    now = 100.0
    delays = []
    for _ in range(9):
        delays.append(policy.delay(started_at=now, exited_at=now + 1))
        now += 2
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_a_stable_run_resets_the_backoff() -> None:
    policy = RestartPolicy(stable_s=30)
    for _ in range(4):
        policy.delay(started_at=0, exited_at=1)
    assert policy.delay(started_at=10, exited_at=10 + 29.9) == 8  # not stable yet
    assert policy.delay(started_at=50, exited_at=50 + 30) == 0.5
    assert policy.delay(started_at=81, exited_at=82) == 1


def test_the_cap_and_the_first_delay_are_settings() -> None:
    policy = RestartPolicy(initial_s=3, cap_s=10)
    assert [policy.delay(0, 1) for _ in range(4)] == [3, 6, 10, 10]


@pytest.mark.parametrize(
    ("code", "text"), [(-9, "SIGKILL"), (-15, "SIGTERM"), (3, "code 3"), (0, "code 0")]
)
def test_exits_are_described_by_signal_or_code(code: int, text: str) -> None:
    assert describe_exit(code) == text


# --- the supervisor -----------------------------------------------------------------


@dataclass
class FakeProcess:
    pid: int
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@dataclass
class World:
    """Time, processes and everything the supervisor said, all under the test's control."""

    now: float = 1000.0
    next_pid: int = 500
    spawned: list[FakeProcess] = field(default_factory=list)
    swept: list[int] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    states: list[tuple[str, State]] = field(default_factory=list)
    answering: set[str] = field(default_factory=set)
    stopping: bool = False
    spawn_error: OSError | None = None

    def spawn(self) -> FakeProcess:
        if self.spawn_error is not None:
            raise self.spawn_error
        self.next_pid += 1
        proc = FakeProcess(self.next_pid)
        self.spawned.append(proc)
        return proc

    def supervisor(self) -> Supervisor:
        def changed(child: Child) -> None:
            self.states.append((child.name, child.state))

        return Supervisor(
            clock=lambda: self.now,
            sweep=self.swept.append,
            answering=lambda name: name in self.answering,
            stopping=lambda: self.stopping,
            report=self.reports.append,
            changed=changed,
        )


@pytest.fixture
def world() -> World:
    return World()


def _state(sup: Supervisor, name: str = "process_task") -> State:
    return sup.children[name].state


def _due(sup: Supervisor, name: str) -> float:
    restart_at = sup.children[name].restart_at
    assert restart_at is not None, f"{name} has no restart scheduled"
    return restart_at


def _watched(world: World, name: str = "process_task") -> tuple[Supervisor, FakeProcess]:
    sup = world.supervisor()
    first = FakeProcess(pid=100)
    sup.add(name, first, world.spawn, started_at=world.now - 60)
    world.answering.add(name)
    return sup, first


def test_a_killed_function_is_swept_then_restarted_after_the_delay(world: World) -> None:
    sup, first = _watched(world)
    sup.tick()
    assert world.spawned == []
    assert world.states == []

    first.returncode = -signal.SIGKILL
    world.answering.clear()
    sup.tick()
    child = sup.children["process_task"]
    assert _state(sup) is State.DOWN
    assert world.swept == [100]  # orphans of the dead group must not keep the port
    assert world.reports[-1] == (
        "process_task exited (SIGKILL) after 60.0 s; restart #1 (attempt 1) in 0.5 s"
    )

    world.now += 0.49
    sup.tick()
    assert world.spawned == []

    world.now += 0.01
    sup.tick()
    assert [p.pid for p in world.spawned] == [501]
    assert _state(sup) is State.STARTING
    assert child.restarts == 1
    assert "restart #1" in world.reports[-1]
    assert "pgid 501" in world.reports[-1]

    sup.tick()  # not answering yet
    assert _state(sup) is State.STARTING
    world.now += 0.4
    world.answering.add("process_task")
    sup.tick()
    assert _state(sup) is State.UP
    assert child.last_downtime_s == pytest.approx(0.9)
    assert world.states == [
        ("process_task", State.DOWN),
        ("process_task", State.STARTING),
        ("process_task", State.UP),
    ]


def test_a_crash_loop_backs_off_and_counts_downtime_from_the_first_exit(world: World) -> None:
    sup, first = _watched(world)
    first.returncode = 3
    sup.tick()
    assert "(code 3)" in world.reports[-1]
    exited_at = world.now
    delays = []
    for _ in range(4):
        delays.append(_due(sup, "process_task") - world.now)
        world.now = _due(sup, "process_task")
        sup.tick()  # restarted
        world.now += 0.2
        world.spawned[-1].returncode = 1  # dies while starting
        sup.tick()
    assert delays == [0.5, 1, 2, 4]
    assert sup.children["process_task"].restarts == 4
    assert "attempt 5" in world.reports[-1]

    world.now = _due(sup, "process_task")
    sup.tick()
    world.now += 1
    world.answering.add("process_task")
    sup.tick()
    child = sup.children["process_task"]
    assert _state(sup) is State.UP
    assert child.last_downtime_s == pytest.approx(world.now - exited_at)


def test_each_function_has_its_own_backoff(world: World) -> None:
    sup = world.supervisor()
    procs = {name: FakeProcess(pid) for name, pid in (("submit_task", 10), ("health", 11))}
    for name, proc in procs.items():
        sup.add(name, proc, world.spawn, started_at=world.now)
    for _ in range(3):  # submit_task crashes three times
        procs["submit_task"].returncode = 1
        sup.tick()
        world.now = _due(sup, "submit_task")
        sup.tick()
        procs["submit_task"] = world.spawned[-1]
    procs["health"].returncode = -signal.SIGSEGV
    sup.tick()
    assert world.reports[-1].startswith("health exited (SIGSEGV)")
    assert world.reports[-1].endswith("in 0.5 s")


def test_nothing_is_spawned_once_the_stack_is_stopping(world: World) -> None:
    sup, first = _watched(world)
    first.returncode = -signal.SIGKILL
    sup.tick()
    world.stopping = True
    world.now += 60
    sup.tick()
    assert world.spawned == []
    assert _state(sup) is State.DOWN


def test_a_failed_spawn_is_tried_again_later(world: World) -> None:
    sup, first = _watched(world)
    first.returncode = 1
    sup.tick()
    world.now += 0.5
    world.spawn_error = OSError(24, "Too many open files")
    sup.tick()
    child = sup.children["process_task"]
    assert _state(sup) is State.DOWN
    assert child.restarts == 0
    assert "could not be started" in world.reports[-1]
    assert child.restart_at == world.now + 1

    world.spawn_error = None
    world.now += 1
    sup.tick()
    assert _state(sup) is State.STARTING
    assert child.restarts == 1


# --- finding the stack's process groups ----------------------------------------------


def _sleeper(marker: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        start_new_session=True,
        env={**os.environ, RUN_MARKER_ENV: marker},
    )


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_group_is_only_signalled_if_it_carries_the_run_marker() -> None:
    ours = uuid.uuid4().hex
    proc = _sleeper(ours)
    try:
        assert group_members(proc.pid, ours) == [proc.pid]
        assert group_members(proc.pid, "another-run") == []
        assert group_alive(proc.pid, ours)
        assert not group_alive(proc.pid, "another-run")

        kill_group(proc.pid, marker="another-run")  # a reused id: left alone
        assert proc.poll() is None
        kill_group(proc.pid, marker=ours)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        kill_group(proc.pid)
        proc.wait(timeout=10)


def _running_stack(tmp_path: Path, marker: str) -> RunningStack:
    # RunningStack only reads the file here; its process is this test's own.
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=10)
    return RunningStack(
        proc=proc,
        output=tmp_path / "stack.out",
        state_dir=tmp_path,
        marker=marker,
        info={"pgids": {"process_task": 10, "pubsub-emulator": 11}},
    )


def _write_pgids(tmp_path: Path, run: str, children: dict[str, object]) -> None:
    doc = {"run": run, "pid": 1, "children": children}
    (tmp_path / "pgids.json").write_text(json.dumps(doc), encoding="utf-8")


def test_running_stack_reads_current_groups_and_restarts_from_the_pgids_file(
    tmp_path: Path,
) -> None:
    stack = _running_stack(tmp_path, "run-1")
    assert stack.pgids == {"process_task": 10, "pubsub-emulator": 11}  # no file yet
    _write_pgids(
        tmp_path,
        "run-1",
        {
            "process_task": {"pgid": 30, "pgids": [10, 20, 30], "restarts": 2, "state": "up"},
            "pubsub-emulator": {"pgid": 11, "pgids": [11], "restarts": 0, "state": "up"},
        },
    )
    assert stack.pgids == {"process_task": 30, "pubsub-emulator": 11}
    assert stack.all_pgids() == {"process_task": [10, 20, 30], "pubsub-emulator": [11]}
    assert stack.restarts("process_task") == 2
    assert stack.state("process_task") == "up"
    with pytest.raises(KeyError, match="health"):
        stack.pgid("health")
    with pytest.raises(ValueError, match="emulator"):
        stack.kill_function("pubsub-emulator")


def test_running_stack_ignores_another_runs_pgids_file(tmp_path: Path) -> None:
    stack = _running_stack(tmp_path, "run-1")
    _write_pgids(
        tmp_path,
        "run-0",
        {"process_task": {"pgid": 99, "pgids": [99], "restarts": 5, "state": "up"}},
    )
    assert stack.pgids == {"process_task": 10, "pubsub-emulator": 11}
    assert stack.restarts("process_task") == 0
