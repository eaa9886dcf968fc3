"""Callbacks due after a delay, run by one thread per instance.

A timer thread per attempt (to start its cancellation listener if it lasts)
cost a thread start on every delivery, most of which end before it fires.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Later:
    """Runs each callback once, `delay_s` after it was given, in the order they fall due.

    A callback that no longer applies checks that itself when it runs: there is
    no cancelling, so giving one costs a heap push and nothing more.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def call(self, delay_s: float, callback: Callable[[], None]) -> None:
        with self._changed:
            entry = (self._clock() + delay_s, next(self._order), callback)
            heapq.heappush(self._due, entry)
            # Not alive after a fork too: the thread stayed with the parent.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="aia-later", daemon=True)
                self._thread.start()
            elif self._due[0] is entry:
                # Due before what the thread sleeps towards. One due later (every
                # delivery's, all with the same delay) waits its turn without a wake-up.
                self._changed.notify()

    def pending(self) -> int:
        with self._changed:
            return len(self._due)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due:
                    self._changed.wait()
                wait_s = self._due[0][0] - self._clock()
                if wait_s > 0:
                    self._changed.wait(wait_s)
                    continue
                _, _, callback = heapq.heappop(self._due)
            try:
                callback()
            except Exception:  # one failing callback must not stop the others
                log.warning("a delayed callback failed", exc_info=True)


# The instance's one: every repository of the process shares its thread.
LATER = Later()
