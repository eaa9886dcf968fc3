"""`DeferredModel`: schemas built at first use must all build, and build safely under threads."""

from __future__ import annotations

import importlib
import pkgutil
import threading

import pydantic

import shared
from shared.deferred import DeferredModel


def _every_model() -> list[type[DeferredModel]]:
    for module in pkgutil.walk_packages(shared.__path__, "shared."):
        importlib.import_module(module.name)
    found: list[type[DeferredModel]] = []
    todo = list(DeferredModel.__subclasses__())
    while todo:
        model = todo.pop()
        found.append(model)
        todo.extend(model.__subclasses__())
    return found


def test_every_model_builds() -> None:
    # Built at import, a broken schema failed every test; deferred, it would fail a request.
    models = _every_model()
    assert len(models) > 50
    for model in models:
        model.model_rebuild(force=True)
        assert model.__pydantic_complete__, model.__qualname__
        model.model_json_schema()


def test_the_pinned_pydantic_locks_the_first_build() -> None:
    # Before 2.14, concurrent first uses of a deferred model could validate with its
    # parent's validator (pydantic/pydantic#13438): the functions serve requests on threads.
    assert hasattr(pydantic.main, "_rebuild_lock")


def test_concurrent_first_uses_all_validate() -> None:
    class Inner(DeferredModel):
        n: int

    class Outer(DeferredModel):
        model_config = pydantic.ConfigDict(extra="forbid")

        name: str
        inner: Inner

    start = threading.Barrier(16)
    results: list[Outer] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def first_use(i: int) -> None:
        start.wait()
        try:
            value = Outer.model_validate({"name": f"t{i}", "inner": {"n": i}})
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(value)

    threads = [threading.Thread(target=first_use, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert sorted(r.inner.n for r in results) == list(range(16))
