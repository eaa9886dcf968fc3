"""`FastClient` builds the very messages and calls the library builds, or defers to it."""

from __future__ import annotations

import datetime
import enum
from typing import Any

import pytest
from google.api_core.datetime_helpers import DatetimeWithNanoseconds as ApiCoreDatetime
from google.auth.credentials import AnonymousCredentials
from google.cloud.firestore_v1 import DELETE_FIELD, SERVER_TIMESTAMP, Increment
from google.cloud.firestore_v1.batch import WriteBatch
from google.cloud.firestore_v1.client import Client
from google.protobuf import timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from proto.datetime_helpers import DatetimeWithNanoseconds as ProtoDatetime

from shared.firestore_fast import FastClient, FastWriteBatch, encode_value
from tests.support.rpc import Recorder

NO_CREDENTIALS = AnonymousCredentials()  # type: ignore[no-untyped-call]
LIBRARY = Client(project="p", credentials=NO_CREDENTIALS)
FAST = FastClient(project="p", credentials=NO_CREDENTIALS)
REF = LIBRARY.document("tasks/t1")

_ZONES = st.sampled_from(
    [None, datetime.UTC, datetime.timezone(datetime.timedelta(hours=-7, minutes=-30))]
)
_NAIVE = st.datetimes(
    min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(2200, 1, 1)
)
DATETIMES = st.one_of(
    st.builds(lambda d, z: d.replace(tzinfo=z), _NAIVE, _ZONES),
    st.builds(
        lambda d, ns: ApiCoreDatetime(  # type: ignore[no-untyped-call]
            *d.timetuple()[:6], nanosecond=ns, tzinfo=datetime.UTC
        ),
        _NAIVE,
        st.integers(0, 999_999_999),
    ),
    st.builds(
        lambda d, us: ProtoDatetime(*d.timetuple()[:6], us, tzinfo=datetime.UTC),
        _NAIVE,
        st.integers(0, 999_999),
    ),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=40),
    DATETIMES,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)
FIELD_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z_0-9]{0,11}", fullmatch=True)
DOCUMENTS = st.dictionaries(FIELD_NAMES, VALUES, min_size=1, max_size=8)
VERSIONS = st.one_of(
    DATETIMES,
    st.builds(
        lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n),
        st.integers(0, 4_000_000_000),
        st.integers(0, 999_999_999),
    ),
)


def _built(batch: WriteBatch) -> list[Any]:
    return [w._pb for w in batch._write_pbs]


def _both(call: str, *args: Any, version: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """What the library's batch and the fast batch build (or raise) for the same call."""
    out: list[Any] = []
    for client, batch in ((LIBRARY, WriteBatch(LIBRARY)), (FAST, FastWriteBatch(FAST))):
        if version is not None:
            kwargs["option"] = client.write_option(last_update_time=version)
        try:
            getattr(batch, call)(*args, **kwargs)
        except Exception as exc:  # the two must fail alike
            out.append((type(exc), str(exc)))
        else:
            out.append(_built(batch))
    return out[0], out[1]


@settings(max_examples=200, deadline=None)
@given(DOCUMENTS)
def test_creates_build_the_librarys_messages(doc: dict[str, Any]) -> None:
    library, fast = _both("create", REF, doc)
    assert fast == library


@settings(max_examples=200, deadline=None)
@given(DOCUMENTS, st.one_of(st.none(), VERSIONS))
def test_updates_build_the_librarys_messages(doc: dict[str, Any], version: Any) -> None:
    library, fast = _both("update", REF, doc, version=version)
    assert fast == library


class Colour(enum.StrEnum):
    RED = "red"


@pytest.mark.parametrize(
    "doc",
    [
        {"n": Increment(1), "at": SERVER_TIMESTAMP},
        {"gone": DELETE_FIELD, "kept": 1},
        {"counts.echo": 3},  # a dotted key is a field path in an update
        {"colour": Colour.RED},
        {"ref": LIBRARY.document("tasks/t2")},
        {"nested": {"inner": Increment(2)}},
        {"weird": {1: "non-string key"}},
        {"a": {1, 2}},
        {},
    ],
    ids=lambda d: ",".join(map(str, d)) or "empty",
)
@pytest.mark.parametrize("call", ["create", "update"])
def test_what_is_not_plain_goes_through_the_library(call: str, doc: dict[str, Any]) -> None:
    library, fast = _both(call, REF, doc)
    assert fast == library


def test_an_exists_option_is_refused_as_the_library_refuses_it() -> None:
    for client, batch in ((LIBRARY, WriteBatch(LIBRARY)), (FAST, FastWriteBatch(FAST))):
        with pytest.raises(ValueError, match="explicit write option"):
            batch.update(REF, {"a": 1}, option=client.write_option(exists=True))


def test_the_client_hands_out_fast_batches_for_every_write_path() -> None:
    assert isinstance(FAST.batch(), FastWriteBatch)
    # DocumentReference.update and .create build their batch through client.batch().
    batch, _ = FAST.document("tasks/t1")._prep_update({"a": 1})
    assert isinstance(batch, FastWriteBatch)


def test_a_commit_with_its_deadline_sends_the_librarys_call_without_proto_plus() -> None:
    from google.api_core import retry as retries
    from google.cloud.firestore_v1.types import firestore as firestore_types

    answer = firestore_types.CommitResponse(
        write_results=[{"update_time": {"seconds": 1_800_000_000, "nanos": 123_000}}],
        commit_time={"seconds": 1_800_000_000, "nanos": 123_000},
    )
    client = FastClient(project="p", database="tasks-db", credentials=NO_CREDENTIALS)
    transport = client._firestore_api._transport
    library = Recorder(answer)
    transport._wrapped_methods[transport.commit] = library
    plain = Recorder(firestore_types.CommitResponse.pb(answer))
    client.__dict__["_plain_commit_rpc"] = plain  # the cached RPC, replaced
    retry = retries.Retry(timeout=2.0)
    doc = {"status": "running", "attempts": 1, "at": datetime.datetime(2026, 12, 2)}
    version = ApiCoreDatetime(2026, 12, 2, tzinfo=datetime.UTC)  # type: ignore[no-untyped-call]

    results = []
    for batch in (WriteBatch(client), FastWriteBatch(client)):
        batch.update(
            client.document("tasks/t1"), doc, option=client.write_option(last_update_time=version)
        )
        results.append((batch.commit(retry=retry, timeout=1.5), batch.commit_time))
    (library_request, library_kwargs), (plain_request, plain_kwargs) = library.calls + plain.calls
    assert firestore_types.CommitRequest.pb(library_request) == plain_request
    assert (
        library_kwargs
        == plain_kwargs
        == {
            "retry": retry,
            "timeout": 1.5,
            "metadata": library_kwargs["metadata"],
        }
    )
    assert ("x-goog-request-params", "database=projects/p/databases/tasks-db") in (
        plain_kwargs["metadata"]
    )
    assert results[0] == results[1]
    assert isinstance(results[1][0][0].update_time, datetime.datetime)

    # Without a deadline the library's own defaults apply, through the library.
    FastWriteBatch(client).commit()
    assert len(library.calls) == 2
    assert len(plain.calls) == 1


class Raising:
    """Stands in for the RPC: refuses every call with `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise self.error


def _stored_document() -> Any:
    from google.cloud.firestore_v1.types import document

    pb = document.Document.pb()(name="projects/p/databases/tasks-db/documents/tasks/t1")
    pb.create_time.seconds, pb.create_time.nanos = 1_799_999_995, 7_000
    pb.update_time.seconds, pb.update_time.nanos = 1_800_000_000, 123_456_000
    value = {
        "status": "running",
        "attempts": 2,
        "payload": b"\x00sealed",
        "at": datetime.datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=datetime.UTC),
        "hold": {"tags": ["a", None, 1.5], "empty": {}},
        "gone": None,
    }
    for name, v in value.items():
        pb.fields[name].CopyFrom(encode_value(v))
    return pb


def test_a_read_with_its_deadline_is_the_librarys_get_document_call_and_snapshot() -> None:
    from google.api_core import retry as retries
    from google.cloud.firestore_v1.base_client import _parse_batch_get
    from google.cloud.firestore_v1.types import document
    from google.cloud.firestore_v1.types import firestore as firestore_types

    client = FastClient(project="p", database="tasks-db", credentials=NO_CREDENTIALS)
    stored = _stored_document()
    transport = client._firestore_api._transport
    library = Recorder(document.Document.wrap(stored))
    transport._wrapped_methods[transport.get_document] = library
    plain = Recorder(stored)
    client.__dict__["_plain_get_rpc"] = plain  # the cached RPC, replaced
    retry = retries.Retry(timeout=2.0)
    ref = client.collection("tasks").document("t1")

    mine = ref.get(retry=retry, timeout=1.5)
    client._firestore_api.get_document(
        request={"name": ref._document_path},
        retry=retry,
        timeout=1.5,
        metadata=client._rpc_metadata,
    )
    (library_request, library_kwargs), (plain_request, plain_kwargs) = library.calls + plain.calls
    assert firestore_types.GetDocumentRequest.pb(library_request) == plain_request
    assert library_kwargs == plain_kwargs  # retry, timeout and the same metadata
    assert (
        "x-goog-request-params",
        "name=projects/p/databases/tasks-db/documents/tasks/t1",
    ) in plain_kwargs["metadata"]

    # The snapshot the library makes of the same document in a BatchGetDocuments answer.
    theirs = _parse_batch_get(
        get_doc_response=firestore_types.BatchGetDocumentsResponse(found=stored),
        reference_map={ref._document_path: ref},
        client=client,
    )
    assert mine.exists
    assert theirs.exists
    assert mine == theirs
    assert mine.to_dict() == theirs.to_dict()
    assert mine.get("hold") == theirs.get("hold")
    handed = mine.to_dict()
    assert handed is not None
    handed["hold"]["tags"].append("changed")  # a copy, as the library hands out
    mine.get("hold")["empty"]["x"] = 1
    assert mine.to_dict() == theirs.to_dict()
    assert mine.reference is ref
    for stamp in ("update_time", "create_time"):
        assert getattr(mine, stamp) == getattr(theirs, stamp)
        assert type(getattr(mine, stamp)) is type(getattr(theirs, stamp))
    assert mine.read_time is None  # the unary call does not return one


def test_a_missing_document_reads_as_missing() -> None:
    from google.api_core import exceptions
    from google.api_core import retry as retries

    client = FastClient(project="p", credentials=NO_CREDENTIALS)
    refusing = Raising(exceptions.NotFound("no document"))  # type: ignore[no-untyped-call]
    client.__dict__["_plain_get_rpc"] = refusing
    snap = client.document("tasks/none").get(retry=retries.Retry(timeout=1.0), timeout=0.5)
    assert refusing.calls == 1
    assert not snap.exists
    assert snap.to_dict() is None
    assert snap.update_time is None


def test_reads_the_unary_call_cannot_make_go_through_the_library() -> None:
    from google.api_core import retry as retries
    from google.cloud.firestore_v1.types import firestore as firestore_types

    client = FastClient(project="p", credentials=NO_CREDENTIALS)
    plain = Recorder(_stored_document())
    client.__dict__["_plain_get_rpc"] = plain
    transport = client._firestore_api._transport
    missing = firestore_types.BatchGetDocumentsResponse(
        missing="projects/p/databases/(default)/documents/tasks/t1"
    )
    streamed = []

    def batch_get(request: Any, **kwargs: Any) -> Any:
        streamed.append(request)
        return iter([missing])

    transport._wrapped_methods[transport.batch_get_documents] = batch_get
    ref = client.document("tasks/t1")
    retry = retries.Retry(timeout=1.0)
    ref.get()  # the library's default retries
    ref.get(retry=retry)  # no timeout
    ref.get(["status"], retry=retry, timeout=0.5)  # a projection
    ref.get(retry=retry, timeout=0.5, read_time=datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC))
    assert len(streamed) == 4
    assert plain.calls == []
