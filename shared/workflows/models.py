"""Workflow models, named by direction of travel: the request in, the views out.

A workflow's node is a task request cut down to what means something inside a
workflow: the same type, payload and limits a submit takes, validated the same
way; its `depends_on` names other nodes instead of task ids, and it has no
start time or webhook of its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints

from shared.deferred import DeferredModel
from shared.tasks.models import (
    MAX_PRIORITY,
    MAX_TIMEOUT_S,
    MIN_PRIORITY,
    TASK_ID_PATTERN,
    TaskStatus,
)

NODE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
MAX_NODES = 1000
# Dependencies across all nodes: each is one index write at creation, and one
# follow-up when its dependency finishes.
MAX_EDGES = 10_000
FAILURE_POLICIES = ("fail_fast", "continue")

NodeName = Annotated[str, StringConstraints(pattern=NODE_NAME_PATTERN)]
FailurePolicy = Literal["fail_fast", "continue"]
WorkflowStatus = Literal["running", "succeeded", "failed", "cancelled"]


class WorkflowNode(DeferredModel):
    """One node: a task's type, payload and limits, and the nodes it waits for."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any]
    depends_on: list[NodeName] = Field(
        default_factory=list,
        max_length=MAX_NODES - 1,
        description="Names of nodes of this workflow that must succeed first",
    )
    max_attempts: int = Field(default=3, ge=1, le=10)
    timeout_s: int = Field(default=60, ge=1, le=MAX_TIMEOUT_S)
    priority: int | None = Field(
        default=None,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description="0-9, default 5: the node's place among tasks waiting for a slot",
    )


class WorkflowRequest(DeferredModel):
    """What a client submits: named nodes, each a task request whose `depends_on` names nodes."""

    model_config = ConfigDict(extra="forbid")

    nodes: dict[NodeName, WorkflowNode] = Field(
        min_length=1,
        max_length=MAX_NODES,
        description="Node name -> the task it runs; `depends_on` lists node names, and a node "
        "starts once every node it depends on succeeded, reading their results from "
        "`ctx.inputs[<name>]`",
        # Only names matching the pattern: pydantic states the pattern alone.
        json_schema_extra={"additionalProperties": False},
    )
    failure_policy: FailurePolicy = Field(
        default="fail_fast",
        description="`fail_fast`: the first node that fails cancels every node not finished; "
        "`continue`: independent branches go on (dependents of a failed node fail)",
    )


class WorkflowAccepted(DeferredModel):
    workflow_id: str = Field(pattern=TASK_ID_PATTERN)
    status: Literal["running"]
    status_url: str
    dispatch: Literal["deferred"] | None = Field(
        default=None,
        description="Present when publishing the first nodes failed: they are stored and the "
        "sweep publishes them shortly",
    )


class NodeView(DeferredModel):
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    type: str | None = Field(default=None, description="Absent for a node never stored")
    status: TaskStatus
    depends_on: list[str] = Field(description="Node names")
    attempts: int = Field(ge=0)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error_code: str | None = Field(
        default=None, description="Why a failed or cancelled node ended (its task has the rest)"
    )


class WorkflowView(DeferredModel):
    """A workflow's status, derived from its nodes, and each node's."""

    workflow_id: str = Field(pattern=TASK_ID_PATTERN)
    status: WorkflowStatus
    failure_policy: FailurePolicy
    created_at: datetime
    finished_at: datetime | None = None
    cancelled_at: datetime | None = None
    counts: dict[str, int] = Field(description="Nodes by status")
    nodes: dict[str, NodeView]

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)


class WorkflowSummary(DeferredModel):
    workflow_id: str = Field(pattern=TASK_ID_PATTERN)
    status: WorkflowStatus
    failure_policy: FailurePolicy
    created_at: datetime
    node_count: int = Field(ge=1)
    counts: dict[str, int] = Field(
        description="Nodes by outcome: `succeeded`, `failed`, `cancelled`, and `unfinished`"
    )


class WorkflowPage(DeferredModel):
    workflows: list[WorkflowSummary]
    next_page_token: str | None = None

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)
