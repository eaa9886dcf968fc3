"""The SDK against a scripted service: errors, retries, idempotency, pages, waiting."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from aia_client import (
    AIAError,
    APIError,
    AsyncClient,
    BadRequest,
    BudgetExhausted,
    Client,
    ConfigurationError,
    Conflict,
    InvalidResponse,
    NotFound,
    PayloadTooLarge,
    RateLimit,
    RateLimited,
    RetryPolicy,
    ServerError,
    ServiceUnavailable,
    SubmittedTask,
    Task,
    TaskStatus,
    TransportError,
    Unauthorized,
    Usage,
    ValidationError,
    WaitTimeout,
)
from aia_client.errors import parse_retry_after
from tests.sdk.support import BASE_URL, KEY, FakeClock, Script, ok, problem, view


def client(script: Script, clock: FakeClock | None = None, **options: Any) -> Client:
    clock = clock or FakeClock()
    return Client(
        BASE_URL, KEY, transport=script.transport(), sleep=clock.sleep, clock=clock, **options
    )


def accepted(task_id: str = "a" * 32, **extra: Any) -> httpx.Response:
    body = {"task_id": task_id, "status": "queued", "status_url": f"{BASE_URL}/tasks/{task_id}"}
    return ok(body | extra, 202)


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "bad-request", BadRequest),
        (401, "unauthorized", Unauthorized),
        (402, "budget-exhausted", BudgetExhausted),
        (404, "not-found", NotFound),
        (409, "conflict", Conflict),
        (413, "payload-too-large", PayloadTooLarge),
        (422, "validation", ValidationError),
        (429, "rate-limited", RateLimited),
        (503, "unavailable", ServiceUnavailable),
        (500, "internal", ServerError),
        (405, "method-not-allowed", APIError),
        (415, "unsupported-media-type", APIError),
    ],
)
def test_each_problem_status_raises_its_error(status: int, code: str, cls: type[APIError]) -> None:
    answer = problem(status, code, "what went wrong", instance="/tasks/x", hint="extra member")
    script = Script([answer])
    with pytest.raises(cls) as caught, client(script, max_retries=0) as c:
        c.get("x")
    error = caught.value
    assert type(error) is cls
    assert isinstance(error, AIAError)
    assert error.status == status
    assert error.code == code
    assert error.detail == "what went wrong"
    assert error.instance == "/tasks/x"
    assert error.problem["hint"] == "extra member"
    assert str(error).startswith(f"{status} ")
    assert "what went wrong" in str(error)


def test_validation_error_names_the_field_and_lists_errors() -> None:
    detail = "payload.seconds: Input should be less than or equal to 30"
    script = Script([problem(422, "validation", detail, field="payload.seconds")])
    with pytest.raises(ValidationError) as caught, client(script) as c:
        c.submit("sleep", {"seconds": 99})
    assert caught.value.field == "payload.seconds"
    assert caught.value.errors == [{"field": "payload.seconds", "detail": detail}]


def test_validation_error_keeps_every_reported_error() -> None:
    reported = [{"field": "payload.a", "detail": "missing"}, {"field": "payload.b", "detail": "x"}]
    answer = problem(422, "validation", "2 errors", field="payload.a", errors=reported)
    with pytest.raises(ValidationError) as caught, client(Script([answer])) as c:
        c.submit("t", {})
    assert caught.value.errors == reported


def test_budget_exhausted_carries_balance_and_price() -> None:
    answer = problem(402, "budget-exhausted", "not enough tokens", balance=3, price=10.5)
    with pytest.raises(BudgetExhausted) as caught, client(Script([answer])) as c:
        c.submit("t", {})
    assert (caught.value.balance, caught.value.price) == (3.0, 10.5)


def test_unauthorized_keeps_the_challenge_header() -> None:
    answer = problem(401, "unauthorized", "unknown key", {"WWW-Authenticate": 'Bearer realm="aia"'})
    with pytest.raises(Unauthorized) as caught, client(Script([answer])) as c:
        c.get("x")
    assert caught.value.headers["www-authenticate"].startswith("Bearer")


def test_a_non_problem_error_page_still_maps_by_status() -> None:
    page = httpx.Response(502, text="<html>bad gateway</html>")
    with pytest.raises(ServerError) as caught, client(Script([page]), max_retries=0) as c:
        c.get("x")
    assert caught.value.status == 502
    assert caught.value.code is None
    assert "bad gateway" in caught.value.detail


def test_a_success_that_is_not_json_is_an_invalid_response() -> None:
    page = httpx.Response(200, text="<html>a captive portal</html>")
    with pytest.raises(InvalidResponse, match="expected JSON"), client(Script([page])) as c:
        c.get("x")


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# --- retries -------------------------------------------------------------------------


def test_transient_answers_are_retried_after_retry_after() -> None:
    clock = FakeClock()
    script = Script(
        [
            problem(503, "unavailable", "firestore down", {"Retry-After": "2"}),
            problem(429, "rate-limited", "slow down", {"Retry-After": "1"}),
            ok(view(status="running")),
        ]
    )
    with client(script, clock) as c:
        task = c.get("t" * 32)
    assert task.status == "running"
    assert clock.sleeps == [2.0, 1.0]
    assert len(script.requests) == 3


def test_without_retry_after_the_backoff_grows_with_jitter() -> None:
    clock = FakeClock()
    gateway_down = httpx.Response(502, text="bad gateway")
    script = Script([gateway_down, gateway_down, httpx.ConnectError("refused"), ok(view())])
    policy = RetryPolicy(max_retries=3, backoff_base_s=0.5, backoff_max_s=1.5)
    with client(script, clock, retry_policy=policy) as c:
        c.get("t" * 32)
    first, second, third = clock.sleeps
    assert 0.25 <= first <= 0.5
    assert 0.5 <= second <= 1.0
    assert 0.75 <= third <= 1.5  # capped at backoff_max_s


def test_retries_stop_after_max_retries_with_the_last_error() -> None:
    clock = FakeClock()
    down = problem(503, "unavailable", "still down", {"Retry-After": "1"})
    script = Script([down, down, down])
    with pytest.raises(ServiceUnavailable) as caught, client(script, clock, max_retries=2) as c:
        c.get("x")
    assert len(script.requests) == 3
    assert clock.sleeps == [1.0, 1.0]
    assert caught.value.retry_after == 1.0


def test_a_retry_after_beyond_the_cap_is_surfaced_not_slept() -> None:
    clock = FakeClock()
    script = Script([problem(429, "rate-limited", "come back later", {"Retry-After": "3600"})])
    with pytest.raises(RateLimited) as caught, client(script, clock) as c:
        c.get("x")
    assert clock.sleeps == []
    assert caught.value.retry_after == 3600.0


def test_client_errors_are_not_retried() -> None:
    script = Script([problem(404, "not-found", "no such task")])
    with pytest.raises(NotFound), client(script) as c:
        c.get("x")
    assert len(script.requests) == 1


def test_a_dead_service_is_a_transport_error_after_retries() -> None:
    clock = FakeClock()
    script = Script([httpx.ConnectError("refused")] * 4)
    with pytest.raises(TransportError, match="ConnectError") as caught, client(script, clock) as c:
        c.get("x")
    assert caught.value.status is None
    assert len(script.requests) == 4
    assert len(clock.sleeps) == 3


# --- submit --------------------------------------------------------------------------


def test_submit_sends_the_body_and_reads_the_answer() -> None:
    script = Script([accepted(dispatch="deferred")])
    with client(script) as c:
        task = c.submit("echo", {"a": 1}, max_attempts=5, timeout_s=10, priority=8)
    request = script.requests[0]
    assert (request.method, request.url.path) == ("POST", "/tasks")
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert json.loads(request.content) == {
        "type": "echo",
        "payload": {"a": 1},
        "max_attempts": 5,
        "timeout_s": 10,
        "priority": 8,
    }
    assert isinstance(task, SubmittedTask)
    assert (task.task_id, task.status, task.type) == ("a" * 32, "queued", "echo")
    assert task.max_attempts == 5
    assert task.dispatch == "deferred"
    assert task.status_url == f"{BASE_URL}/tasks/{'a' * 32}"
    assert task.replayed is False
    assert dict(task.raw) == {
        "task_id": "a" * 32,
        "status": "queued",
        "status_url": f"{BASE_URL}/tasks/{'a' * 32}",
        "dispatch": "deferred",
    }


def test_submit_leaves_defaults_to_the_service() -> None:
    script = Script([accepted()])
    with client(script) as c:
        c.submit("echo", {})
    assert json.loads(script.requests[0].content) == {"type": "echo", "payload": {}}


def test_submit_retries_reuse_one_generated_idempotency_key() -> None:
    clock = FakeClock()
    script = Script(
        [
            problem(503, "unavailable", "down", {"Retry-After": "0"}),
            httpx.ReadTimeout("no answer"),  # the service may have stored the task
            httpx.ConnectError("refused"),
            accepted(),
        ]
    )
    with client(script, clock) as c:
        task = c.submit("echo", {"a": 1})
    keys = {r.headers["Idempotency-Key"] for r in script.requests}
    assert len(script.requests) == 4
    assert len(keys) == 1
    (key,) = keys
    assert len(key) == 32
    assert task.idempotency_key == key
    bodies = {r.content for r in script.requests}
    assert len(bodies) == 1  # the same body too, or the service would call it a mismatch


def test_submit_uses_the_callers_key_and_reports_a_replay() -> None:
    replayed = accepted()
    replayed.headers["Idempotent-Replayed"] = "true"
    script = Script([accepted(), replayed])
    with client(script) as c:
        first = c.submit("echo", {}, idempotency_key="order-42")
        second = c.submit("echo", {}, idempotency_key="order-42")
    assert [r.headers["Idempotency-Key"] for r in script.requests] == ["order-42", "order-42"]
    assert (first.replayed, second.replayed) == (False, True)


def test_separate_submits_get_separate_keys() -> None:
    script = Script([accepted("a" * 32), accepted("b" * 32)])
    with client(script) as c:
        c.submit("echo", {})
        c.submit("echo", {})
    assert len({r.headers["Idempotency-Key"] for r in script.requests}) == 2


# --- replay --------------------------------------------------------------------------


def test_replay_posts_to_the_replay_route_and_reads_the_view() -> None:
    script = Script([ok(view("f" * 32, "queued", attempts=0), 202)])
    with client(script) as c:
        task = c.replay("f" * 32)
    assert script.paths() == [f"POST /tasks/{'f' * 32}:replay"]
    assert task.status == TaskStatus.QUEUED


def test_replay_of_a_succeeded_task_is_a_conflict() -> None:
    script = Script([problem(409, "conflict", "task succeeded; nothing to replay")])
    with pytest.raises(Conflict), client(script) as c:
        c.replay("x")


def test_replay_is_resent_only_when_the_service_surely_did_not_act() -> None:
    clock = FakeClock()
    script = Script(
        [
            httpx.ConnectError("refused"),  # never sent
            problem(429, "rate-limited", "slow down", {"Retry-After": "1"}),  # refused
            problem(503, "unavailable", "maybe half done", {"Retry-After": "1"}),
        ]
    )
    with pytest.raises(ServiceUnavailable), client(script, clock) as c:
        c.replay("x")
    assert len(script.requests) == 3  # the 503 was not retried
    assert len(clock.sleeps) == 2


def test_replay_is_not_resent_after_a_lost_answer() -> None:
    script = Script([httpx.ReadTimeout("no answer")])
    with pytest.raises(TransportError), client(script) as c:
        c.replay("x")
    assert len(script.requests) == 1


def test_task_ids_cannot_reach_another_route() -> None:
    script = Script([ok(view()), ok(view())])
    with client(script) as c:
        c.get("../metrics?x=1")
        c.replay("a/b")
    sent = [r.url.raw_path for r in script.requests]
    assert sent == [b"/tasks/..%2Fmetrics%3Fx%3D1", b"/tasks/a%2Fb:replay"]


# --- listing -------------------------------------------------------------------------


def test_list_follows_every_page() -> None:
    pages = [
        ok({"tasks": [view("1" * 32), view("2" * 32)], "next_page_token": "p2"}),
        ok({"tasks": [view("3" * 32)], "next_page_token": "p3"}),
        ok({"tasks": [view("4" * 32)]}),
    ]
    script = Script(pages)
    with client(script) as c:
        ids = [t.task_id for t in c.list("succeeded", "echo", page_size=2)]
    assert ids == [c * 32 for c in "1234"]
    params = [dict(r.url.params) for r in script.requests]
    assert params == [
        {"limit": "2", "status": "succeeded", "type": "echo"},
        {"limit": "2", "status": "succeeded", "type": "echo", "page_token": "p2"},
        {"limit": "2", "status": "succeeded", "type": "echo", "page_token": "p3"},
    ]


def test_list_fetches_pages_only_as_iteration_needs_them() -> None:
    script = Script([ok({"tasks": [view("1" * 32)], "next_page_token": "p2"})])
    with client(script) as c:
        tasks = c.list()
        assert script.requests == []
        first = next(tasks)
    assert first.task_id == "1" * 32
    assert len(script.requests) == 1


def test_dead_letters_are_the_failed_tasks() -> None:
    failed = view("f" * 32, "failed", error={"code": "task-failed", "message": "boom"})
    script = Script([ok({"tasks": [failed]})])
    with client(script) as c:
        (task,) = c.dead_letters("fail")
    assert dict(script.requests[0].url.params) == {
        "limit": "100",
        "status": "failed",
        "type": "fail",
    }
    assert task.error is not None
    assert (task.error.code, task.error.message) == ("task-failed", "boom")


# --- waiting -------------------------------------------------------------------------


def test_wait_polls_with_backoff_until_terminal_and_reports_changes() -> None:
    clock = FakeClock()
    statuses = ["queued", "queued", "queued", "running", "running", "succeeded"]
    script = Script(
        [ok(view(status=s, result={"a": 1} if s == "succeeded" else None)) for s in statuses]
    )
    seen: list[str] = []
    with client(script, clock) as c:
        task = c.wait(
            "t" * 32, poll=0.25, max_poll=2.0, on_progress=lambda t: seen.append(t.status)
        )
    assert task.succeeded
    assert task.result == {"a": 1}
    # Slower while nothing changes, back to `poll` when something does.
    assert clock.sleeps == [0.25, 0.375, 0.5625, 0.25, 0.375]
    assert seen == ["queued", "running", "succeeded"]


def test_wait_never_polls_slower_than_max_poll() -> None:
    clock = FakeClock()
    script = Script([ok(view(status="running"))] * 8 + [ok(view(status="failed"))])
    with client(script, clock) as c:
        task = c.wait("t" * 32, poll=1.0, max_poll=2.0)
    assert task.status == "failed"
    assert max(clock.sleeps) == 2.0
    assert clock.sleeps[-3:] == [2.0, 2.0, 2.0]


def test_progress_changes_count_as_changes() -> None:
    clock = FakeClock()
    progress = [{"fraction": 0.1}, {"fraction": 0.1}, {"fraction": 0.5, "message": "half"}]
    script = Script([ok(view(status="running", progress=p)) for p in progress])
    script.answers.append(ok(view(status="succeeded", result={})))
    fractions: list[float | None] = []

    def record(task: Task) -> None:
        fractions.append(task.progress.fraction if task.progress else None)

    with client(script, clock) as c:
        c.wait("t" * 32, on_progress=record)
    assert fractions == [0.1, 0.5, None]
    assert clock.sleeps == [0.25, 0.375, 0.25]


def test_cancelled_is_terminal() -> None:
    script = Script([ok(view(status="cancelled"))])
    with client(script) as c:
        assert c.wait("t" * 32).status == TaskStatus.CANCELLED


def test_wait_times_out_with_the_last_view() -> None:
    clock = FakeClock()
    script = Script([ok(view(status="running"))] * 10)
    with pytest.raises(WaitTimeout) as caught, client(script, clock) as c:
        c.wait("t" * 32, timeout=1.0, poll=0.4, max_poll=0.4)
    assert caught.value.task.status == "running"
    assert isinstance(caught.value, TimeoutError)
    # The last sleep is cut to the deadline; one more look, then it gives up.
    assert clock.sleeps == pytest.approx([0.4, 0.4, 0.2])
    assert len(script.requests) == 4


# --- the task model ------------------------------------------------------------------


def test_newer_fields_are_read_and_unknown_ones_kept() -> None:
    body = view(
        status="running",
        progress={"fraction": 0.4, "message": "resizing", "metadata": {"n": 4}},
        parent_id="p" * 32,
        workflow_id="wf-1",
        children=["c1", "c2"],
        trace_id="0af7651916cd43dd8448eb211c80319c",
        blocked_by="concurrency:tenant:k",
        phase="resizing",
        priority=5,
    )
    body["progress"]["updated_at"] = "2025-01-02T03:04:06Z"
    task = Task.from_json(body)
    assert task.progress is not None
    assert (task.progress.fraction, task.progress.message) == (0.4, "resizing")
    assert task.progress.metadata == {"n": 4}
    assert task.progress.updated_at == datetime(2025, 1, 2, 3, 4, 6, tzinfo=UTC)
    assert (task.parent_id, task.workflow_id, task.children) == ("p" * 32, "wf-1", ("c1", "c2"))
    assert task.blocked_by == ("concurrency:tenant:k",)
    assert task.priority == 5
    assert task.extra == {"phase": "resizing"}
    assert task.created_at == datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert task.raw == body


def test_unknown_statuses_and_odd_shapes_read_without_crashing() -> None:
    task = Task.from_json(
        view(status="scheduled", progress=0.5, attempts="two", created_at="yesterday")
    )
    assert task.status == "scheduled"
    assert not task.terminal
    assert (task.progress, task.attempts, task.created_at) == (None, 0, None)


def test_a_view_without_id_or_status_is_invalid() -> None:
    with pytest.raises(InvalidResponse):
        Task.from_json({"status": "queued"})
    with pytest.raises(InvalidResponse):
        Task.from_json(["not", "an", "object"])


# --- configuration -------------------------------------------------------------------


def test_base_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIA_BASE_URL", "http://from-env.test/")
    monkeypatch.setenv("AIA_API_KEY", "aia_env_key")
    script = Script([ok(view())])
    with Client(transport=script.transport()) as c:
        c.get("t" * 32)
    request = script.requests[0]
    assert str(request.url) == f"http://from-env.test/tasks/{'t' * 32}"
    assert request.headers["Authorization"] == "Bearer aia_env_key"


def test_no_base_url_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIA_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="AIA_BASE_URL"):
        Client()


def test_closing_the_client_closes_its_connections() -> None:
    closed: list[bool] = []

    class Transport(httpx.MockTransport):
        def close(self) -> None:
            closed.append(True)

    with Client(BASE_URL, KEY, transport=Transport(Script([]))):
        assert closed == []
    assert closed == [True]


# --- async ---------------------------------------------------------------------------


def async_client(script: Script, clock: FakeClock, **options: Any) -> AsyncClient:
    return AsyncClient(
        BASE_URL,
        KEY,
        transport=script.transport(),
        sleep=clock.async_sleep,
        clock=clock,
        **options,
    )


def test_async_client_submits_with_one_key_across_retries() -> None:
    clock = FakeClock()
    script = Script([problem(503, "unavailable", "down", {"Retry-After": "3"}), accepted()])

    async def run() -> SubmittedTask:
        async with async_client(script, clock) as c:
            return await c.submit("echo", {"a": 1})

    task = asyncio.run(run())
    assert task.task_id == "a" * 32
    assert clock.sleeps == [3.0]
    assert len({r.headers["Idempotency-Key"] for r in script.requests}) == 1


def test_async_client_lists_pages_waits_and_replays() -> None:
    clock = FakeClock()
    failed = view("f" * 32, "failed", error={"code": "x", "message": "y"})
    script = Script(
        [
            ok({"tasks": [view("1" * 32)], "next_page_token": "p2"}),
            ok({"tasks": [view("2" * 32)]}),
            ok({"tasks": [failed]}),
            ok(view("f" * 32, "queued"), 202),
            ok(view("f" * 32, "running")),
            ok(view("f" * 32, "succeeded", result={})),
        ]
    )

    async def run() -> tuple[list[str], list[str], Task, Task]:
        async with async_client(script, clock) as c:
            listed = [t.task_id async for t in c.list(page_size=1)]
            dead = [t.task_id async for t in c.dead_letters()]
            replayed = await c.replay(dead[0])
            final = await c.wait(dead[0])
            return listed, dead, replayed, final

    listed, dead, replayed, final = asyncio.run(run())
    assert listed == ["1" * 32, "2" * 32]
    assert dead == ["f" * 32]
    assert replayed.status == "queued"
    assert final.succeeded
    assert clock.sleeps == [0.25]


def test_async_client_maps_errors_the_same_way() -> None:
    clock = FakeClock()
    script = Script([problem(422, "validation", "bad", field="payload.x")])

    async def run() -> None:
        async with async_client(script, clock) as c:
            await c.submit("echo", {})

    with pytest.raises(ValidationError) as caught:
        asyncio.run(run())
    assert caught.value.field == "payload.x"


def test_async_wait_times_out() -> None:
    clock = FakeClock()
    script = Script([ok(view(status="queued"))] * 5)

    async def run() -> None:
        async with async_client(script, clock) as c:
            await c.wait("t" * 32, timeout=0.5, poll=0.25, max_poll=0.25)

    with pytest.raises(WaitTimeout):
        asyncio.run(run())
    assert sum(clock.sleeps) == pytest.approx(0.5)


def test_usage_reads_the_balance_and_the_limits() -> None:
    body = {
        "tenant_id": "acme",
        "budgeted": True,
        "balance": 7,
        "reserved": 3,
        "monthly": 100,
        "period": {"id": "2026-12", "spent": 2},
        "limits": {"rate": {"*": {"rate": 20, "burst": 10}}, "max_running": 4},
    }
    script = Script([ok(body)])
    with client(script) as c:
        usage = c.usage()
    assert (script.requests[0].method, script.requests[0].url.path) == ("GET", "/usage")
    assert (usage.balance, usage.reserved, usage.spent_this_period) == (7, 3, 2)
    assert (usage.period, usage.monthly, usage.max_running) == ("2026-12", 100, 4)
    assert usage.rate_limits == {"*": RateLimit(rate=20.0, burst=10)}
    unbudgeted = Usage.from_json({"tenant_id": "t", "budgeted": False, "limits": {"rate": {}}})
    assert (unbudgeted.budgeted, unbudgeted.balance, unbudgeted.max_running) == (False, None, None)
    with pytest.raises(InvalidResponse):
        Usage.from_json(["not", "usage"])
