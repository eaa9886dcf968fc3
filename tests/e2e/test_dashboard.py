"""The dashboard in a real browser: Debian's chromium driven by Playwright, on the live stack.

No browser is downloaded: the Playwright wheel brings its driver and launches
/usr/bin/chromium, which `make test` and `.ci/run` install with apt-get. Without
it these tests fail under CI and skip elsewhere, saying how to install it.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.stack_process import RunningStack, running_stack
from shared.tasks.diagnostic import release_probe

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
# What the machine notes give for headless chromium on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000
XSS = "<img src=x onerror=window.__xss=1>"

if not CHROMIUM.exists():
    reason = f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test does it)"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("dashboard-stack")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, stack: RunningStack) -> Iterator[Page]:
    # A new context is a fresh profile: no storage carried between tests.
    context = browser.new_context(base_url=stack.base_url, viewport={"width": 1360, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert not errors, f"errors in the page: {errors}"


def tenant_key(stack: RunningStack) -> str:
    """A key of a tenant of its own, so its counts and lists hold this test's tasks only."""
    key = stack.cli("keys", "create", "--tenant", f"ui-{uuid.uuid4().hex[:8]}").stdout.strip()
    assert key.startswith("aia_"), key
    return key


def submit(stack: RunningStack, key: str, task_type: str, payload: dict[str, Any]) -> str:
    resp = requests.post(
        f"{stack.base_url}/tasks",
        json={"type": task_type, "payload": payload, "max_attempts": 1},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


def log_in(page: Page, key: str, *, accepted: bool = True) -> None:
    page.goto("/dashboard")
    page.fill("#api-key", key)
    page.click("#login-form button[type=submit]")
    if accepted:
        expect(page.locator("#app")).to_be_visible()


def row(page: Page, table: str, task_id: str) -> Any:
    return page.locator(f"#{table} tbody tr[data-task-id='{task_id}']")


def test_a_tenant_sees_its_tasks_move_and_opens_one(page: Page, stack: RunningStack) -> None:
    key = tenant_key(stack)
    sent: list[tuple[str, str, str | None]] = []
    page.on("request", lambda r: sent.append((r.url, r.method, r.headers.get("authorization"))))
    log_in(page, key)
    task_id = submit(stack, key, "echo", {"hello": "dashboard"})
    # The page refreshes itself: the task shows up and reaches succeeded without a click.
    expect(row(page, "tasks", task_id)).to_have_attribute(
        "data-status", "succeeded", timeout=WAIT_MS
    )
    expect(page.locator("#counts [data-status='succeeded'] .n")).to_have_text("1", timeout=WAIT_MS)
    expect(page.locator("#counts [data-status='failed'] .n")).to_have_text("0")

    row(page, "tasks", task_id).locator("button[data-open]").click()
    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    expect(page.locator("#detail-id")).to_have_text(task_id)
    expect(detail.locator("dd[data-field='status']")).to_have_text("succeeded")
    expect(detail.locator("dd[data-field='attempts']")).to_have_text("1 of 1")
    expect(detail.locator("dd[data-field='finished']")).not_to_have_text("—")
    # The trace the submit started; a link only where a trace console is configured.
    trace = detail.locator("dd[data-field='trace']")
    expect(trace).to_have_text(re.compile(r"^[0-9a-f]{32}$"))
    expect(trace.locator("a")).to_have_count(0)
    assert json.loads(page.locator("#detail-output").inner_text()) == {"hello": "dashboard"}

    # The key lives in this tab's sessionStorage only and travels in the header only.
    assert page.evaluate("sessionStorage.getItem('aia.apiKey')") == key
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
    api_calls = [(url, auth) for url, _, auth in sent if "/tasks" in url]
    assert api_calls, sent
    for url, _, _ in sent:
        assert url.startswith(stack.base_url + "/"), f"a request left the origin: {url}"
        assert key not in url
    assert all(auth == f"Bearer {key}" for _, auth in api_calls), api_calls
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('aia.apiKey')") is None


def test_filters_and_pages(page: Page, stack: RunningStack, tmp_path: Path) -> None:
    key = tenant_key(stack)
    ids = [submit(stack, key, "echo", {"n": n}) for n in range(22)]
    failed = submit(stack, key, "fail", {"times": 1, "retryable": False})
    log_in(page, key)
    expect(row(page, "dead", failed)).to_be_visible(timeout=WAIT_MS)

    # Newest first, 20 to a page; the next page holds the oldest.
    newest = page.locator("#tasks tbody tr").first
    expect(newest).to_have_attribute("data-task-id", failed)
    expect(page.locator("#tasks tbody tr")).to_have_count(20)
    page.click("#next")
    expect(page.locator("#page-no")).to_have_text("page 2")
    expect(page.locator("#tasks tbody tr")).to_have_count(3)
    expect(row(page, "tasks", ids[0])).to_be_visible()
    page.click("#prev")
    expect(page.locator("#page-no")).to_have_text("page 1")

    page.select_option("#filter-status", "failed")
    expect(page.locator("#tasks tbody tr")).to_have_count(1)
    expect(row(page, "tasks", failed)).to_be_visible()
    page.select_option("#filter-status", "")
    # Types come from the served OpenAPI document.
    options = page.locator("#filter-type option").all_inner_texts()
    assert {"echo", "sleep", "fail", "analytics.summary"} <= set(options), options
    page.select_option("#filter-type", "fail")
    expect(page.locator("#tasks tbody tr")).to_have_count(1)
    page.select_option("#filter-type", "echo")
    expect(page.locator("#tasks tbody tr")).to_have_count(20)
    expect(page.locator("#next")).to_be_enabled()
    page.select_option("#filter-type", "")
    expect(page.locator("#counts [data-status='succeeded'] .n")).to_have_text("22", timeout=WAIT_MS)
    # No refresh from here on: one that re-renders the row as it is clicked loses the click.
    page.uncheck("#auto-refresh")
    row(page, "dead", failed).locator("button[data-open]").click()
    expect(page.locator("#detail")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#detail-output")).to_contain_text(
        "diagnostic failure on attempt 1", timeout=WAIT_MS
    )
    # docs/dashboard.png is this view: AIA_DASHBOARD_SCREENSHOT=docs/dashboard.png.
    shot = Path(os.environ.get("AIA_DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0


def test_a_dead_lettered_task_is_replayed(page: Page, stack: RunningStack) -> None:
    key = tenant_key(stack)
    # Fails at once (not retryable); `times` counts attempts, so attempt 2 succeeds.
    task_id = submit(stack, key, "fail", {"times": 1, "retryable": False})
    log_in(page, key)
    dead = row(page, "dead", task_id)
    expect(dead).to_be_visible(timeout=WAIT_MS)
    expect(dead).to_contain_text("diagnostic failure on attempt 1")
    expect(page.locator("#counts [data-status='failed'] .n")).to_have_text("1", timeout=WAIT_MS)
    with page.expect_response(lambda r: r.url.endswith(":replay")) as answered:
        dead.locator("button[data-replay]").click()
    response = answered.value
    if response.status == 404 and "no route" in response.text():
        pytest.skip("POST /tasks/{id}:replay is not served yet (answers 404 'no route')")
    assert response.status == 202, response.text()
    expect(dead).to_have_count(0, timeout=WAIT_MS)
    expect(row(page, "tasks", task_id)).to_have_attribute(
        "data-status", "succeeded", timeout=WAIT_MS
    )
    row(page, "tasks", task_id).locator("button[data-open]").click()
    expect(page.locator("#detail-output")).to_contain_text('"succeeded_on_attempt": 2')
    assert json.loads(page.locator("#detail-output").inner_text()) == {"succeeded_on_attempt": 2}
    expect(page.locator("#counts [data-status='failed'] .n")).to_have_text("0", timeout=WAIT_MS)


def test_task_data_is_shown_as_text_never_as_markup(page: Page, stack: RunningStack) -> None:
    key = tenant_key(stack)
    task_id = submit(stack, key, "echo", {"note": XSS, XSS: [XSS]})
    log_in(page, key)
    expect(row(page, "tasks", task_id)).to_have_attribute(
        "data-status", "succeeded", timeout=WAIT_MS
    )
    row(page, "tasks", task_id).locator("button[data-open]").click()
    output = page.locator("#detail-output")
    expect(output).to_contain_text(XSS)
    assert json.loads(output.inner_text()) == {"note": XSS, XSS: [XSS]}
    # No element was made from the data, and its handler never ran.
    assert page.locator("img").count() == 0
    assert page.evaluate("window.__xss") is None


def test_a_refused_key_returns_to_the_login(page: Page) -> None:
    log_in(page, "aia_nope_nope", accepted=False)
    expect(page.locator("#login")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#login-error")).to_contain_text("refused")
    assert page.evaluate("sessionStorage.getItem('aia.apiKey')") is None


def test_the_page_is_served_with_a_strict_policy(stack: RunningStack) -> None:
    resp = requests.get(f"{stack.base_url}/dashboard", timeout=30)
    assert resp.status_code == 200
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"


def test_a_budgeted_tenant_sees_its_balance_and_why_a_task_waits(
    page: Page, stack: RunningStack
) -> None:
    tenant = f"ui-{uuid.uuid4().hex[:8]}"
    key = stack.cli("keys", "create", "--tenant", tenant).stdout.strip()
    stack.cli("budgets", "grant", "--tenant", tenant, "--tokens", "50")
    stack.cli("tenants", "set-limits", "--tenant", tenant, "--max-running", "1")
    marker = f"ui-{uuid.uuid4().hex[:10]}"
    headers = {"Authorization": f"Bearer {key}"}

    def post(body: dict[str, Any]) -> str:
        resp = requests.post(f"{stack.base_url}/tasks", json=body, headers=headers, timeout=30)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["task_id"])

    def view(task_id: str) -> dict[str, Any]:
        resp = requests.get(f"{stack.base_url}/tasks/{task_id}", headers=headers, timeout=30)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    # One task holds the tenant's only slot until released; the next one waits for it.
    holder = post({"type": "probe", "payload": {"marker": marker, "hold_attempts": 1}})
    deadline = time.monotonic() + 60
    while view(holder)["status"] != "running":
        assert time.monotonic() < deadline, view(holder)
        time.sleep(0.2)
    waiting = post({"type": "probe", "payload": {"marker": marker}, "priority": 8})
    while view(waiting).get("blocked_by") != "tenant:max_running":
        assert time.monotonic() < deadline, view(waiting)
        time.sleep(0.2)

    log_in(page, key)
    usage = requests.get(f"{stack.base_url}/usage", headers=headers, timeout=30).json()
    line = page.locator("#usage")
    expect(line).to_be_visible(timeout=WAIT_MS)
    expect(line.locator("[data-usage='balance']")).to_have_text(str(usage["balance"]))
    expect(line.locator("[data-usage='reserved']")).to_have_text(str(usage["reserved"]))
    assert usage["reserved"] == 2  # both tasks hold their price
    expect(line.locator("[data-usage='max-running']")).to_have_text("1")

    expect(row(page, "tasks", waiting)).to_be_visible(timeout=WAIT_MS)
    row(page, "tasks", waiting).locator("button[data-open]").click()
    detail = page.locator("#detail")
    expect(detail.locator("dd[data-field='status']")).to_have_text("queued")
    expect(detail.locator("dd[data-field='waiting-for']")).to_have_text("tenant:max_running")
    expect(detail.locator("dd[data-field='priority']")).to_have_text("8")

    release_probe(marker, Path(stack.env["AIA_DIAGNOSTIC_DIR"]))
    expect(detail.locator("dd[data-field='status']")).to_have_text("succeeded", timeout=WAIT_MS)
    expect(detail.locator("dd[data-field='waiting-for']")).to_have_count(0)
    stack.cli("tenants", "set-limits", "--tenant", tenant, "--max-running", "0")
