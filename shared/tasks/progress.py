"""Progress a handler reports (`ctx.progress`), stored at most once a second per task.

A handler may report thousands of times a second; Firestore sustains about
one write per second per document. The writer keeps the latest report and
stores it when a second has passed since the previous write (a timer covers
the last report of a burst), conditioned on the attempt's lease, so a lost
lease stops the writes. Within an attempt the fraction never goes back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from shared.limits import json_depth

log = logging.getLogger("aia.progress")

MIN_INTERVAL_S = 1.0
MAX_METADATA_BYTES = 4096


class ProgressStore(Protocol):
    def record_progress(self, lease: Any, progress: dict[str, Any]) -> bool: ...


class ProgressWriter:
    """Coalesces one attempt's progress events into at most one write per second."""

    def __init__(
        self,
        store: ProgressStore,
        lease: Any,
        *,
        interval_s: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._lease = lease
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._last_write = float("-inf")
        self._fraction = 0.0
        self._timer: threading.Timer | None = None
        self._closed = False
        self._lost = False
        self.writes = 0

    def offer(self, event: tuple[Any, ...]) -> None:
        """An event from the handler's process; progress ones are kept, others ignored."""
        if not event or event[0] != "progress":
            return
        _, fraction, message, metadata = event
        report = _valid(fraction, message, metadata)
        if report is None:
            return
        with self._lock:
            if self._closed or self._lost:
                return
            self._fraction = max(self._fraction, report["fraction"])
            report["fraction"] = self._fraction
            self._pending = report
            due = self._last_write + self._interval - self._clock()
            if due > 0:
                if self._timer is None:
                    self._timer = threading.Timer(due, self._flush_from_timer)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self._flush()

    def _flush_from_timer(self) -> None:
        with self._lock:
            self._timer = None
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            report, self._pending = self._pending, None
            if report is None or self._lost:
                return
            self._last_write = self._clock()
        report["updated_at"] = datetime.now(UTC).isoformat()
        try:
            stored = self._store.record_progress(self._lease, report)
        except Exception:  # progress is advisory: a failed write never fails the attempt
            log.warning("progress write failed", exc_info=True)
            return
        with self._lock:
            self.writes += 1
            if not stored:
                self._lost = True

    def close(self) -> None:
        """Store the last report still waiting (if any) and stop."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._flush()


def _valid(fraction: Any, message: Any, metadata: Any) -> dict[str, Any] | None:
    """The report as stored, or None (logged) when the handler sent something unusable."""
    try:
        value = float(fraction)
        meta = dict(metadata or {})
        encoded = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        log.warning("progress report ignored", extra={"reason": str(exc)})
        return None
    if not 0.0 <= value <= 1.0 or len(encoded) > MAX_METADATA_BYTES or json_depth(meta) > 8:
        log.warning("progress report ignored", extra={"reason": "out of range or too large"})
        return None
    text = None if message is None else str(message)
    return {"fraction": value, "message": text, "metadata": meta}
