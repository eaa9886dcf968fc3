"""`Later`: one thread runs every delayed callback, in the order they fall due."""

from __future__ import annotations

import threading
import time

from shared.tasks.later import Later


def _wait_all(done: threading.Event, timeout_s: float = 10.0) -> None:
    assert done.wait(timeout_s), "the callbacks did not all run"


def test_callbacks_run_in_the_order_they_fall_due_and_never_early() -> None:
    later = Later()
    ran: list[tuple[str, float]] = []
    done = threading.Event()
    given = time.monotonic()

    def note(name: str) -> None:
        ran.append((name, time.monotonic()))
        if len(ran) == 3:
            done.set()

    later.call(0.3, lambda: note("slow"))
    later.call(0.05, lambda: note("fast"))
    later.call(0.15, lambda: note("middle"))
    _wait_all(done)
    assert [name for name, _ in ran] == ["fast", "middle", "slow"]
    delays = {"fast": 0.05, "middle": 0.15, "slow": 0.3}
    assert all(at - given >= delays[name] for name, at in ran)
    assert later.pending() == 0


def test_a_failing_callback_does_not_stop_the_others() -> None:
    later = Later()
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    later.call(0.0, boom)
    later.call(0.01, done.set)
    _wait_all(done)


def test_many_callbacks_share_one_thread() -> None:
    later = Later()
    threads: set[int] = set()
    left = threading.Semaphore(0)

    def note() -> None:
        threads.add(threading.get_ident())
        left.release()

    for _ in range(50):
        later.call(0.0, note)
    for _ in range(50):
        assert left.acquire(timeout=10)
    assert len(threads) == 1
    assert threading.get_ident() not in threads


def test_only_a_callback_due_first_wakes_the_thread() -> None:
    later = Later()
    woken = [0]
    notify = later._changed.notify

    def counted(n: int = 1) -> None:
        woken[0] += 1
        notify(n)

    later._changed.notify = counted  # type: ignore[method-assign]
    done = threading.Event()
    later.call(0.2, done.set)  # starts the thread
    for _ in range(20):
        later.call(0.3, lambda: None)  # due after it: the sleeping thread need not know
    assert woken[0] == 0
    later.call(0.01, lambda: None)  # due before it: the thread must sleep less
    assert woken[0] == 1
    _wait_all(done)
