"""A workflow is validated whole before anything is stored: every refusal names the node."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import ValidationFailed
from shared.tasks.registry import builtin_registry
from shared.workflows.dag import node_task_id, parse_workflow, topological_order
from shared.workflows.models import MAX_NODES


def echo(*deps: str) -> dict[str, Any]:
    return {"type": "echo", "payload": {}, "depends_on": list(deps)}


def refused(body: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as caught:
        parse_workflow(body, builtin_registry(), diagnostic=False)
    assert caught.value.status == 422
    return caught.value


def test_a_diamond_is_ordered_dependencies_first() -> None:
    body = {"nodes": {"d": echo("b", "c"), "b": echo("a"), "c": echo("a"), "a": echo()}}
    plan = parse_workflow(body, builtin_registry(), diagnostic=False)
    assert plan.order == ("a", "b", "c", "d")
    assert plan.roots == ("a",)
    assert plan.depends_on["d"] == ("b", "c")
    assert plan.dependents() == {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
    assert plan.failure_policy == "fail_fast"


def test_a_cycle_is_refused_naming_its_nodes() -> None:
    body = {"nodes": {"a": echo(), "b": echo("a", "d"), "c": echo("b"), "d": echo("c")}}
    error = refused(body)
    assert error.extra["cycle"] == ["b", "d", "c"]
    assert error.field == "nodes.b.depends_on"
    assert "'b'" in error.detail


def test_a_node_depending_on_itself_is_a_cycle() -> None:
    error = refused({"nodes": {"a": echo(), "self": echo("self")}})
    assert (error.field, error.extra["cycle"]) == ("nodes.self.depends_on", ["self"])


def test_a_missing_dependency_is_refused_naming_the_node() -> None:
    error = refused({"nodes": {"a": echo(), "b": echo("a", "ghost")}})
    assert error.field == "nodes.b.depends_on"
    assert "'ghost'" in error.detail


def test_an_unknown_type_is_refused_naming_the_node() -> None:
    error = refused({"nodes": {"a": echo(), "b": {"type": "no.such", "payload": {}}}})
    assert error.field is not None
    assert error.field.startswith("nodes.b.")
    assert "'b'" in error.detail


def test_an_invalid_payload_is_refused_naming_the_node_and_field() -> None:
    body = {"nodes": {"nap": {"type": "sleep", "payload": {"seconds": 31}}}}
    error = refused(body)
    assert error.field == "nodes.nap.payload.seconds"


def test_fields_a_node_cannot_have_are_refused() -> None:
    body = {"nodes": {"a": {"type": "echo", "payload": {}, "delay_s": 5}}}
    assert refused(body).field == "nodes.a.delay_s"
    assert refused({"nodes": {"A!": echo()}}).field == "nodes.A!"
    assert refused({"nodes": {}}).field == "nodes"
    assert refused({"nodes": {"a": echo()}, "failure_policy": "yolo"}).field == "failure_policy"
    assert refused({"nodes": {"a": echo()}, "extra": 1}).field == "extra"
    assert refused([]).field == "body"


def test_a_thousand_nodes_are_accepted_and_one_more_refused() -> None:
    # A chain: every node but the first depends on the one before it.
    names = [f"n{i}" for i in range(MAX_NODES)]
    nodes = {name: echo(*names[i - 1 : i]) for i, name in enumerate(names)}
    plan = parse_workflow({"nodes": nodes}, builtin_registry(), diagnostic=False)
    assert len(plan.order) == MAX_NODES
    assert plan.order == tuple(names)
    nodes["one-more"] = echo()
    assert refused({"nodes": nodes}).field == "nodes"


def test_node_task_ids_are_deterministic_and_distinct() -> None:
    assert node_task_id("w1", "a") == node_task_id("w1", "a")
    ids = {node_task_id(w, n) for w in ("w1", "w2") for n in ("a", "b")}
    assert len(ids) == 4
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_ties_keep_the_request_order() -> None:
    assert topological_order({"z": (), "y": (), "x": ("z",)}) == ("z", "y", "x")
