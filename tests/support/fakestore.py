"""An in-memory stand-in for the slice of the Firestore client that flow control uses.

Commits are atomic and serialised: every precondition of a batch (`create` on
an existing document, `update` of a missing one, a `last_update_time` that is
not the document's) is checked before anything is applied, and the first
failing write names the error, as on the emulator. `Increment`, nested-map
merges and `DELETE_FIELD` behave as Firestore's. Queries support equality
filters only. Good for fast invariant tests under threads; the emulator tests
prove the same against the real thing.
"""

from __future__ import annotations

import copy
import itertools
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound
from google.cloud.firestore import DELETE_FIELD, Increment

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Option:
    last_update_time: Any


@dataclass(frozen=True)
class WriteResult:
    update_time: Any


class Snap:
    def __init__(self, ref: Ref, doc: dict[str, Any] | None, update_time: Any) -> None:
        self.reference = ref
        self.id = ref.id
        self.exists = doc is not None
        self._doc = doc
        self.update_time = update_time

    def to_dict(self) -> dict[str, Any] | None:
        return copy.deepcopy(self._doc)

    def get(self, name: str) -> Any:
        return (self._doc or {}).get(name)


class Ref:
    def __init__(self, db: FakeFirestore, collection: str, doc_id: str) -> None:
        self._db = db
        self.collection_name = collection
        self.id = doc_id

    @property
    def key(self) -> tuple[str, str]:
        return (self.collection_name, self.id)

    def get(self, **_: Any) -> Snap:
        return self._db.read(self)

    def create(self, data: dict[str, Any], **_: Any) -> WriteResult:
        batch = self._db.batch()
        batch.create(self, data)
        return batch.commit()[0]

    def set(self, data: dict[str, Any], merge: bool = False, **_: Any) -> WriteResult:
        batch = self._db.batch()
        batch.set(self, data, merge=merge)
        return batch.commit()[0]

    def update(self, data: dict[str, Any], option: Option | None = None, **_: Any) -> WriteResult:
        batch = self._db.batch()
        batch.update(self, data, option=option)
        return batch.commit()[0]


class Query:
    def __init__(self, db: FakeFirestore, collection: str, filters: tuple[Any, ...] = ()) -> None:
        self._db = db
        self._collection = collection
        self._filters = filters

    def where(self, *, filter: Any) -> Query:
        if filter.op_string != "==":
            raise NotImplementedError("the fake supports equality filters only")
        return Query(self._db, self._collection, (*self._filters, filter))

    def document(self, doc_id: str) -> Ref:
        return Ref(self._db, self._collection, doc_id)

    def stream(self, **_: Any) -> list[Snap]:
        return self._db.query(self._collection, self._filters)


class Batch:
    def __init__(self, db: FakeFirestore) -> None:
        self._db = db
        self.writes: list[tuple[str, Ref, dict[str, Any], Any]] = []

    def create(self, ref: Ref, data: dict[str, Any]) -> None:
        self.writes.append(("create", ref, data, None))

    def set(self, ref: Ref, data: dict[str, Any], merge: bool = False) -> None:
        self.writes.append(("merge" if merge else "set", ref, data, None))

    def update(self, ref: Ref, data: dict[str, Any], option: Option | None = None) -> None:
        self.writes.append(("update", ref, data, option))

    def commit(self, **_: Any) -> list[WriteResult]:
        return self._db.apply(self.writes)


class FakeFirestore:
    def __init__(self) -> None:
        self._docs: dict[tuple[str, str], tuple[dict[str, Any], Any]] = {}
        self._lock = threading.Lock()
        self._clock = itertools.count(1)
        self.commits = 0
        self.reads = 0

    def collection(self, name: str) -> Query:
        return Query(self, name)

    def batch(self) -> Batch:
        return Batch(self)

    @staticmethod
    def write_option(*, last_update_time: Any) -> Option:
        return Option(last_update_time)

    def read(self, ref: Ref) -> Snap:
        with self._lock:
            self.reads += 1
            found = self._docs.get(ref.key)
        return Snap(ref, found[0] if found else None, found[1] if found else None)

    def query(self, collection: str, filters: tuple[Any, ...]) -> list[Snap]:
        with self._lock:
            self.reads += 1
            return [
                Snap(Ref(self, c, i), doc, version)
                for (c, i), (doc, version) in sorted(self._docs.items())
                if c == collection and all(doc.get(f.field_path) == f.value for f in filters)
            ]

    def documents(self, collection: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {i: copy.deepcopy(d) for (c, i), (d, _) in self._docs.items() if c == collection}

    def apply(self, writes: list[tuple[str, Ref, dict[str, Any], Any]]) -> list[WriteResult]:
        with self._lock:
            staged = dict(self._docs)
            for kind, ref, _, option in writes:
                current = staged.get(ref.key)
                if kind == "create" and current is not None:
                    raise AlreadyExists(f"{ref.key} exists")  # type: ignore[no-untyped-call]
                if kind == "update" and current is None:
                    raise NotFound(f"{ref.key} does not exist")  # type: ignore[no-untyped-call]
                if option is not None and (
                    current is None or current[1] != option.last_update_time
                ):
                    raise FailedPrecondition(f"{ref.key} changed")  # type: ignore[no-untyped-call]
                staged[ref.key] = (current[0] if current else {}, None)  # placeholder
            # The type Firestore's update times have (the worker's fast path names them).
            version = DatetimeWithNanoseconds.fromtimestamp(
                (_EPOCH + timedelta(microseconds=next(self._clock))).timestamp(), UTC
            )
            for kind, ref, data, _ in writes:
                current = self._docs.get(ref.key)
                base = (
                    {}
                    if kind in ("create", "set") or current is None
                    else copy.deepcopy(current[0])
                )
                self._docs[ref.key] = (_merge(base, data, dotted=kind == "update"), version)
            self.commits += 1
            return [WriteResult(version) for _ in writes]


def _merge(base: dict[str, Any], data: dict[str, Any], *, dotted: bool) -> dict[str, Any]:
    for key, value in data.items():
        path = key.split(".") if dotted else [key]
        target = base
        for part in path[:-1]:
            target = target.setdefault(part, {})
        leaf = path[-1]
        if value is DELETE_FIELD:
            target.pop(leaf, None)
        elif isinstance(value, Increment):
            target[leaf] = (target.get(leaf) or 0) + value.value
        elif isinstance(value, dict) and not dotted:
            existing = target.get(leaf)
            target[leaf] = _merge(
                existing if isinstance(existing, dict) else {}, value, dotted=False
            )
        else:
            target[leaf] = copy.deepcopy(value)
    return base
