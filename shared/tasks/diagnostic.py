"""Diagnostic task types: they prove retries, dead letters, deadlines and concurrency.

Refused at submit when `AIA_DIAGNOSTIC_TASKS=false` (the default in staging and
prod). `probe` records which processes run it at once in a directory of its
own (`AIA_DIAGNOSTIC_DIR`), so a test can observe overlap directly: two
attempts of one task running together, or more tasks than a limit allows.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from shared.deferred import DeferredModel
from shared.errors import NonRetryable, RetryableError
from shared.tasks.registry import TaskContext, task_type


class FailPayload(DeferredModel):
    model_config = ConfigDict(extra="forbid")

    times: int = Field(default=1, ge=0, le=100)
    retryable: bool = True


@task_type("fail", FailPayload, diagnostic=True)
def fail(payload: FailPayload, ctx: TaskContext) -> dict[str, Any]:
    """Fails the first `times` attempts, then succeeds: proves retries and dead-lettering."""
    if ctx.attempt <= payload.times:
        message = f"diagnostic failure on attempt {ctx.attempt} of {payload.times}"
        if payload.retryable:
            raise RetryableError(message)
        raise NonRetryable(message)
    return {"succeeded_on_attempt": ctx.attempt}


class ProbePayload(DeferredModel):
    model_config = ConfigDict(extra="forbid")

    marker: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    seconds: float = Field(default=0.0, ge=0, le=600)
    # False: ignore the deadline and cancellation, as a badly behaved handler would.
    honour_cancel: bool = True
    # Fail (retryably) the first `fail_times` attempts after holding: proves overlap on retry.
    fail_times: int = Field(default=0, ge=0, le=10)
    # Report progress this many times, spread over `seconds` (proves coalescing).
    progress_reports: int = Field(default=0, ge=0, le=100_000)
    # Attempts up to this one hold until `release_probe(marker)` (or the deadline):
    # a barrier a test controls. Later attempts run `seconds` only.
    hold_attempts: int = Field(default=0, ge=0, le=10)


def probe_dir(marker: str, base: Path | None = None) -> Path:
    """Where probes of `marker` record; `base` overrides the configured directory."""
    if base is None:
        from shared.config import get_settings

        base = get_settings().diagnostic_dir or Path(tempfile.gettempdir()) / "aia-diagnostic"
    path = base / marker
    path.mkdir(parents=True, exist_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child not yet reaped is a zombie: it runs no code.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        return state != "Z"
    return True


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def release_probe(marker: str, base: Path | None = None) -> None:
    """Let every holding probe of `marker` finish."""
    (probe_dir(marker, base) / "release").touch()


def read_probe(marker: str, base: Path | None = None) -> dict[str, Any]:
    """What a probe recorded: attempts (in order), overlaps seen, the highest concurrency."""
    directory = probe_dir(marker, base)
    with _locked(directory):
        lines = (
            (directory / "events.jsonl").read_text().splitlines()
            if (directory / "events.jsonl").exists()
            else []
        )
    events = [json.loads(line) for line in lines]
    starts = [e for e in events if e["event"] == "start"]
    return {
        "attempts": [e["attempt"] for e in starts],
        "starts": [(e["task_id"], e["attempt"], e["pid"]) for e in starts],
        # Another attempt of the same task still running when this one started.
        "overlaps": [
            e for e in starts if any(b["task_id"] == e["task_id"] for b in e["running_beside"])
        ],
        "max_concurrency": max((len(e["running_beside"]) + 1 for e in starts), default=0),
    }


@task_type("probe", ProbePayload, diagnostic=True)
def probe(payload: ProbePayload, ctx: TaskContext) -> dict[str, Any]:
    directory = probe_dir(payload.marker)
    me = os.getpid()
    with _locked(directory):
        beside = [
            {"pid": int(p.name), "task_id": p.read_text()}
            for p in directory.iterdir()
            if p.name.isdigit() and int(p.name) != me and _alive(int(p.name))
        ]
        (directory / str(me)).write_text(ctx.task_id)
        event = {"event": "start", "attempt": ctx.attempt, "task_id": ctx.task_id, "pid": me}
        with (directory / "events.jsonl").open("a") as log:
            log.write(json.dumps({**event, "running_beside": beside}) + "\n")
    hold = ctx.attempt <= payload.hold_attempts
    try:
        begun = time.monotonic()
        until = begun + payload.seconds
        reported = 0
        while (left := until - time.monotonic()) > 0 or hold:
            if reported < payload.progress_reports and payload.seconds > 0:
                due = int(payload.progress_reports * (time.monotonic() - begun) / payload.seconds)
                for n in range(reported, min(due, payload.progress_reports)):
                    ctx.progress((n + 1) / payload.progress_reports, f"step {n + 1}", step=n + 1)
                reported = max(reported, min(due, payload.progress_reports))
            if payload.honour_cancel and ctx.cancelled:
                break
            if hold and (directory / "release").exists():
                break
            time.sleep(min(max(left, 0.001), 0.05 if not payload.progress_reports else 0.001))
        if not ctx.cancelled:
            for n in range(reported, payload.progress_reports):
                ctx.progress((n + 1) / payload.progress_reports, f"step {n + 1}", step=n + 1)
    finally:
        with _locked(directory), contextlib.suppress(FileNotFoundError):
            (directory / str(me)).unlink()
    if ctx.attempt <= payload.fail_times:
        raise RetryableError(f"probe fails attempt {ctx.attempt} of {payload.fail_times}")
    return {"pid": me, "attempt": ctx.attempt, "concurrent": len(beside) + 1}


class FanPayload(DeferredModel):
    model_config = ConfigDict(extra="forbid")

    children: int = Field(ge=1, le=10_000)
    join: str = Field(default="all", pattern="^(all|all_settled|any)$")
    # Children that hold (a probe with this marker) until released: proves waiting and cancel.
    hold_marker: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")


@task_type("fan", FanPayload, diagnostic=True)
def fan(payload: FanPayload, ctx: TaskContext) -> Any:
    """Fans out `children` echo tasks (or holding probes), then totals them: proves fan-in."""
    if payload.hold_marker is not None:
        children = [
            ("probe", {"marker": payload.hold_marker, "hold_attempts": 1})
            for _ in range(payload.children)
        ]
    else:
        children = [("echo", {"i": i}) for i in range(payload.children)]
    return ctx.fan_out(children, then=("fan.total", {}), join=payload.join)


class TotalPayload(DeferredModel):
    model_config = ConfigDict(extra="forbid")


@task_type("fan.total", TotalPayload, diagnostic=True)
def fan_total(payload: TotalPayload, ctx: TaskContext) -> dict[str, Any]:
    children = ctx.inputs.get("children", [])
    succeeded = [c for c in children if c["status"] == "succeeded"]
    return {
        "children": len(children),
        "succeeded": len(succeeded),
        "total": sum(c["result"].get("i", 0) for c in succeeded),
    }


class InputsPayload(DeferredModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=63)


@task_type("inputs", InputsPayload, diagnostic=True)
def inputs(payload: InputsPayload, ctx: TaskContext) -> dict[str, Any]:
    """Returns what it was given to read: proves a workflow node's `ctx.inputs` by node name."""
    return {"name": payload.name, "inputs": ctx.inputs}
