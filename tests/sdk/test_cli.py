"""The task command line against a scripted service: output, JSON, exit codes, settings."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from aia_client import Client, Task
from aia_client.cli import (
    EXIT_OK,
    EXIT_SERVICE,
    EXIT_TASK_FAILED,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    Context,
    WaitDisplay,
    main,
    wait_with_display,
)
from tests.sdk.support import BASE_URL, KEY, FakeClock, Script, ok, problem, view

TASK = "a" * 32
FLAGS = ["--base-url", BASE_URL, "--api-key", KEY]


class Run:
    """Runs the CLI in-process against a script; keeps what it printed."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.script = Script([])
        self.clock = FakeClock()
        self.made: list[tuple[str, str]] = []
        self.out = self.err = ""

    def answers(self, *answers: httpx.Response | Exception) -> Run:
        self.script.answers.extend(answers)
        return self

    def client(self, base_url: str, api_key: str) -> Client:
        self.made.append((base_url, api_key))
        transport = self.script.transport()
        return Client(
            base_url, api_key, transport=transport, sleep=self.clock.sleep, clock=self.clock
        )

    def __call__(self, *argv: str, flags: bool = True, dev_env: list[Path] | None = None) -> int:
        args = [*argv, *FLAGS] if flags else list(argv)
        code = main(args, dev_env=dev_env or [], make_client=self.client)
        captured = self.capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        return code

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(capsys)


def accepted(task_id: str = TASK, **extra: Any) -> httpx.Response:
    return ok({"task_id": task_id, "status": "queued", "status_url": f"{BASE_URL}/x"} | extra, 202)


def failed_view(task_id: str = TASK) -> dict[str, Any]:
    error = {"code": "task-failed", "message": "diagnostic failure on attempt 1 of 5"}
    return view(task_id, "failed", attempts=1, error=error, finished_at="2025-01-02T03:04:09Z")


# --- submit --------------------------------------------------------------------------


def test_submit_prints_the_task_id_alone(run: Run) -> None:
    assert run.answers(accepted())("submit", "echo", "--payload", '{"a": 1}') == EXIT_OK
    assert run.out == TASK + "\n"
    assert "queued echo" in run.err
    sent = run.script.requests[0]
    assert json.loads(sent.content) == {"type": "echo", "payload": {"a": 1}}
    assert len(sent.headers["Idempotency-Key"]) == 32


def test_submit_passes_its_options(run: Run) -> None:
    run.answers(accepted(dispatch="deferred"))
    code = run(
        "submit",
        "sleep",
        "--payload",
        '{"seconds": 1}',
        "--idempotency-key",
        "k-1",
        "--max-attempts",
        "5",
        "--timeout",
        "30",
    )
    assert code == EXIT_OK
    sent = run.script.requests[0]
    assert sent.headers["Idempotency-Key"] == "k-1"
    body = json.loads(sent.content)
    assert (body["max_attempts"], body["timeout_s"]) == (5, 30)
    assert "dispatch deferred" in run.err


def test_submit_json_prints_the_service_answer(run: Run) -> None:
    assert run.answers(accepted())("submit", "echo", "--json") == EXIT_OK
    assert run.json() == {"task_id": TASK, "status": "queued", "status_url": f"{BASE_URL}/x"}


def test_submit_reads_the_payload_from_a_file(run: Run, tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_text('{"values": [1, 2, 3]}', encoding="utf-8")
    assert run.answers(accepted())("submit", "analytics.summary", "--payload", f"@{payload}") == 0
    assert json.loads(run.script.requests[0].content)["payload"] == {"values": [1, 2, 3]}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{nope", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("@/no/such", "cannot read"),
    ],
)
def test_a_bad_payload_is_a_usage_error(run: Run, payload: str, message: str) -> None:
    assert run("submit", "echo", "--payload", payload) == EXIT_USAGE
    assert message in run.err
    assert run.script.requests == []


def test_submit_wait_prints_the_final_task_and_exits_by_its_status(run: Run) -> None:
    run.answers(accepted(), ok(view(status="running")), ok(failed_view()))
    assert run("submit", "fail", "--wait") == EXIT_TASK_FAILED
    assert "diagnostic failure on attempt 1 of 5" in run.out
    assert "failed" in run.out


def test_submit_wait_json_prints_the_final_view(run: Run) -> None:
    final = view(status="succeeded", result={"a": 1})
    run.answers(accepted(), ok(final))
    assert run("submit", "echo", "--payload", '{"a":1}', "--wait", "--json") == EXIT_OK
    assert run.json() == final


# --- status and list -----------------------------------------------------------------


def test_status_shows_the_task(run: Run) -> None:
    done = view(TASK, "succeeded", result={"hello": "world"}, trace_id="abc123")
    assert run.answers(ok(done))("status", TASK) == EXIT_OK
    for expected in (
        TASK,
        "succeeded",
        "1/3",
        "2025-01-02 03:04:05Z",
        '"hello": "world"',
        "abc123",
    ):
        assert expected in run.out
    assert run.script.paths() == [f"GET /tasks/{TASK}"]


def test_status_json_is_the_view_as_sent(run: Run) -> None:
    sent = view(status="running", progress={"fraction": 0.5}, something_new=[1])
    assert run.answers(ok(sent))("status", TASK, "--json") == EXIT_OK
    assert run.json() == sent


def test_status_shows_progress_when_the_view_has_it(run: Run) -> None:
    sent = view(status="running", progress={"fraction": 0.25, "message": "resizing"})
    assert run.answers(ok(sent))("status", TASK) == EXIT_OK
    assert "25% resizing" in run.out


def test_an_unknown_task_is_a_service_error(run: Run) -> None:
    assert run.answers(problem(404, "not-found", f"no task {TASK}"))("status", TASK) == EXIT_SERVICE
    assert f"404 Not found: no task {TASK}" in run.err
    assert run.out == ""


def test_service_errors_are_problem_json_on_stderr_with_json(run: Run) -> None:
    answer = problem(422, "validation", "payload.seconds: too big", field="payload.seconds")
    assert run.answers(answer)("submit", "sleep", "--json") == EXIT_SERVICE
    assert run.out == ""
    assert json.loads(run.err)["field"] == "payload.seconds"


def test_an_unreachable_service_is_a_service_error(run: Run) -> None:
    run.answers(*[httpx.ConnectError("connection refused")] * 4)
    assert run("list") == EXIT_SERVICE
    assert "connection refused" in run.err


def test_list_is_a_table_of_every_page_up_to_the_limit(run: Run) -> None:
    ids = [c * 32 for c in "123"]
    run.answers(
        ok({"tasks": [view(ids[0], "succeeded"), view(ids[1], "running")], "next_page_token": "p"}),
        ok({"tasks": [view(ids[2], "queued", type="analytics.summary")]}),
    )
    assert run("list", "--status", "succeeded", "--type", "echo", "--limit", "0") == EXIT_OK
    lines = run.out.splitlines()
    assert lines[0].split() == ["TASK", "ID", "TYPE", "STATUS", "ATTEMPTS", "CREATED", "FINISHED"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [ids[0], "echo", "succeeded"],
        [ids[1], "echo", "running"],
        [ids[2], "analytics.summary", "queued"],
    ]
    assert dict(run.script.requests[0].url.params) == {
        "limit": "100",
        "status": "succeeded",
        "type": "echo",
    }


def test_list_stops_at_the_limit(run: Run) -> None:
    page = {"tasks": [view(c * 32) for c in "12"], "next_page_token": "more"}
    assert run.answers(ok(page))("list", "--limit", "2", "--json") == EXIT_OK
    assert [t["task_id"] for t in run.json()] == ["1" * 32, "2" * 32]
    assert len(run.script.requests) == 1
    assert run.script.requests[0].url.params["limit"] == "2"


def test_an_empty_list_says_so(run: Run) -> None:
    assert run.answers(ok({"tasks": []}))("list") == EXIT_OK
    assert run.out == ""
    assert "no tasks" in run.err


# --- wait ----------------------------------------------------------------------------


def test_wait_logs_each_change_and_exits_0_on_success(run: Run) -> None:
    run.answers(
        ok(view(status="queued")),
        ok(view(status="running", progress={"fraction": 0.5})),
        ok(view(status="succeeded", result={"ok": True})),
    )
    assert run("wait", TASK) == EXIT_OK
    changes = run.err.splitlines()
    assert len(changes) == 3
    assert "queued" in changes[0]
    assert "running" in changes[1]
    assert "attempt 1/3" in changes[1]
    assert "50%" in changes[1]
    assert "succeeded" in changes[2]
    assert '{"ok": true}' in run.out


def test_wait_exits_1_when_the_task_fails_or_is_cancelled(run: Run) -> None:
    assert run.answers(ok(failed_view()))("wait", TASK) == EXIT_TASK_FAILED
    assert run.answers(ok(view(status="cancelled")))("wait", TASK, "--json") == EXIT_TASK_FAILED
    assert run.json()["status"] == "cancelled"


def test_wait_gives_up_after_its_timeout_with_exit_4(run: Run) -> None:
    run.answers(*[ok(view(status="running"))] * 20)
    assert run("wait", TASK, "--timeout", "1", "--json") == EXIT_WAIT_TIMEOUT
    assert run.json()["status"] == "running"
    assert "still running" in run.err
    assert sum(run.clock.sleeps) == pytest.approx(1.0)


# --- dead letters --------------------------------------------------------------------


def test_dlq_list_shows_why_each_task_failed(run: Run) -> None:
    assert run.answers(ok({"tasks": [failed_view()]}))("dlq", "list") == EXIT_OK
    assert "ERROR" in run.out.splitlines()[0]
    assert "task-failed: diagnostic failure on attempt 1 of 5" in run.out
    assert run.script.requests[0].url.params["status"] == "failed"


def test_dlq_replay_by_id(run: Run) -> None:
    run.answers(ok(view(TASK, "queued"), 202))
    assert run("dlq", "replay", TASK, "--json") == EXIT_OK
    assert run.script.paths() == [f"POST /tasks/{TASK}:replay"]
    assert run.json() == [{"task_id": TASK, "outcome": "replayed", "detail": "now queued"}]


def test_dlq_replay_all_collects_first_then_replays_each(run: Run) -> None:
    ids = ["1" * 32, "2" * 32]
    run.answers(
        ok({"tasks": [failed_view(ids[0])], "next_page_token": "p"}),
        ok({"tasks": [failed_view(ids[1])]}),
        ok(view(ids[0], "queued"), 202),
        problem(409, "conflict", "task succeeded; nothing to replay"),
    )
    assert run("dlq", "replay", "--all") == EXIT_SERVICE  # one of them could not be replayed
    assert run.script.paths()[2:] == [f"POST /tasks/{i}:replay" for i in ids]
    assert "replayed 1 of 2, 1 failed" in run.err
    assert "nothing to replay" in run.out


def test_dlq_replay_dry_run_changes_nothing(run: Run) -> None:
    run.answers(ok(failed_view()), ok(view("b" * 32, "succeeded")))
    assert run("dlq", "replay", TASK, "b" * 32, "--dry-run", "--json") == EXIT_OK
    assert all(r.method == "GET" for r in run.script.requests)
    assert [o["outcome"] for o in run.json()] == ["would-replay", "skip"]
    assert "would replay 1 of 2" in run.err


@pytest.mark.parametrize("argv", [["dlq", "replay"], ["dlq", "replay", TASK, "--all"]])
def test_dlq_replay_needs_ids_or_all(run: Run, argv: list[str]) -> None:
    assert run(*argv) == EXIT_USAGE
    assert "--all" in run.err
    assert run.script.requests == []


def test_argument_errors_exit_2(run: Run) -> None:
    with pytest.raises(SystemExit) as caught:
        run("submit")  # no task type
    assert caught.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as caught:
        run("submit", "echo", "--max-attempts", "many")
    assert caught.value.code == EXIT_USAGE


# --- settings ------------------------------------------------------------------------


def write_dev_env(folder: Path, base_url: str, key: str) -> Path:
    path = folder / ".aia" / "dev.env"
    path.parent.mkdir(parents=True)
    path.write_text(
        "# written by make dev\n"
        "export FIRESTORE_EMULATOR_HOST=127.0.0.1:1\n"
        f"export AIA_BASE_URL={base_url}\n"
        f"export AIA_API_KEY='{key}'\n",
        encoding="utf-8",
    )
    return path


def test_without_settings_the_dev_env_is_used(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIA_BASE_URL", raising=False)
    monkeypatch.delenv("AIA_API_KEY", raising=False)
    dev_env = write_dev_env(tmp_path, "http://127.0.0.1:8080", "aia_dev_key")
    run.answers(ok({"tasks": []}))
    assert run("list", flags=False, dev_env=[tmp_path / "missing", dev_env]) == EXIT_OK
    assert run.made == [("http://127.0.0.1:8080", "aia_dev_key")]


def test_the_dev_env_is_found_from_a_subfolder(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aia_client.cli import dev_env_files

    write_dev_env(tmp_path, "http://127.0.0.1:8080", "aia_dev_key")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.delenv("AIA_BASE_URL", raising=False)
    monkeypatch.delenv("AIA_API_KEY", raising=False)
    run.answers(ok({"tasks": []}))
    assert run("list", flags=False, dev_env=dev_env_files(nested)) == EXIT_OK
    assert run.made == [("http://127.0.0.1:8080", "aia_dev_key")]


def test_the_environment_wins_over_the_dev_env(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev_env = write_dev_env(tmp_path, "http://127.0.0.1:8080", "aia_dev_key")
    monkeypatch.setenv("AIA_BASE_URL", "http://elsewhere.test")
    monkeypatch.setenv("AIA_API_KEY", "aia_env_key")
    run.answers(ok({"tasks": []}))
    assert run("list", flags=False, dev_env=[dev_env]) == EXIT_OK
    assert run.made == [("http://elsewhere.test", "aia_env_key")]


def test_the_dev_key_is_never_sent_to_another_service(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev_env = write_dev_env(tmp_path, "http://127.0.0.1:8080", "aia_dev_key")
    monkeypatch.setenv("AIA_BASE_URL", "http://prod.test")
    monkeypatch.delenv("AIA_API_KEY", raising=False)
    assert run("list", flags=False, dev_env=[dev_env]) == EXIT_USAGE
    assert "no API key" in run.err
    assert run.made == []


def test_no_settings_at_all_is_a_usage_error(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIA_BASE_URL", raising=False)
    monkeypatch.delenv("AIA_API_KEY", raising=False)
    assert run("list", flags=False) == EXIT_USAGE
    assert "make dev" in run.err


# --- the operator CLI hands client commands over -------------------------------------


def test_aia_routes_client_commands_to_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    import aia_client.cli
    from shared import cli

    seen: list[tuple[list[str], Any]] = []

    def fake_main(argv: list[str], *, dev_env: Any) -> int:
        seen.append((argv, dev_env))
        return 7

    monkeypatch.setattr(aia_client.cli, "main", fake_main)
    assert cli.main(["dlq", "replay", "--all"]) == 7
    ((argv, dev_env),) = seen
    assert argv == ["dlq", "replay", "--all"]
    # The caller's folder and its parents first, then the checkout's own dev.env.
    assert dev_env[0] == Path.cwd() / ".aia" / "dev.env"
    assert dev_env[-1] == cli.DEV_ENV_CANDIDATES[-1]


def test_aia_hands_over_exactly_the_client_commands() -> None:
    from aia_client.cli import COMMANDS
    from shared import cli

    assert tuple(cli.CLIENT_COMMANDS) == COMMANDS


def test_dlq_replay_all_dry_run_reads_the_list_only(run: Run) -> None:
    run.answers(ok({"tasks": [failed_view("1" * 32), failed_view("2" * 32)]}))
    assert run("dlq", "replay", "--all", "--type", "fail", "--dry-run") == EXIT_OK
    assert run.script.paths() == ["GET /tasks"]
    assert run.script.requests[0].url.params["type"] == "fail"
    assert run.out.count("would-replay") == 2


def test_aia_help_lists_client_and_operator_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from shared import cli

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("keys", "keyring", "tasks", "submit", "status", "list", "wait", "dlq"):
        assert command in out


# --- the live display ----------------------------------------------------------------


def render(renderable: object) -> str:
    from rich.console import Console

    screen = io.StringIO()
    Console(file=screen, width=100, color_system=None).print(renderable)
    return screen.getvalue()


def test_the_wait_display_shows_status_attempt_elapsed_and_progress() -> None:
    clock = FakeClock()
    display = WaitDisplay(TASK, clock)
    assert "asking" in render(display)
    display.task = Task.from_json(view(TASK, "running"))
    clock.sleep(2.5)
    plain = render(display)
    assert f"task {TASK}: running · attempt 1/3 · 2.5s" in plain
    assert "━" not in plain  # no bar without progress
    progress = {"fraction": 0.3, "message": "crunching"}
    display.task = Task.from_json(view(TASK, "running", progress=progress))
    with_bar = render(display)
    assert "30%" in with_bar
    assert "crunching" in with_bar
    assert "━" in with_bar


def test_wait_on_a_terminal_draws_live_and_ends_on_the_final_view(run: Run) -> None:
    import argparse

    from rich.console import Console

    run.answers(
        ok(view(TASK, "running", progress={"fraction": 0.5, "message": "half way"})),
        ok(view(TASK, "succeeded", result={})),
    )
    screen = io.StringIO()
    err = Console(file=screen, force_terminal=True, width=100, color_system=None)
    with run.client(BASE_URL, KEY) as client:
        ctx = Context(client, argparse.Namespace(json=False), Console(file=io.StringIO()), err)
        task = wait_with_display(ctx, TASK, None)
    assert task.succeeded
    drawn = screen.getvalue()
    assert "half way" in drawn
    assert "succeeded" in drawn
