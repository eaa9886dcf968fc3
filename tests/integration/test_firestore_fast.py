"""`FastClient` writes on the Firestore emulator: what it stores, and its preconditions hold."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound
from google.cloud import firestore

from shared.firestore_fast import FastClient
from tests.integration.conftest import PROJECT

AT = datetime.datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=datetime.UTC)
DOC = {
    "status": "queued",
    "attempts": 0,
    "ratio": 0.25,
    "flag": False,
    "gone": None,
    "payload": b"\x00sealed\xff",
    "created_at": AT,
    "hold": {"key": "k", "until": AT, "tags": ["a", 2, None], "empty": {}},
    "order": [],
}


@pytest.fixture
def clients(emulators_clean: dict[str, str]) -> tuple[FastClient, firestore.Client]:
    return FastClient(project=PROJECT), firestore.Client(project=PROJECT)


def test_what_the_fast_client_writes_reads_back_as_written(
    clients: tuple[FastClient, firestore.Client],
) -> None:
    fast, library = clients
    fast.collection("tasks").document("t1").create(DOC)
    library.collection("tasks").document("t2").create(DOC)
    mine, theirs = (
        c.collection("tasks").document(t).get() for c, t in ((fast, "t1"), (library, "t2"))
    )
    assert mine.to_dict() == theirs.to_dict() == DOC
    with pytest.raises(AlreadyExists):
        fast.collection("tasks").document("t1").create({"status": "again"})


def test_updates_keep_their_preconditions(clients: tuple[FastClient, firestore.Client]) -> None:
    fast, _ = clients
    ref = fast.collection("tasks").document("t1")
    created = ref.create(DOC)
    later = ref.update(
        {"status": "running", "attempts": 1, "hold": {"key": "x"}},
        option=fast.write_option(last_update_time=created.update_time),
    )
    got = ref.get()
    assert got.get("status") == "running"
    assert got.get("hold") == {"key": "x"}  # a map value replaces the map, as the library's
    assert got.get("payload") == DOC["payload"]  # fields not named are left alone
    with pytest.raises(FailedPrecondition):  # the version it saw is no longer the document's
        ref.update(
            {"status": "stale"}, option=fast.write_option(last_update_time=created.update_time)
        )
    batch = fast.batch()
    batch.update(
        ref, {"status": "done"}, option=fast.write_option(last_update_time=later.update_time)
    )
    batch.commit()
    assert ref.get().get("status") == "done"
    with pytest.raises(NotFound):  # an update without an option still needs the document
        fast.collection("tasks").document("missing").update({"status": "x"})


def test_commits_with_a_deadline_map_the_emulators_refusals_as_the_library_does(
    clients: tuple[FastClient, firestore.Client],
) -> None:
    from shared.clients import WORKER_CALL

    fast, _ = clients
    sent = []
    plain_commit = fast.plain_commit

    def spy(request: object, **kwargs: Any) -> object:
        sent.append(request)
        return plain_commit(request, **kwargs)

    fast.plain_commit = spy  # type: ignore[method-assign]
    deadline = WORKER_CALL.kwargs()
    ref = fast.collection("tasks").document("t1")
    created = ref.create(DOC, **deadline)
    assert isinstance(created.update_time, datetime.datetime)
    with pytest.raises(AlreadyExists):
        ref.create(DOC, **deadline)
    later = ref.update(
        {"status": "running"},
        option=fast.write_option(last_update_time=created.update_time),
        **deadline,
    )
    assert later.update_time > created.update_time
    with pytest.raises(FailedPrecondition):
        ref.update(
            {"status": "stale"},
            option=fast.write_option(last_update_time=created.update_time),
            **deadline,
        )
    with pytest.raises(NotFound):
        fast.collection("tasks").document("missing").update({"status": "x"}, **deadline)
    assert len(sent) == 5  # every one of them went the plain way
    assert ref.get().get("status") == "running"


def test_reads_with_a_deadline_answer_as_the_librarys_reads(
    clients: tuple[FastClient, firestore.Client],
) -> None:
    from shared.clients import WORKER_CALL

    fast, library = clients
    asked = []
    plain_get = fast.plain_get

    def spy(path: str, **kwargs: Any) -> object:
        asked.append(path)
        return plain_get(path, **kwargs)

    fast.plain_get = spy  # type: ignore[method-assign]
    deadline = WORKER_CALL.kwargs()
    fast.collection("tasks").document("t1").create(DOC)
    mine = fast.collection("tasks").document("t1").get(**deadline)
    theirs = library.collection("tasks").document("t1").get(**deadline)
    assert mine.exists
    assert mine.to_dict() == theirs.to_dict() == DOC
    assert mine.update_time == theirs.update_time
    assert mine.create_time == theirs.create_time
    # Its version is one a conditional write can name.
    fast.collection("tasks").document("t1").update(
        {"status": "running"}, option=fast.write_option(last_update_time=mine.update_time)
    )
    missing = fast.collection("tasks").document("missing").get(**deadline)
    assert not missing.exists
    assert missing.to_dict() is None
    assert asked == [
        f"projects/{PROJECT}/databases/(default)/documents/tasks/t1",
        f"projects/{PROJECT}/databases/(default)/documents/tasks/missing",
    ]
