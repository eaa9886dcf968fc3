"""Pull what waits on a Pub/Sub emulator subscription, over its REST surface.

Plain HTTP so every tier can use it: the integration and contract tests (whose
process points at the emulator through PUBSUB_EMULATOR_HOST) and the end-to-end
tests (which talk to the stack's own emulator by host).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

import requests


@dataclass(frozen=True)
class Received:
    message_id: str
    data: bytes
    attributes: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.data)


def pull(subscription: str, *, host: str | None = None, max_messages: int = 100) -> list[Received]:
    """Every message waiting now on `subscription` (`projects/P/subscriptions/S`), acknowledged.

    Pulls until the subscription answers empty: one pull may return fewer
    messages than are waiting.
    """
    base = f"http://{host or os.environ['PUBSUB_EMULATOR_HOST']}/v1/{subscription}"
    received: list[Received] = []
    while len(received) < max_messages:
        resp = requests.post(
            f"{base}:pull",
            json={"maxMessages": max_messages - len(received), "returnImmediately": True},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        batch = resp.json().get("receivedMessages", [])
        if not batch:
            break
        ack = requests.post(
            f"{base}:acknowledge", json={"ackIds": [r["ackId"] for r in batch]}, timeout=10
        )
        assert ack.status_code == 200, ack.text
        received.extend(
            Received(
                message_id=str(r["message"].get("messageId", "")),
                data=base64.b64decode(r["message"].get("data", "")),
                attributes=dict(r["message"].get("attributes", {})),
            )
            for r in batch
        )
    return received
