"""What a handler returns to fan out: children, an optional continuation, and how to join them.

`ctx.fan_out(children=[(type, payload), ...], then=(type, payload), join="all")`
returns a `FanOut`; the handler returns it. The worker then stores the
children (each an ordinary task of the same tenant) and the continuation
(waiting for the join), and the parent waits without holding a worker.

Children are identified by their position: a parent attempt that is retried
after it fanned out (its worker died) re-creates only the positions missing,
never a second set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import NonRetryable

FAN_OUT_KEY = "__aia_fan_out__"
MAX_CHILDREN = 10_000
JOINS = ("all", "all_settled", "any")
# Children are counted in buckets of this many: each count reads one bucket's records.
BUCKET = 100


class InvalidFanOut(NonRetryable):
    code = "invalid-fan-out"
    title = "The handler's fan-out cannot be run"


class FanOutOverBudget(InvalidFanOut):
    code = "fan-out-over-budget"
    title = "The tenant's token balance cannot cover the fan-out's children"


@dataclass(frozen=True)
class Step:
    """One child, or the continuation: a task type, its payload and optional limits."""

    type: str
    payload: dict[str, Any]
    max_attempts: int | None = None
    timeout_s: int | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "payload": self.payload}
        if self.max_attempts is not None:
            body["max_attempts"] = self.max_attempts
        if self.timeout_s is not None:
            body["timeout_s"] = self.timeout_s
        return body

    @classmethod
    def of(cls, value: Any, where: str) -> Step:
        if isinstance(value, Step):
            return value
        if isinstance(value, tuple | list) and len(value) == 2:
            kind, payload = value
        elif isinstance(value, dict):
            kind, payload = value.get("type"), value.get("payload")
        else:
            raise InvalidFanOut(f"{where} must be (type, payload) or a step, got {value!r:.80}")
        if not isinstance(kind, str) or not isinstance(payload, dict):
            raise InvalidFanOut(f"{where} needs a type name and a payload object")
        limits = value if isinstance(value, dict) else {}
        return cls(kind, payload, limits.get("max_attempts"), limits.get("timeout_s"))


@dataclass(frozen=True)
class FanOut:
    children: tuple[Step, ...]
    then: Step | None
    join: str

    def to_json(self) -> dict[str, Any]:
        return {
            FAN_OUT_KEY: {
                "children": [c.to_json() for c in self.children],
                "then": self.then.to_json() if self.then is not None else None,
                "join": self.join,
            }
        }

    @classmethod
    def from_result(cls, result: Any) -> FanOut | None:
        """The fan-out a handler's (JSON) result asks for, or None for an ordinary result."""
        if not isinstance(result, dict) or set(result) != {FAN_OUT_KEY}:
            return None
        body = result[FAN_OUT_KEY]
        if not isinstance(body, dict):
            raise InvalidFanOut("malformed fan-out")
        children = body.get("children")
        if not isinstance(children, list):
            raise InvalidFanOut("a fan-out needs a list of children")
        then = body.get("then")
        return fan_out(children, then=then, join=str(body.get("join", "all")))


def fan_out(children: Sequence[Any], *, then: Any = None, join: str = "all") -> FanOut:
    """Validate the shape of a fan-out (types and payloads are checked by the worker)."""
    if join not in JOINS:
        raise InvalidFanOut(f"join must be one of {', '.join(JOINS)}, got {join!r}")
    if not 1 <= len(children) <= MAX_CHILDREN:
        raise InvalidFanOut(f"a fan-out has 1 to {MAX_CHILDREN} children, not {len(children)}")
    steps = tuple(Step.of(child, f"children[{i}]") for i, child in enumerate(children))
    return FanOut(steps, Step.of(then, "then") if then is not None else None, join)


def child_id(parent_id: str, index: int) -> str:
    """A child's task id: the same for the same parent and position, so creation is idempotent."""
    return hashlib.sha256(f"aia child\0{parent_id}\0{index}".encode()).hexdigest()[:32]


def continuation_id(parent_id: str) -> str:
    return hashlib.sha256(f"aia continuation\0{parent_id}".encode()).hexdigest()[:32]


def bucket_of(index: int) -> int:
    return index // BUCKET


def buckets(total: int) -> int:
    return (total + BUCKET - 1) // BUCKET
