"""Workflows on the emulators: static DAGs of task nodes, run by the ordinary worker.

The worker here is the pipeline's, with the workflows' follower in front of the
joins (as `shared.providers.task_events` wires it): nodes are tasks, and their
dependencies are the `depends_on` machinery's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.config import Settings
from shared.errors import IdempotencyMismatch, TaskFailure, Unavailable
from shared.security.crypto import TaskSealer
from shared.tasks.events import AllEvents
from shared.tasks.models import TaskMessage, TaskStatus
from shared.tasks.worker import Outcome
from shared.webhooks.delivery import StatusBodies
from shared.webhooks.models import workflow_event_id
from shared.webhooks.outbox import EndpointDirectory, WebhookEvents
from shared.webhooks.store import FirestoreWebhookStore
from shared.workflows.events import WorkflowEvents
from shared.workflows.joins import Joins
from shared.workflows.service import WorkflowService
from shared.workflows.store import WorkflowStore

from .conftest import PROJECT, Pipeline

pytestmark = pytest.mark.integration

TENANT = "acme"


@dataclass
class Meter:
    """Firestore RPCs as billed: commits and their writes, documents read, queries run."""

    commits: int = 0
    writes: int = 0
    reads: int = 0
    queries: int = 0
    workflow_writes: int = 0  # writes to a workflows/{id} document

    def reset(self) -> None:
        self.commits = self.writes = self.reads = self.queries = self.workflow_writes = 0


def metered(db: Any) -> Meter:
    """Count what `db` sends from now on (the GAPIC client's methods, wrapped on the instance)."""
    meter = Meter()
    api = db._firestore_api

    def field_of(request: Any, name: str) -> Any:
        return request.get(name) if isinstance(request, dict) else getattr(request, name)

    def count_commit(request: Any) -> None:
        writes = field_of(request, "writes") or ()
        if writes and all("/documents/metric_shards/" in str(w) for w in writes):
            # The metrics counters: flushed every 10 s per instance when deployed, here
            # after each change; not a cost of the workflow.
            return
        meter.commits += 1
        meter.writes += len(writes)
        meter.workflow_writes += sum("/documents/workflows/" in str(w) for w in writes)

    def commit(original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, request: Any = None, **kwargs: Any) -> Any:
            count_commit(request)
            return original(*args, request=request, **kwargs)

        return counted

    def plain_commit(original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(request: Any, **kwargs: Any) -> Any:
            count_commit(request)
            return original(request, **kwargs)

        return counted

    def batch_get(original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, request: Any = None, **kwargs: Any) -> Any:
            # A missing document is billed as a read too.
            meter.reads += len(field_of(request, "documents") or ())
            return original(*args, request=request, **kwargs)

        return counted

    def plain_get(original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(path: str, **kwargs: Any) -> Any:
            meter.reads += 1  # found or missing, one document
            return original(path, **kwargs)

        return counted

    def run_query(original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, request: Any = None, **kwargs: Any) -> Iterator[Any]:
            meter.queries += 1
            found = 0
            for response in original(*args, request=request, **kwargs):
                if response.document and response.document.name:
                    found += 1
                yield response
            meter.reads += max(found, 1)  # a query that finds nothing is billed one read

        return counted

    def aggregation(original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, request: Any = None, **kwargs: Any) -> Any:
            meter.queries += 1
            meter.reads += 1  # a count is one read per 1,000 index entries matched
            return original(*args, request=request, **kwargs)

        return counted

    api.commit = commit(api.commit)
    if hasattr(db, "plain_commit"):  # shared.firestore_fast.FastClient: commits with a deadline
        db.plain_commit = plain_commit(db.plain_commit)
        db.plain_get = plain_get(db.plain_get)  # and reads a whole document with a deadline
    api.batch_get_documents = batch_get(api.batch_get_documents)
    api.run_query = run_query(api.run_query)
    api.run_aggregation_query = aggregation(api.run_aggregation_query)
    return meter


@dataclass
class Flows:
    pipeline: Pipeline
    service: WorkflowService
    store: WorkflowStore
    meter: Meter

    def create(self, body: dict[str, Any], key: str | None = None) -> str:
        return self.service.create(TENANT, body, key).workflow_id

    def view(self, workflow_id: str) -> Any:
        return self.service.get(TENANT, workflow_id)

    def deliver(self, task_id: str) -> Outcome:
        message = TaskMessage(task_id=task_id, tenant_id=TENANT)
        try:
            return self.pipeline.worker.process(message).outcome
        except TaskFailure:
            return Outcome.FAILED

    def queued(self) -> list[str]:
        """Task ids published since the last look, in order."""
        return [m["data"]["task_id"] for m in self.pipeline.pull(self.pipeline.tasks_sub)]

    def drain(self, *, rounds: int = 30) -> list[str]:
        """Deliver what the tasks topic holds until it is empty; the ids delivered, in order."""
        delivered: list[str] = []
        for _ in range(rounds):
            waiting = self.queued()
            if not waiting:
                return delivered
            for task_id in waiting:
                self.deliver(task_id)
                delivered.append(task_id)
        raise AssertionError("the topic never drained")


@pytest.fixture
def flows(pipeline: Pipeline) -> Flows:
    joins = pipeline.repository.events
    assert isinstance(joins, Joins)
    pipeline.repository.events = AllEvents(WorkflowEvents(pipeline.repository, joins), joins)
    store = WorkflowStore(pipeline.repository)
    service = WorkflowService(
        store,
        pipeline.repository,
        pipeline.publisher,
        pipeline.registry,
        sealer=TaskSealer(pipeline.ring),
        settings=Settings(project=PROJECT),
    )
    return Flows(pipeline, service, store, metered(pipeline.db))


def node(task_type: str = "inputs", *deps: str, **payload: Any) -> dict[str, Any]:
    return {"type": task_type, "payload": payload, "depends_on": list(deps)}


DIAMOND = {
    "nodes": {
        "a": node("inputs", name="a"),
        "b": node("inputs", "a", name="b"),
        "c": node("inputs", "a", name="c"),
        "d": node("inputs", "b", "c", name="d"),
    }
}


def ids_of(view: Any) -> dict[str, str]:
    return {name: n.task_id for name, n in view.nodes.items()}


def test_a_diamond_runs_each_node_once_with_its_inputs_by_node_name(flows: Flows) -> None:
    workflow_id = flows.create(DIAMOND)
    view = flows.view(workflow_id)
    ids = ids_of(view)
    assert view.status == "running"
    assert {n: v.status for n, v in view.nodes.items()} == {
        "a": TaskStatus.QUEUED,
        "b": TaskStatus.WAITING,
        "c": TaskStatus.WAITING,
        "d": TaskStatus.WAITING,
    }
    assert view.nodes["d"].depends_on == ["b", "c"]
    delivered = flows.drain()
    assert sorted(delivered) == sorted(ids.values())  # each node delivered once
    assert delivered[0] == ids["a"]
    assert delivered[-1] == ids["d"]
    view = flows.view(workflow_id)
    assert view.status == "succeeded"
    assert view.finished_at is not None
    assert all(n.attempts == 1 and n.status is TaskStatus.SUCCEEDED for n in view.nodes.values())
    status = flows.pipeline.status
    a = {"name": "a", "inputs": {}}
    b = {"name": "b", "inputs": {"a": a}}
    c = {"name": "c", "inputs": {"a": a}}
    assert status.get(TENANT, ids["b"]).result == b
    assert status.get(TENANT, ids["d"]).result == {"name": "d", "inputs": {"b": b, "c": c}}
    # The node's task names its workflow.
    assert status.get(TENANT, ids["d"]).workflow_id == workflow_id


def test_a_duplicate_delivery_of_a_node_changes_nothing(flows: Flows) -> None:
    workflow_id = flows.create(DIAMOND)
    ids = ids_of(flows.view(workflow_id))
    flows.drain()
    before = flows.view(workflow_id)
    # Pub/Sub redelivers a finished node, and its follow-up runs again (a retried flush).
    assert flows.deliver(ids["b"]) is Outcome.SKIPPED
    b = flows.pipeline.repository.get(TENANT, ids["b"])
    flows.pipeline.repository.events.flush(b, TaskStatus.SUCCEEDED)
    assert flows.queued() == []
    after = flows.view(workflow_id)
    assert after == before
    assert after.nodes["d"].attempts == 1


def test_fail_fast_cancels_every_node_not_started(flows: Flows) -> None:
    body = {
        "nodes": {
            "bad": node("fail", times=5, retryable=False),
            "other": node("echo"),
            "after-bad": node("echo", "bad"),
            "after-other": node("echo", "other"),
        },
        "failure_policy": "fail_fast",
    }
    workflow_id = flows.create(body)
    ids = ids_of(flows.view(workflow_id))
    queued = flows.queued()
    assert sorted(queued) == sorted([ids["bad"], ids["other"]])
    assert flows.deliver(ids["bad"]) is Outcome.FAILED
    view = flows.view(workflow_id)
    assert view.status == "failed"
    statuses = {name: n.status for name, n in view.nodes.items()}
    assert statuses == {
        "bad": TaskStatus.FAILED,
        "other": TaskStatus.CANCELLED,
        "after-bad": TaskStatus.CANCELLED,
        "after-other": TaskStatus.CANCELLED,
    }
    # The cancelled root's message still arrives: it runs nothing.
    assert flows.deliver(ids["other"]) is Outcome.SKIPPED
    assert flows.drain() == []
    assert flows.view(workflow_id).status == "failed"


def test_continue_lets_an_independent_branch_finish(flows: Flows) -> None:
    body = {
        "nodes": {
            "bad": node("fail", times=5, retryable=False),
            "other": node("echo", i=1),
            "after-bad": node("echo", "bad"),
            "after-after-bad": node("echo", "after-bad"),
            "after-other": node("echo", "other"),
        },
        "failure_policy": "continue",
    }
    workflow_id = flows.create(body)
    ids = ids_of(flows.view(workflow_id))
    flows.drain()
    view = flows.view(workflow_id)
    statuses = {name: n.status for name, n in view.nodes.items()}
    assert statuses == {
        "bad": TaskStatus.FAILED,
        "other": TaskStatus.SUCCEEDED,
        "after-bad": TaskStatus.FAILED,
        "after-after-bad": TaskStatus.FAILED,
        "after-other": TaskStatus.SUCCEEDED,
    }
    assert view.nodes["after-bad"].error_code == "dependency-failed"
    assert view.status == "failed"
    assert flows.pipeline.status.get(TENANT, ids["after-other"]).attempts == 1


def test_cancel_stops_every_unfinished_node_and_is_idempotent(flows: Flows) -> None:
    workflow_id = flows.create(DIAMOND)
    ids = ids_of(flows.view(workflow_id))
    flows.queued()
    assert flows.deliver(ids["a"]) is Outcome.SUCCEEDED
    view = flows.service.cancel(TENANT, workflow_id)
    assert view.status == "cancelled"
    assert view.cancelled_at is not None
    assert {n: v.status for n, v in view.nodes.items()} == {
        "a": TaskStatus.SUCCEEDED,
        "b": TaskStatus.CANCELLED,
        "c": TaskStatus.CANCELLED,
        "d": TaskStatus.CANCELLED,
    }
    assert flows.service.cancel(TENANT, workflow_id) == view
    # b and c were started by a's success: their messages run nothing now.
    assert {flows.deliver(t) for t in flows.queued()} <= {Outcome.SKIPPED}
    assert flows.view(workflow_id) == view


def test_a_retried_create_is_idempotent(flows: Flows) -> None:
    first = flows.service.create(TENANT, DIAMOND, "wf-key-1")
    again = flows.service.create(TENANT, DIAMOND, "wf-key-1")
    assert (again.workflow_id, again.replayed) == (first.workflow_id, True)
    assert not first.replayed
    with pytest.raises(IdempotencyMismatch):
        flows.service.create(TENANT, {**DIAMOND, "failure_policy": "continue"}, "wf-key-1")
    # One root published, once; four node tasks in all.
    ids = ids_of(flows.view(first.workflow_id))
    assert flows.queued() == [ids["a"]]
    from google.cloud.firestore import FieldFilter

    nodes = flows.pipeline.db.collection("tasks").where(
        filter=FieldFilter("workflow_id", "==", first.workflow_id)
    )
    assert len(list(nodes.stream())) == 4


def test_a_creation_cut_short_is_finished_by_its_retry(flows: Flows) -> None:
    # A chain of 300: 599 writes, more than one commit. The first request dies after its
    # first commit; the retry (same key) stores the rest under the same node ids.
    names = [f"n{i}" for i in range(300)]
    body = {"nodes": {n: node("echo", *names[i - 1 : i]) for i, n in enumerate(names)}}
    original = flows.store.commit
    calls = {"n": 0}

    def dies(writes: Any) -> None:
        calls["n"] += 1
        raise Unavailable("the function was stopped")

    flows.store.commit = dies  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        flows.service.create(TENANT, body, "wf-chain")
    assert calls["n"] == 1
    flows.store.commit = original  # type: ignore[method-assign]
    snap = next(iter(flows.store.page(TENANT, limit=1, page_token=None)[0]))
    assert snap.get("creating") is True
    assert flows.view(snap.workflow_id).status == "running"
    assert flows.queued() == []  # nothing ran: the root is stored last
    replay = flows.service.create(TENANT, body, "wf-chain")
    assert (replay.workflow_id, replay.replayed) == (snap.workflow_id, True)
    view = flows.view(replay.workflow_id)
    assert all(n.type == "echo" for n in view.nodes.values())
    assert flows.queued() == [view.nodes["n0"].task_id]


def test_workflows_are_listed_per_tenant_newest_first(flows: Flows) -> None:
    made = [flows.create(DIAMOND) for _ in range(3)]
    page = flows.service.list(TENANT, {"limit": "2"})
    assert [w.workflow_id for w in page.workflows] == made[::-1][:2]
    assert page.workflows[0].counts == {
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "unfinished": 4,
    }
    assert page.next_page_token is not None
    rest = flows.service.list(TENANT, {"limit": "2", "page_token": page.next_page_token})
    assert [w.workflow_id for w in rest.workflows] == [made[0]]
    assert rest.next_page_token is None
    assert flows.service.list("globex", {}).workflows == []
    from shared.errors import NotFound

    with pytest.raises(NotFound):
        flows.service.get("globex", made[0])


def test_firestore_cost_per_node(flows: Flows, capsys: pytest.CaptureFixture[str]) -> None:
    """What a workflow costs in Firestore: creation batched, nothing hot while it runs."""
    n = 50
    # A fan-in: 49 independent roots and one sink depending on them all.
    names = [f"r{i}" for i in range(n - 1)]
    body = {"nodes": {**{r: node("echo") for r in names}, "sink": node("echo", *names)}}
    flows.meter.reset()
    workflow_id = flows.create(body)
    created = (flows.meter.commits, flows.meter.writes, flows.meter.reads)
    flows.meter.reset()
    flows.drain()
    ran = (flows.meter.commits, flows.meter.writes, flows.meter.reads)
    assert flows.meter.workflow_writes == 0  # no node's end rewrites the workflow document
    flows.meter.reset()
    assert flows.view(workflow_id).status == "succeeded"
    read = (flows.meter.commits, flows.meter.writes, flows.meter.reads)
    with capsys.disabled():
        print(
            f"\nworkflow of {n} nodes, {n - 1} edges: create commits/writes/reads {created}; "
            f"run {ran}; GET {read}"
        )
    # Creation: the workflow document, n tasks and one index entry per edge, in one commit.
    assert created[0] == 1, created
    assert created[1] == 1 + n + (n - 1)
    # Reading a workflow: its document and each node's, no writes.
    assert read == (0, 0, 1 + n)
    # Running: each node's lease and result (2 commits, as any task), and per edge one
    # record that the dependency succeeded; the last one also starts the sink.
    assert (ran[0], ran[1]) == (3 * n, 3 * n), ran
    assert ran[2] <= 6 * n, ran


class Listening(WebhookEvents):
    """The real outbox, as if the tenant had an endpoint for workflow.finished."""

    def __init__(self, store: FirestoreWebhookStore) -> None:
        super().__init__(
            EndpointDirectory(lambda tenant_id: [], ttl_s=30),
            store,
            Recorded(),  # type: ignore[arg-type]
            retention=timedelta(days=1),
        )

    def wants_workflow_finished(self, tenant_id: str) -> bool:
        return True


class Recorded:
    def __init__(self) -> None:
        self.events: list[str] = []

    def event(self, tenant_id: str, event_id: str) -> bool:
        self.events.append(event_id)
        return True


def _joins(flows: Flows) -> Joins:
    events = flows.pipeline.repository.events
    assert isinstance(events, AllEvents)
    joins = events.followers[1]
    assert isinstance(joins, Joins)
    return joins


def test_the_last_node_to_end_stages_workflow_finished_once(flows: Flows) -> None:
    store = FirestoreWebhookStore(flows.pipeline.db)
    outbox = Listening(store)
    repository = flows.pipeline.repository
    joins = _joins(flows)
    repository.events = AllEvents(WorkflowEvents(repository, joins, outbox), joins)
    workflow_id = flows.create(DIAMOND)
    delivered = flows.drain()
    assert len(delivered) == 4
    staged = [
        s.to_dict()
        for s in flows.pipeline.db.collection("webhook_events").stream()
        if (s.to_dict() or {}).get("workflow_id") == workflow_id
    ]
    assert len(staged) == 1, staged  # three nodes ended before the last: none staged it
    (event,) = staged
    assert event["type"] == "workflow.finished"
    assert event["task_id"] == workflow_id
    assert outbox._notifier.events == [workflow_event_id(workflow_id)]  # type: ignore[attr-defined]
    # The reconciler finding it finished (say, the follow-up was lost) stages nothing new.
    snapshot = flows.store.read(workflow_id)
    assert snapshot is not None
    WorkflowEvents(repository, joins, outbox)._check(snapshot, datetime.now(UTC))
    assert outbox._notifier.events == [workflow_event_id(workflow_id)]  # type: ignore[attr-defined]
    # What its deliveries send: the workflow's view, as GET /workflows/{id} answers.
    bodies = StatusBodies(None, flows.pipeline.db, None, lambda: flows.service)
    assert json.loads(bodies.workflow_body(TENANT, workflow_id)) == json.loads(
        json.dumps(flows.view(workflow_id).to_json(), default=str)
    )


def test_a_lost_follow_up_leaves_workflow_finished_to_the_reconciler(flows: Flows) -> None:
    store = FirestoreWebhookStore(flows.pipeline.db)
    outbox = Listening(store)
    repository = flows.pipeline.repository
    joins = _joins(flows)
    # Nodes run with no one listening, as if every follow-up had been lost.
    workflow_id = flows.create(DIAMOND)
    flows.drain()
    assert outbox._notifier.events == []  # type: ignore[attr-defined]
    snapshot = flows.store.read(workflow_id)
    assert snapshot is not None
    WorkflowEvents(repository, joins, outbox)._check(snapshot, datetime.now(UTC))
    assert outbox._notifier.events == [workflow_event_id(workflow_id)]  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _no_leftovers(flows: Flows) -> Iterator[None]:
    yield
    with contextlib.suppress(Exception):
        flows.pipeline.pull(flows.pipeline.tasks_sub)
