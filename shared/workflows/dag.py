"""A workflow's graph, validated whole before anything is stored: nodes, dependencies, order.

Pure: no I/O. Each node body goes through `parse_request`, exactly as a submit
does (type, payload, limits), and every problem is a 422 naming the node:
`nodes.<name>.payload.x`, `nodes.<name>.type`, `nodes.<name>.depends_on` for a
dependency that is no node, and for a cycle the nodes on it.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared.errors import AIAError, ValidationFailed
from shared.limits import check_depth
from shared.tasks.models import TaskRequest
from shared.tasks.registry import TaskRegistry
from shared.tasks.submission import parse_request
from shared.workflows.models import MAX_EDGES, MAX_NODES, WorkflowRequest

# What a node may hold: a task request's fields. Anything else a submit may one day
# take (a delay, a schedule) means nothing inside a workflow and is refused.
NODE_FIELDS = frozenset({"type", "payload", "depends_on", "max_attempts", "timeout_s", "priority"})
_PLACEHOLDER = {"type": "-", "payload": {}}


@dataclass(frozen=True)
class Plan:
    """A valid workflow: its nodes (as parsed), their dependencies, a topological order."""

    nodes: dict[str, TaskRequest]
    depends_on: dict[str, tuple[str, ...]]  # node -> the nodes it depends on (no repeats)
    order: tuple[str, ...]  # every dependency before its dependents; ties in request order
    failure_policy: str

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(n for n in self.order if not self.depends_on[n])

    def dependents(self) -> dict[str, list[str]]:
        """Node -> the nodes that depend on it, in order."""
        found: dict[str, list[str]] = {name: [] for name in self.order}
        for name in self.order:
            for dep in self.depends_on[name]:
                found[dep].append(name)
        return found

    @property
    def edges(self) -> int:
        return sum(len(deps) for deps in self.depends_on.values())


def node_task_id(workflow_id: str, name: str) -> str:
    """A node's task id: the same for the same workflow and name, so creation never duplicates."""
    return hashlib.sha256(f"aia workflow node\0{workflow_id}\0{name}".encode()).hexdigest()[:32]


def parse_workflow(body: Any, registry: TaskRegistry, *, diagnostic: bool) -> Plan:
    """Validate the whole workflow; a `ValidationFailed` naming the first node at fault."""
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object", field="body")
    check_depth(body, "body")
    _check_envelope(body)
    raw_nodes: dict[str, Any] = body["nodes"]
    nodes: dict[str, TaskRequest] = {}
    for name, node in raw_nodes.items():
        nodes[name] = _parse_node(name, node, registry, diagnostic=diagnostic)
    depends_on: dict[str, tuple[str, ...]] = {}
    for name, request in nodes.items():
        deps = tuple(dict.fromkeys(request.depends_on))
        for dep in deps:
            if dep not in nodes:
                raise ValidationFailed(
                    f"node {name!r} depends on {dep!r}, which is no node of this workflow",
                    field=f"nodes.{name}.depends_on",
                )
        depends_on[name] = deps
    edges = sum(len(d) for d in depends_on.values())
    if edges > MAX_EDGES:
        raise ValidationFailed(
            f"the workflow has {edges} dependencies; the limit is {MAX_EDGES}", field="nodes"
        )
    order = topological_order(depends_on)
    return Plan(nodes, depends_on, order, str(body.get("failure_policy", "fail_fast")))


def _check_envelope(body: dict[str, Any]) -> None:
    """Everything but the nodes' own bodies, strictly, as the document states it."""
    envelope = dict(body)
    nodes = body.get("nodes")
    if isinstance(nodes, dict):
        # Each node is checked on its own below; here only its name counts.
        envelope["nodes"] = dict.fromkeys(nodes, _PLACEHOLDER)
    try:
        WorkflowRequest.model_validate_json(json.dumps(envelope), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"] if p != "[key]"]
        if len(loc) >= 2 and loc[0] == "nodes" and first["type"] == "string_pattern_mismatch":
            raise ValidationFailed(
                f"node name {loc[1]!r} must be 1-63 of a-z, 0-9, '.', '_' and '-', "
                "starting with a letter or digit",
                field=f"nodes.{loc[1]}",
            ) from exc
        field = ".".join(loc) or "body"
        raise ValidationFailed(f"{field}: {first['msg']}", field=field) from exc


def _parse_node(name: str, node: Any, registry: TaskRegistry, *, diagnostic: bool) -> TaskRequest:
    where = f"nodes.{name}"
    if not isinstance(node, dict):
        raise ValidationFailed(f"{where} must be a JSON object", field=where)
    extra = sorted(set(node) - NODE_FIELDS)
    if extra:
        raise ValidationFailed(
            f"{where}.{extra[0]}: not a field of a workflow node", field=f"{where}.{extra[0]}"
        )
    deps = node.get("depends_on")
    if isinstance(deps, list) and len(deps) > MAX_NODES - 1:
        # A node can wait for every other node at most (the schema's maxItems).
        raise ValidationFailed(
            f"{where}.depends_on: at most {MAX_NODES - 1} dependencies",
            field=f"{where}.depends_on",
        )
    try:
        return parse_request(node, registry, diagnostic=diagnostic)
    except AIAError as exc:
        if exc.status != ValidationFailed.status:
            raise
        inner = exc.field or "body"
        extra_fields: dict[str, Any] = {}
        if isinstance(exc.extra.get("errors"), list):
            extra_fields["errors"] = [
                {**e, "field": f"{where}.{e['field']}"} for e in exc.extra["errors"]
            ]
        raise ValidationFailed(
            f"node {name!r}: {exc.detail}", field=f"{where}.{inner}", **extra_fields
        ) from exc


def topological_order(depends_on: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Kahn's order (dependencies first, ties in the given order); a 422 naming a cycle."""
    waiting_on = {name: len(deps) for name, deps in depends_on.items()}
    dependents: dict[str, list[str]] = {name: [] for name in depends_on}
    for name, deps in depends_on.items():
        for dep in deps:
            dependents[dep].append(name)
    position = {name: i for i, name in enumerate(depends_on)}
    # Ready nodes leave in request order: the order is deterministic, so are the batches.
    ready = [(position[name], name) for name, n in waiting_on.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for dependent in dependents[name]:
            waiting_on[dependent] -= 1
            if waiting_on[dependent] == 0:
                heapq.heappush(ready, (position[dependent], dependent))
    if len(order) < len(depends_on):
        cycle = find_cycle(depends_on, {n for n, k in waiting_on.items() if k > 0}, position)
        shown = " -> ".join([*cycle, cycle[0]])
        raise ValidationFailed(
            f"nodes {', '.join(repr(n) for n in cycle)} depend on each other in a cycle "
            f"({shown}, each depending on the next)",
            field=f"nodes.{cycle[0]}.depends_on",
            cycle=list(cycle),
        )
    return tuple(order)


def find_cycle(
    depends_on: Mapping[str, tuple[str, ...]], stuck: set[str], position: Mapping[str, int]
) -> tuple[str, ...]:
    """A cycle among the nodes Kahn's order could not place, starting at its earliest node.

    Each of them still waits for one of them, so following those dependencies
    from any of them must come back to a node already seen.
    """
    start = min(stuck, key=position.__getitem__)
    path: list[str] = [start]
    seen = {start: 0}
    while True:
        current = path[-1]
        following = next(d for d in depends_on[current] if d in stuck)
        if following in seen:
            cycle = path[seen[following] :]
            first = min(range(len(cycle)), key=lambda i: position[cycle[i]])
            return tuple(cycle[first:] + cycle[:first])
        seen[following] = len(path)
        path.append(following)
