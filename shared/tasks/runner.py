"""Running one attempt of a handler in a child process that can be stopped for sure.

Why a process per running attempt, and not a thread: Python cannot stop a
thread. A handler that ignores its deadline would keep running after the lease
was released, so its retry could run beside it, and it would keep consuming the
instance. A child process is killed at the deadline (after a short grace in
which a well-behaved handler sees `ctx.cancelled` and returns), and the lease is
released only once the kill is confirmed, so one task's code never runs in two
attempts at once.

The children come from a `forkserver` that preloads the task modules: a fresh
child costs a few milliseconds, is never forked from a process holding gRPC
threads, and is reused for the next attempt. Each child also stops itself when
its parent goes away (a watchdog pipe reaches EOF) or when its attempt's hard
deadline passes (in case the parent is frozen), so no handler outlives the
lease that allowed it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import context as mp_context
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.connection import Connection
from typing import Any, Protocol

log = logging.getLogger("aia.runner")

# After the deadline a handler gets this long to notice `ctx.cancelled` and return.
STOP_GRACE_S = 1.0
# A child past its attempt's deadline by this much exits on its own.
SELF_STOP_AFTER_S = STOP_GRACE_S + 2.0
_EXIT_ORPHANED = 70
_EXIT_OVERRAN = 71


@dataclass(frozen=True)
class AttemptSpec:
    """Everything a child needs to run one attempt; plain data, so it crosses a pipe."""

    task_type: str
    payload: dict[str, Any]
    task_id: str
    tenant_id: str
    attempt: int
    max_attempts: int
    deadline: float  # wall-clock epoch seconds: children and parent share the clock
    inputs: dict[str, Any] = field(default_factory=dict)
    traceparent: str | None = None  # the attempt's span (shared.tracing)


@dataclass(frozen=True)
class AttemptOutcome:
    """What an attempt produced: a result as JSON text, or an error code and message."""

    result_json: str | None = None
    error_code: str | None = None
    error_message: str = ""
    retryable: bool = True
    events: tuple[tuple[Any, ...], ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.error_code is None

    @property
    def charged(self) -> int | None:
        """Tokens the handler reported with `ctx.charge`, summed; None if it reported none."""
        from shared.tasks.registry import CHARGE_EVENT

        reports = [e[1] for e in self.events if len(e) >= 2 and e[0] == CHARGE_EVENT]
        valid = [n for n in reports if isinstance(n, int) and not isinstance(n, bool) and n >= 0]
        return sum(valid) if valid else None


EventSink = Callable[[tuple[Any, ...]], None]


class AttemptRunner(Protocol):
    def warm(self) -> None: ...
    def close(self) -> None: ...
    def run(
        self,
        spec: AttemptSpec,
        *,
        cancelled: Callable[[], bool] | None = None,
        on_event: EventSink | None = None,
    ) -> AttemptOutcome: ...


# --- the child side ------------------------------------------------------------


def _child_main(conn: Connection, watch: Connection, cancel: Any, modules: tuple[str, ...]) -> None:
    """Loop of one child: receive a spec, run its handler, send the outcome."""
    from shared.tasks.registry import TaskContext, load_registry

    hard_stop = [0.0]

    def watchdog() -> None:
        while True:
            try:
                if watch.poll(0.5):
                    watch.recv_bytes()
            except (EOFError, OSError):
                os._exit(_EXIT_ORPHANED)  # the parent is gone: nobody holds our lease
            if hard_stop[0] and time.time() > hard_stop[0]:
                os._exit(_EXIT_OVERRAN)

    threading.Thread(target=watchdog, name="aia-watchdog", daemon=True).start()
    registry = load_registry(modules)
    while True:
        try:
            spec: AttemptSpec = conn.recv()
        except (EOFError, OSError):
            return
        hard_stop[0] = spec.deadline + SELF_STOP_AFTER_S

        def emit(event: tuple[Any, ...]) -> None:
            conn.send(("event", event))

        context = TaskContext(
            task_id=spec.task_id,
            tenant_id=spec.tenant_id,
            attempt=spec.attempt,
            max_attempts=spec.max_attempts,
            deadline=spec.deadline,
            inputs=spec.inputs,
            traceparent=spec.traceparent,
            cancel_flag=cancel.is_set,
            emit=emit,
        )
        conn.send(("done", _run_one(registry, spec, context)))
        hard_stop[0] = 0.0


def _run_one(registry: Any, spec: AttemptSpec, context: Any) -> AttemptOutcome:
    from shared.errors import AIAError

    task_type = None
    try:
        task_type = registry.get(spec.task_type)
        payload = registry.parse_payload(task_type, spec.payload)
        result = task_type.handler(payload, context)
        result = task_type.dump_result(result)
        return AttemptOutcome(result_json=_result_json(result))
    except AIAError as exc:
        return AttemptOutcome(
            error_code=exc.code, error_message=exc.detail, retryable=exc.retryable
        )
    except Exception as exc:  # noqa: BLE001 - every handler failure is an attempt outcome
        declared = task_type is not None and isinstance(exc, task_type.non_retryable)
        return AttemptOutcome(
            error_code="handler-error",
            error_message=f"{type(exc).__name__}: {exc}",
            # An unexpected exception is transient unless the type declared it deterministic.
            retryable=not declared,
        )


def _result_json(result: Any) -> str:
    from shared.errors import ResultInvalid

    try:
        return json.dumps(result, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise ResultInvalid("handler returned a value nested too deeply to store") from None
    except (TypeError, ValueError) as exc:
        # Retrying would return the same value: the handler has a bug.
        raise ResultInvalid(f"handler returned a value that is not JSON: {exc}") from None


# --- the parent side -----------------------------------------------------------


class _NoMainPopen(popen_forkserver.Popen):
    """Forkserver start without re-running the parent's main module in the child.

    multiprocessing re-imports `__main__` in every child it prepares. Under
    functions-framework that is the server's own entry script (or pytest's):
    slow at best, and the wrong code at worst. A handler child needs only the
    task modules, which the fork server preloaded, so the main-module entries
    are dropped from the preparation data; the rest of `_launch` is CPython's.
    """

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        mp_context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            mp_context.set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        parent_w = os.dup(w)
        self.finalizer = util.Finalize(
            self,
            util.close_fds,  # type: ignore[attr-defined]
            (parent_w, self.sentinel),
        )
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _HandlerProcess(mp_context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:  # noqa: N802 - multiprocessing's own name
        return _NoMainPopen(process_obj)


@dataclass
class _Child:
    process: Any
    conn: Connection
    watch: Connection
    cancel: Any

    def alive(self) -> bool:
        return bool(self.process.is_alive())

    def kill(self) -> None:
        """SIGKILL and reap: when this returns, the handler's code has stopped."""
        with contextlib.suppress(ProcessLookupError, OSError):
            self.process.kill()
        self.process.join()
        self.close()

    def close(self) -> None:
        for conn in (self.conn, self.watch):
            with contextlib.suppress(OSError):
                conn.close()


class ProcessRunner:
    """Runs attempts in reusable child processes; one child per concurrently running attempt."""

    def __init__(self, modules: Sequence[str], *, max_idle: int = 4) -> None:
        self._modules = tuple(modules)
        self._max_idle = max_idle
        self._idle: list[_Child] = []
        self._lock = threading.Lock()
        self._context: Any = None
        self._warming: threading.Thread | None = None

    def _mp(self) -> Any:
        with self._lock:
            if self._context is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(["shared.tasks.runner", *self._modules])
                self._context = context
            return self._context

    def warm(self) -> None:
        """Start the fork server and one child in the background (the first delivery waits less)."""
        with self._lock:
            if self._warming is not None or self._idle:
                return
            self._warming = threading.Thread(target=self._warm, name="aia-runner-warm", daemon=True)
            self._warming.start()

    def _warm(self) -> None:
        try:
            child = self._spawn()
        except Exception:
            log.warning("could not pre-start a handler process", exc_info=True)
            return
        self._checkin(child)

    def _spawn(self) -> _Child:
        context = self._mp()
        parent_conn, child_conn = context.Pipe()
        watch_read, watch_write = context.Pipe(duplex=False)
        cancel = context.Event()
        process = _HandlerProcess(
            target=_child_main,
            args=(child_conn, watch_read, cancel, self._modules),
            name="aia-handler",
            daemon=True,
        )
        process.start()
        child_conn.close()
        watch_read.close()
        return _Child(process, parent_conn, watch_write, cancel)

    def _checkout(self) -> _Child:
        warming = self._warming
        if warming is not None and not self._idle:
            warming.join()
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.alive():
                    return child
                child.close()
        return self._spawn()

    def _checkin(self, child: _Child) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle and child.alive():
                self._idle.append(child)
                return
        child.kill()

    def run(
        self,
        spec: AttemptSpec,
        *,
        cancelled: Callable[[], bool] | None = None,
        on_event: EventSink | None = None,
    ) -> AttemptOutcome:
        child = self._checkout()
        child.cancel.clear()
        events: list[tuple[Any, ...]] = []
        try:
            child.conn.send(spec)
        except OSError:
            child.kill()
            return _crashed("the handler process was gone before the attempt started", events)
        told_to_stop = False  # ctx.cancelled is true in the child
        was_cancelled = False
        kill_at = spec.deadline + STOP_GRACE_S
        while True:
            now = time.time()
            if not was_cancelled and cancelled is not None and cancelled():
                # Cancelled: the handler is told at once and may return early; one that
                # ignores it is still stopped at its deadline, as a timeout would be.
                was_cancelled = True
            if not told_to_stop and (was_cancelled or now >= spec.deadline):
                child.cancel.set()
                told_to_stop = True
            try:
                ready = child.conn.poll(max(0.0, min(kill_at - now, 0.25)))
                message = child.conn.recv() if ready else None
            except (EOFError, OSError):
                child.kill()
                return _crashed("the handler process died during the attempt", events)
            if message is not None:
                kind, body = message
                if kind == "event":
                    events.append(body)
                    if on_event is not None:
                        on_event(body)
                    continue
                self._checkin(child)
                if was_cancelled:
                    return _cancelled(events)
                if now >= spec.deadline:
                    # Returned only after its deadline: the attempt ran out of time,
                    # and its late result is not trusted.
                    return _timed_out(spec, events)
                return _with_events(body, events)
            if time.time() >= kill_at:
                child.kill()
                log.warning(
                    "handler process killed",
                    extra={"task_id": spec.task_id, "attempt": spec.attempt},
                )
                return _cancelled(events) if was_cancelled else _timed_out(spec, events)

    def close(self) -> None:
        """Stop every idle child (tests, and instance shutdown)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.kill()


def _cancelled(events: list[tuple[Any, ...]]) -> AttemptOutcome:
    return AttemptOutcome(
        error_code="cancelled",
        error_message="the task was cancelled while this attempt ran",
        retryable=False,
        events=tuple(events),
    )


def _timed_out(spec: AttemptSpec, events: list[tuple[Any, ...]]) -> AttemptOutcome:
    return AttemptOutcome(
        error_code="timeout",
        error_message=f"attempt {spec.attempt} did not finish before its deadline",
        retryable=True,
        events=tuple(events),
    )


def _crashed(message: str, events: list[tuple[Any, ...]]) -> AttemptOutcome:
    return AttemptOutcome(
        error_code="handler-crashed", error_message=message, retryable=True, events=tuple(events)
    )


def _with_events(outcome: AttemptOutcome, events: list[tuple[Any, ...]]) -> AttemptOutcome:
    if not events:
        return outcome
    return AttemptOutcome(
        result_json=outcome.result_json,
        error_code=outcome.error_code,
        error_message=outcome.error_message,
        retryable=outcome.retryable,
        events=tuple(events),
    )
