"""Firestore calls built straight from and into protobuf messages, without proto-plus.

`google-cloud-firestore` builds every value it writes through proto-plus
wrappers, at 4-11 µs a value plus the update mask's field paths: a task's
claim and its outcome (7-12 fields each) cost the worker ~0.9 ms of CPU per
delivery, and a task's creation ~0.5 ms per submit. `FastWriteBatch` builds
plain values (None, bool, int, float, str, bytes, datetimes, and dicts and
lists of those) directly into the messages the library would have built.
Anything else (transforms such as `Increment`, sentinels, references,
dotted field paths in an update) takes the library's own path, unchanged.

A commit given its deadline (`retry=` and `timeout=`, as every AIA call is)
sends the raw `CommitRequest` through the same api_core wrapping as the
generated client (error mapping, retry, deadline, metadata): ~0.5 ms of CPU
per commit less, the proto-plus request and answer and the transport's
debug-log interceptor.

A whole-document read given its deadline is one unary `GetDocument` instead
of the library's `BatchGetDocuments` stream (a streaming call, its iterator
and a channel thread per read): ~0.5 ms of CPU and of wall time less per
read, on every status read and key lookup. Its snapshot is the library's,
decoded by the library's own helpers; it has no `read_time`, which the
unary call does not return. Projections, transactions and reads at a past
time take the library's path.

`tests/unit/test_firestore_fast.py` checks that both paths build equal
messages and send equal calls.

Importing this module imports the Firestore library: only
`shared.clients.firestore_client` does, when the client is first needed.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions, gapic_v1
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1._helpers import LastUpdateOption
from google.cloud.firestore_v1.base_document import BaseDocumentReference, DocumentSnapshot
from google.cloud.firestore_v1.batch import WriteBatch
from google.cloud.firestore_v1.client import Client
from google.cloud.firestore_v1.document import DocumentReference
from google.cloud.firestore_v1.types import common, document, firestore, write
from google.protobuf import struct_pb2, timestamp_pb2
from proto.datetime_helpers import DatetimeWithNanoseconds as ProtoDatetime

_Write = write.Write.pb()
_Document = document.Document.pb()
_Value = document.Value.pb()
_MapValue = document.MapValue.pb()
_ArrayValue = document.ArrayValue.pb()
_DocumentMask = common.DocumentMask.pb()
_Precondition = common.Precondition.pb()
_Timestamp = timestamp_pb2.Timestamp
_CommitRequest = firestore.CommitRequest.pb()
_CommitResponse = firestore.CommitResponse.pb()
_GetDocumentRequest = firestore.GetDocumentRequest.pb()
_COMMIT = "/google.firestore.v1.Firestore/Commit"
_GET_DOCUMENT = "/google.firestore.v1.Firestore/GetDocument"

# A field name an update may use as it is: anything else is a path the library parses.
_SIMPLE_FIELD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*\Z")


class _NotPlain(Exception):
    """A value only the library knows how to write."""


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _timestamp(value: datetime.datetime) -> Any:
    # As the library converts (google.cloud._helpers): naive means UTC, microseconds kept.
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    delta = value - _EPOCH  # days may be negative; seconds and microseconds never are
    return _Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


def _timestamp_of(value: Any) -> Any:
    """A write precondition's time as proto-plus converts it (`_NotPlain` for a string)."""
    if type(value) is ProtoDatetime:
        return value.timestamp_pb()
    if isinstance(value, datetime.datetime):
        # Microseconds only, even from an api_core datetime with nanoseconds: as proto-plus.
        return _Timestamp(seconds=int(value.timestamp()), nanos=value.microsecond * 1000)
    if isinstance(value, _Timestamp):
        return value
    raise _NotPlain


def _map(values: dict[Any, Any]) -> Any:
    return _MapValue(fields=_fields(values))


def _array(values: Any) -> Any:
    return _ArrayValue(values=[encode_value(v) for v in values])


# Exact types only: a subclass (a StrEnum, a BSON binary) may mean something else to the library.
_ENCODERS: dict[type, Callable[[Any], Any]] = {
    type(None): lambda _: _Value(null_value=struct_pb2.NULL_VALUE),
    bool: lambda v: _Value(boolean_value=v),
    int: lambda v: _Value(integer_value=v),
    float: lambda v: _Value(double_value=v),
    str: lambda v: _Value(string_value=v),
    bytes: lambda v: _Value(bytes_value=v),
    DatetimeWithNanoseconds: lambda v: _Value(timestamp_value=v.timestamp_pb()),
    datetime.datetime: lambda v: _Value(timestamp_value=_timestamp(v)),
    ProtoDatetime: lambda v: _Value(timestamp_value=_timestamp(v)),  # as the library: micros
    dict: lambda v: _Value(map_value=_map(v)),
    list: lambda v: _Value(array_value=_array(v)),
    tuple: lambda v: _Value(array_value=_array(v)),
}


def encode_value(value: Any) -> Any:
    """A plain Python value as a raw `google.firestore.v1.Value`; `_NotPlain` otherwise."""
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        raise _NotPlain
    return encoder(value)


def _fields(values: dict[Any, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if type(key) is not str or not key:  # the library refuses an empty name
            raise _NotPlain
        out[key] = encode_value(value)
    return out


class FastWriteBatch(WriteBatch):
    """A `WriteBatch` whose creates, updates and commit skip proto-plus."""

    def commit(
        self, retry: Any = gapic_v1.method.DEFAULT, timeout: float | None = None
    ) -> list[Any]:
        client = self._client
        if (
            retry is gapic_v1.method.DEFAULT
            or timeout is None
            or not isinstance(client, FastClient)
        ):
            # The library's defaults (a minute of retries) are the library's call to make.
            return super().commit(retry=retry, timeout=timeout)
        request = _CommitRequest(
            database=client._database_string, writes=[w._pb for w in self._write_pbs]
        )
        answer = client.plain_commit(request, retry=retry, timeout=timeout)
        response = firestore.CommitResponse.wrap(answer)
        self._write_pbs = []
        self.write_results = results = list(response.write_results)
        self.commit_time = response.commit_time
        return results

    def create(self, reference: BaseDocumentReference, document_data: dict[str, Any]) -> None:
        try:
            fields = _fields(document_data)
        except _NotPlain:
            super().create(reference, document_data)
            return
        path = reference._document_path
        pb = _Write(
            update=_Document(name=path, fields=fields),
            current_document=_Precondition(exists=False),
        )
        self._document_references[path] = reference
        self._add_write_pbs([write.Write.wrap(pb)])

    def update(
        self,
        reference: BaseDocumentReference,
        field_updates: dict[str, Any],
        option: Any = None,
    ) -> None:
        plain = bool(field_updates) and all(
            type(key) is str and _SIMPLE_FIELD.match(key) for key in field_updates
        )
        if option is not None and option.__class__.__name__ == "ExistsOption":
            plain = False  # the library refuses it, with its own message
        fields = None
        if plain:
            try:
                fields = _fields(field_updates)
            except _NotPlain:
                fields = None
        if fields is None:
            super().update(reference, field_updates, option=option)
            return
        path = reference._document_path
        pb = _Write(
            update=_Document(name=path, fields=fields),
            update_mask=_DocumentMask(field_paths=sorted(field_updates)),
        )
        wrapped = write.Write.wrap(pb)
        if option is None:
            pb.current_document.exists = True  # an update needs the document, as the library's
        else:
            option.modify_write(wrapped)
        self._document_references[path] = reference
        self._add_write_pbs([wrapped])


class _LastUpdate(LastUpdateOption):
    """`LastUpdateOption` with its precondition converted once, not at every write."""

    def __init__(self, last_update_time: Any, timestamp: Any) -> None:
        super().__init__(last_update_time)
        self._timestamp = timestamp

    def modify_write(self, write: Any, *unused_args: Any, **unused_kwargs: Any) -> None:
        write._pb.current_document.update_time.CopyFrom(self._timestamp)


class _DecodedSnapshot(DocumentSnapshot[Any]):
    """The library's snapshot of data decoded for it alone: kept without a defensive copy.

    The library deep-copies the data it is given (and again in `to_dict` and
    `get`, which this keeps); nothing else holds freshly decoded data.
    """

    def __init__(self, reference: Any, data: Any, *, create_time: Any, update_time: Any) -> None:
        self._reference = reference
        self._data = data
        self._exists = True
        self.read_time = None  # the unary call does not return one
        self.create_time = create_time
        self.update_time = update_time


class FastDocumentReference(DocumentReference):
    """A `DocumentReference` whose whole-document reads with a deadline are one unary call."""

    def get(
        self,
        field_paths: Any = None,
        transaction: Any = None,
        retry: Any = gapic_v1.method.DEFAULT,
        timeout: float | None = None,
        *,
        read_time: Any = None,
    ) -> DocumentSnapshot[Any]:
        client = self._client
        if (
            field_paths is not None
            or transaction is not None
            or read_time is not None
            or retry is gapic_v1.method.DEFAULT
            or timeout is None
            or not isinstance(client, FastClient)
        ):
            return super().get(field_paths, transaction, retry, timeout, read_time=read_time)
        found = client.plain_get(self._document_path, retry=retry, timeout=timeout)
        if found is None:
            return DocumentSnapshot(
                self, None, exists=False, read_time=None, create_time=None, update_time=None
            )
        return _DecodedSnapshot(
            self,
            _helpers.decode_dict(found.fields, client),
            # As proto-plus hands them to the library's snapshots.
            create_time=ProtoDatetime.from_timestamp_pb(found.create_time),
            update_time=ProtoDatetime.from_timestamp_pb(found.update_time),
        )


class FastClient(Client):
    """A Firestore client of fast batches (so `create`/`update`) and fast document reads."""

    def batch(self) -> FastWriteBatch:
        return FastWriteBatch(self)

    def document(self, *document_path: str) -> FastDocumentReference:
        # Every reference (collection(...).document(...) too) is made here.
        return FastDocumentReference(*self._document_path_helper(*document_path), client=self)

    def _plain_rpc(self, method: str, request_type: Any, response_type: Any) -> Any:
        api = self._firestore_api
        api._validate_universe_domain()  # as the generated client checks before its calls
        stub = self._transport.grpc_channel.unary_unary(
            method,
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        # The generated client's own wrapping: error mapping, retry, per-call deadline, user agent.
        return gapic_v1.method.wrap_method(  # type: ignore[no-untyped-call]
            stub, default_retry=None, default_timeout=None, client_info=self._client_info
        )

    @functools.cached_property
    def _plain_commit_rpc(self) -> Any:
        return self._plain_rpc(_COMMIT, _CommitRequest, _CommitResponse)

    @functools.cached_property
    def _plain_get_rpc(self) -> Any:
        return self._plain_rpc(_GET_DOCUMENT, _GetDocumentRequest, _Document)

    def _metadata(self, routing: tuple[str, str]) -> tuple[Any, ...]:
        # The database's resource prefix, and the routing header the generated client adds.
        return (
            *self._rpc_metadata,
            gapic_v1.routing_header.to_grpc_metadata((routing,)),  # type: ignore[no-untyped-call]
        )

    def plain_commit(self, request: Any, *, retry: Any, timeout: float) -> Any:
        """`Commit` of a raw `CommitRequest`, sent as the generated client sends it; the raw answer.

        The same channel (credentials), metadata (the database's resource prefix and
        routing header) and api_core wrapping as `FirestoreClient.commit`, without
        proto-plus building the request and the answer, nor the transport's debug-log
        interceptor.
        """
        metadata = self._metadata(("database", request.database))
        return self._plain_commit_rpc(request, retry=retry, timeout=timeout, metadata=metadata)

    def plain_get(self, path: str, *, retry: Any, timeout: float) -> Any | None:
        """`GetDocument` of the whole document at `path`, as `FirestoreClient.get_document`
        sends it: the raw `Document`, or None if there is none."""
        request = _GetDocumentRequest(name=path)
        try:
            return self._plain_get_rpc(
                request, retry=retry, timeout=timeout, metadata=self._metadata(("name", path))
            )
        except exceptions.NotFound:
            return None

    @staticmethod
    def write_option(**kwargs: Any) -> Any:
        if set(kwargs) == {"last_update_time"}:
            try:
                timestamp = _timestamp_of(kwargs["last_update_time"])
            except _NotPlain:
                pass
            else:
                return _LastUpdate(kwargs["last_update_time"], timestamp)
        return Client.write_option(**kwargs)
