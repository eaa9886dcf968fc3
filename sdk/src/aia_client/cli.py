"""`aia submit|status|list|wait|dlq`: the task service from a terminal (also `aia-client`).

Exit codes: 0 success, 1 the task failed or was cancelled, 2 usage error, 3 service error
(an error answer, or the service unreachable), 4 gave up waiting (the task is still going).
Against the local stack no flags are needed: without AIA_BASE_URL the settings come from
the nearest `.aia/dev.env` (the file `make dev` writes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aia_client._core import API_KEY_ENV, BASE_URL_ENV, ConfigurationError
from aia_client.client import Client
from aia_client.errors import AIAError, APIError, WaitTimeout
from aia_client.models import Task, TaskStatus

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table

# What `aia` (shared/cli.py) hands over to this module.
COMMANDS = ("submit", "status", "list", "wait", "usage", "dlq")

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_SERVICE = 3
EXIT_WAIT_TIMEOUT = 4

DEV_ENV = Path(".aia") / "dev.env"
PIPE_WIDTH = 512
STATUS_STYLES: dict[str, str] = {
    TaskStatus.QUEUED: "yellow",
    TaskStatus.RUNNING: "cyan",
    TaskStatus.SUCCEEDED: "green",
    TaskStatus.FAILED: "red",
    TaskStatus.CANCELLED: "magenta",
}

ClientFactory = Callable[[str, str], Client]


class UsageError(Exception):
    """The command line itself is wrong or incomplete (exit 2)."""


@dataclass
class Context:
    client: Client
    args: argparse.Namespace
    out: Console
    err: Console

    @property
    def as_json(self) -> bool:
        return bool(self.args.json)


# --- settings ------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """`NAME=value` and `export NAME=value` lines, shell-quoted, as `make dev` writes them."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            words = words[1:]
        if len(words) == 1 and "=" in words[0]:
            name, _, value = words[0].partition("=")
            values[name] = value
    return values


def dev_env_files(start: Path) -> list[Path]:
    """`.aia/dev.env` in `start` and each parent: the checkout is found from any subfolder."""
    return [folder / DEV_ENV for folder in (start, *start.parents)]


def resolve_settings(
    base_url: str | None,
    api_key: str | None,
    environ: Mapping[str, str],
    candidates: Iterable[Path],
) -> tuple[str, str]:
    """Flags, then the environment, then the first dev.env found.

    The dev key is only taken for the dev stack's own URL, so a key for the local
    stack is never sent to a service named elsewhere.
    """
    base_url = base_url or environ.get(BASE_URL_ENV) or None
    api_key = api_key or environ.get(API_KEY_ENV) or None
    if base_url is None or api_key is None:
        found = next((read_env_file(p) for p in candidates if p.is_file()), {})
        dev_url = found.get(BASE_URL_ENV, "").rstrip("/")
        if base_url is None and dev_url:
            base_url = dev_url
        if api_key is None and dev_url and dev_url == (base_url or "").rstrip("/"):
            api_key = found.get(API_KEY_ENV) or None
    if base_url is None:
        raise UsageError(
            f"no service URL: pass --base-url, set {BASE_URL_ENV}, or start the local "
            "stack (make dev), which writes .aia/dev.env"
        )
    if api_key is None:
        raise UsageError(f"no API key: pass --api-key or set {API_KEY_ENV}")
    return base_url, api_key


def read_payload(text: str) -> dict[str, Any]:
    """`--payload`: inline JSON, `@file`, or `@-` for standard input; must be an object."""
    source = "--payload"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read payload file {source}: {exc.strerror}") from exc
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise UsageError(f"{source} must be a JSON object, got {type(payload).__name__}")
    return payload


# --- output --------------------------------------------------------------------------


def write_json(value: Any) -> None:
    # Plain text on purpose: no colour or markup ever reaches a script's stdout.
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _status(task: Task) -> str:
    from rich.markup import escape

    style = STATUS_STYLES.get(task.status)
    return f"[{style}]{task.status}[/]" if style else escape(task.status)


def _attempts(task: Task) -> str:
    return f"{task.attempts}/{task.max_attempts}" if task.max_attempts else str(task.attempts)


def _percent(task: Task) -> str | None:
    if task.progress is None or task.progress.fraction is None:
        return None
    return f"{min(1.0, max(0.0, task.progress.fraction)):.0%}"


def task_table(tasks: Iterable[Task], *, errors: bool = False) -> Table:
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    # Ids are what people copy: never wrapped or cut.
    table.add_column("TASK ID", no_wrap=True, min_width=32)
    table.add_column("TYPE", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("ATTEMPTS", justify="right", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    if errors:
        table.add_column("ERROR", overflow="fold")
    else:
        table.add_column("FINISHED", no_wrap=True)
    for task in tasks:
        if errors:
            last = escape(f"{task.error.code}: {task.error.message}") if task.error else "-"
        else:
            last = _when(task.finished_at)
        table.add_row(
            escape(task.task_id),
            escape(task.type or "-"),
            _status(task),
            _attempts(task),
            _when(task.created_at),
            last,
        )
    return table


# A trace console's page for one trace, "{trace_id}" replaced: the same setting the
# service's dashboard reads, e.g. Cloud Trace's
# https://console.cloud.google.com/traces/list?project=P&tid={trace_id}
TRACE_URL_ENV = "AIA_TRACE_CONSOLE_URL"


def trace_link(trace_id: str | None) -> str | None:
    """The trace console's page of `trace_id`, when a console URL is configured."""
    template = os.environ.get(TRACE_URL_ENV, "")
    if not trace_id or "{trace_id}" not in template:
        return None
    return template.replace("{trace_id}", trace_id)


def task_detail(task: Task) -> Table:
    from rich.markup import escape
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("task", escape(task.task_id))
    grid.add_row("type", escape(task.type or "-"))
    grid.add_row("status", _status(task))
    grid.add_row("attempts", _attempts(task))
    grid.add_row("created", _when(task.created_at))
    grid.add_row("started", _when(task.started_at))
    grid.add_row("finished", _when(task.finished_at))
    if task.progress is not None:
        words = [w for w in (_percent(task), task.progress.message) if w]
        grid.add_row("progress", escape(" ".join(words) or "-"))
    for name in ("parent_id", "workflow_id", "trace_id", "priority", "dispatch"):
        if (value := getattr(task, name)) is not None:
            grid.add_row(name.replace("_", " "), escape(str(value)))
    if (link := trace_link(task.trace_id)) is not None:
        grid.add_row("trace", escape(link))
    if task.blocked_by:
        grid.add_row("blocked by", escape(", ".join(task.blocked_by)))
    if task.children:
        grid.add_row("children", str(len(task.children)))
    if task.error is not None:
        grid.add_row("error", f"[red]{escape(task.error.code)}[/]: {escape(task.error.message)}")
    if task.succeeded:
        result = json.dumps(task.result, ensure_ascii=False)
        if len(result) > 80:
            result = json.dumps(task.result, indent=2, ensure_ascii=False)
        grid.add_row("result", escape(result))
    return grid


class WaitDisplay:
    """The live line under `aia wait`: status, attempt, elapsed, and a bar once there is
    progress. Rendered on each refresh, so elapsed time moves between polls."""

    def __init__(self, task_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.task_id = task_id
        self.task: Task | None = None
        self._clock = clock
        self._start = clock()

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def summary(self) -> str:
        task = self.task
        if task is None:
            return f"task {self.task_id}: asking … {self.elapsed:.1f}s"
        parts = [f"task {task.task_id}: {_status(task)}", f"attempt {_attempts(task)}"]
        if percent := _percent(task):
            parts.append(percent)
        parts.append(f"{self.elapsed:.1f}s")
        return " · ".join(parts)

    def __rich__(self) -> RenderableType:
        from rich.console import Group
        from rich.markup import escape
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        spinner = Spinner("dots", text=Text.from_markup(self.summary()))
        progress = self.task.progress if self.task else None
        if progress is None or progress.fraction is None:
            return spinner
        row = Table.grid(padding=(0, 1))
        row.add_row(
            ProgressBar(total=1.0, completed=min(1.0, max(0.0, progress.fraction)), width=40),
            escape(progress.message or ""),
        )
        return Group(spinner, row)


# --- commands ------------------------------------------------------------------------


def _exit_for(task: Task) -> int:
    failed = task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)
    return EXIT_TASK_FAILED if failed else EXIT_OK


def _show_task(ctx: Context, task: Task) -> None:
    if ctx.as_json:
        write_json(dict(task.raw))
    else:
        ctx.out.print(task_detail(task))


def wait_with_display(ctx: Context, task_id: str, timeout: float | None) -> Task:
    display = WaitDisplay(task_id)
    if ctx.as_json:
        return ctx.client.wait(task_id, timeout)
    if not ctx.err.is_terminal:
        # Logs and pipes get one line per change instead of a redrawn one.
        def log_change(task: Task) -> None:
            display.task = task
            ctx.err.print(display.summary())

        return ctx.client.wait(task_id, timeout, on_progress=log_change)
    from rich.live import Live

    with Live(display, console=ctx.err, refresh_per_second=8, transient=True) as live:

        def update(task: Task) -> None:
            display.task = task
            live.refresh()  # show a change now, not at the next tick

        return ctx.client.wait(task_id, timeout, on_progress=update)


def cmd_submit(ctx: Context) -> int:
    args = ctx.args
    submitted = ctx.client.submit(
        args.type,
        read_payload(args.payload),
        idempotency_key=args.idempotency_key,
        max_attempts=args.max_attempts,
        timeout_s=args.timeout,
        concurrency_key=args.concurrency_key,
        max_running=args.max_running,
        priority=args.priority,
    )
    if args.wait:
        task = wait_with_display(ctx, submitted.task_id, args.wait_timeout)
        _show_task(ctx, task)
        return _exit_for(task)
    if ctx.as_json:
        write_json(dict(submitted.raw))
        return EXIT_OK
    sys.stdout.write(submitted.task_id + "\n")  # alone on stdout: ID=$(aia submit ...)
    notes = ["an earlier submit with this key"] if submitted.replayed else []
    if submitted.dispatch == "deferred":
        notes.append("dispatch deferred: the redispatch sweep publishes it shortly")
    ctx.err.print(f"queued {submitted.type}" + "".join(f" ({n})" for n in notes))
    return EXIT_OK


def cmd_status(ctx: Context) -> int:
    _show_task(ctx, ctx.client.get(ctx.args.task_id))
    return EXIT_OK


def _limited(tasks: Iterator[Task], limit: int) -> list[Task]:
    return list(islice(tasks, limit) if limit > 0 else tasks)


def _page_size(limit: int) -> int:
    return min(limit, 100) if limit > 0 else 100


def _show_tasks(ctx: Context, tasks: list[Task], *, errors: bool = False) -> int:
    if ctx.as_json:
        write_json([dict(t.raw) for t in tasks])
    elif tasks:
        ctx.out.print(task_table(tasks, errors=errors))
    else:
        ctx.err.print("no tasks")
    return EXIT_OK


def cmd_list(ctx: Context) -> int:
    args = ctx.args
    tasks = ctx.client.list(args.status, args.type, page_size=_page_size(args.limit))
    return _show_tasks(ctx, _limited(tasks, args.limit))


def cmd_wait(ctx: Context) -> int:
    task = wait_with_display(ctx, ctx.args.task_id, ctx.args.timeout)
    _show_task(ctx, task)
    return _exit_for(task)


def cmd_usage(ctx: Context) -> int:
    from rich.markup import escape

    usage = ctx.client.usage()
    if ctx.as_json:
        write_json(dict(usage.raw))
        return EXIT_OK
    if usage.budgeted:
        ctx.out.print(
            f"balance {usage.balance} tokens, {usage.reserved} held by tasks not yet finished, "
            f"{usage.spent_this_period} spent in {usage.period}"
            + (f" (monthly {usage.monthly})" if usage.monthly else "")
        )
    else:
        ctx.out.print("no budget: submits are not metered")
    for scope, limit in sorted(usage.rate_limits.items()):
        what = "all submits" if scope == "*" else f"type {scope}"
        ctx.out.print(f"rate limit on {escape(what)}: {limit.rate:g}/s, burst {limit.burst}")
    if usage.max_running is not None:
        ctx.out.print(f"at most {usage.max_running} of your tasks run at once")
    return EXIT_OK


def cmd_dlq_list(ctx: Context) -> int:
    args = ctx.args
    tasks = ctx.client.dead_letters(args.type, page_size=_page_size(args.limit))
    return _show_tasks(ctx, _limited(tasks, args.limit), errors=True)


def cmd_dlq_replay(ctx: Context) -> int:
    args = ctx.args
    if bool(args.task_ids) == bool(args.all):
        raise UsageError("name the tasks to replay, or pass --all (not both)")
    if args.type and not args.all:
        raise UsageError("--type only filters --all")
    # Collected before replaying: replayed tasks leave the list being paged through.
    listed = {t.task_id: t for t in ctx.client.dead_letters(args.type)} if args.all else {}
    ids = list(listed) if args.all else args.task_ids
    outcomes = [_dry_run(ctx, i, listed.get(i)) if args.dry_run else _replay(ctx, i) for i in ids]
    if ctx.as_json:
        write_json(outcomes)
    elif outcomes:
        from rich.markup import escape
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("TASK ID", no_wrap=True, min_width=32)
        table.add_column("OUTCOME", no_wrap=True)
        table.add_column("DETAIL", overflow="fold")
        for o in outcomes:
            table.add_row(escape(o["task_id"]), o["outcome"], escape(str(o.get("detail", ""))))
        ctx.out.print(table)
    errors = sum(o["outcome"] == "error" for o in outcomes)
    verb = "would replay" if args.dry_run else "replayed"
    done = sum(o["outcome"] in ("replayed", "would-replay") for o in outcomes)
    ctx.err.print(f"{verb} {done} of {len(outcomes)}" + (f", {errors} failed" if errors else ""))
    return EXIT_SERVICE if errors else EXIT_OK


def _dry_run(ctx: Context, task_id: str, listed: Task | None) -> dict[str, Any]:
    try:
        task = listed or ctx.client.get(task_id)
    except APIError as exc:
        return {"task_id": task_id, "outcome": "error", "detail": str(exc), "problem": exc.problem}
    if task.status != TaskStatus.FAILED:
        return {"task_id": task_id, "outcome": "skip", "detail": f"status is {task.status}"}
    error = f"{task.error.code}: {task.error.message}" if task.error else ""
    return {"task_id": task_id, "outcome": "would-replay", "detail": error}


def _replay(ctx: Context, task_id: str) -> dict[str, Any]:
    try:
        task = ctx.client.replay(task_id)
    except APIError as exc:
        return {"task_id": task_id, "outcome": "error", "detail": str(exc), "problem": exc.problem}
    return {"task_id": task_id, "outcome": "replayed", "detail": f"now {task.status}"}


# --- parsing and running -------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="plain JSON on stdout, for scripts")
    common.add_argument("--base-url", help=f"service URL (default: ${BASE_URL_ENV})")
    common.add_argument("--api-key", help=f"API key (default: ${API_KEY_ENV})")
    return common


def _limit_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit", type=int, default=20, metavar="N", help="at most N tasks; 0 for all"
    )


def build_parser(prog: str = "aia") -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", parents=[common], help="submit a task")
    submit.add_argument("type", help="task type, e.g. echo")
    submit.add_argument(
        "--payload", default="{}", help="JSON object, @file, or @- for stdin (default: {})"
    )
    submit.add_argument("--idempotency-key", metavar="KEY", help="resubmits with it are no-ops")
    submit.add_argument("--max-attempts", type=int, metavar="N")
    submit.add_argument("--timeout", type=int, metavar="S", help="seconds per attempt")
    submit.add_argument(
        "--concurrency-key", metavar="KEY", help="at most --max-running of these run at once"
    )
    submit.add_argument("--max-running", type=int, metavar="N", help="with --concurrency-key")
    submit.add_argument(
        "--priority", type=int, metavar="0-9", help="place among waiting tasks (default 5)"
    )
    submit.add_argument("--wait", action="store_true", help="wait and print the final task")
    submit.add_argument(
        "--wait-timeout", type=float, metavar="S", help="with --wait: give up after S seconds"
    )
    submit.set_defaults(run=cmd_submit)

    status = commands.add_parser("status", parents=[common], help="show one task")
    status.add_argument("task_id")
    status.set_defaults(run=cmd_status)

    listing = commands.add_parser("list", parents=[common], help="list tasks, newest first")
    listing.add_argument("--status", help="queued, running, succeeded, failed, ...")
    listing.add_argument("--type")
    _limit_arg(listing)
    listing.set_defaults(run=cmd_list)

    wait = commands.add_parser("wait", parents=[common], help="wait for a task, showing progress")
    wait.add_argument("task_id")
    wait.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    wait.set_defaults(run=cmd_wait)

    usage = commands.add_parser(
        "usage", parents=[common], help="your token balance, spending and limits"
    )
    usage.set_defaults(run=cmd_usage)

    dlq = commands.add_parser("dlq", help="tasks that failed for good").add_subparsers(
        dest="dlq_command", required=True, metavar="COMMAND"
    )
    dlq_list = dlq.add_parser("list", parents=[common], help="list dead-lettered tasks")
    dlq_list.add_argument("--type")
    _limit_arg(dlq_list)
    dlq_list.set_defaults(run=cmd_dlq_list)
    replay = dlq.add_parser("replay", parents=[common], help="queue failed tasks again")
    replay.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    replay.add_argument("--all", action="store_true", help="every dead-lettered task")
    replay.add_argument("--type", help="with --all: only this type")
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    replay.set_defaults(run=cmd_dlq_replay)
    return parser


def _console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        # Pipes and logs: no 80-column default squeezing tables or cutting lines.
        console.width = max(console.width, PIPE_WIDTH)
    return console


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "aia",
    dev_env: Sequence[Path] | None = None,
    make_client: ClientFactory | None = None,
) -> int:
    """Run one command; returns the exit code. `dev_env` lists the dev.env files to try
    (default: `.aia/dev.env` here and in each parent); `make_client` is for tests."""
    if importlib.util.find_spec("rich") is None:
        sys.stderr.write(f"{prog}: the command line needs rich: pip install 'aia-client[cli]'\n")
        return EXIT_USAGE
    args = build_parser(prog).parse_args(argv)
    out, err = _console(), _console(stderr=True)
    try:
        candidates = dev_env if dev_env is not None else dev_env_files(Path.cwd())
        base_url, api_key = resolve_settings(args.base_url, args.api_key, os.environ, candidates)
        factory: ClientFactory = make_client or Client
        with factory(base_url, api_key) as client:
            code: int = args.run(Context(client, args, out, err))
            return code
    except (UsageError, ConfigurationError) as exc:
        err.print(f"{prog}: {exc}", markup=False)
        return EXIT_USAGE
    except WaitTimeout as exc:
        if args.json:
            write_json(dict(exc.task.raw))
        err.print(f"{prog}: {exc}", markup=False)
        return EXIT_WAIT_TIMEOUT
    except AIAError as exc:
        if args.json and exc.problem:
            sys.stderr.write(json.dumps(exc.problem) + "\n")
        else:
            err.print(f"{prog}: {exc}", markup=False)
        return EXIT_SERVICE
    except KeyboardInterrupt:
        return 130


def run() -> None:
    """The `aia-client` console script."""
    sys.exit(main(prog="aia-client"))


if __name__ == "__main__":
    run()
