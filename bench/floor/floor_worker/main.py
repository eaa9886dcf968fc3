"""floor_worker: the least a push-triggered worker can do: read the task, mark it done."""

from __future__ import annotations

import base64
import functools
import json
import os
import time
from typing import Any

import functions_framework
from cloudevents.http import CloudEvent

COLLECTION = "floor_tasks"  # bench.floor.COLLECTION; this folder is served on its own


@functools.cache
def _db() -> Any:
    from google.cloud import firestore

    return firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])


@functions_framework.cloud_event
def floor_worker(cloud_event: CloudEvent) -> None:
    message = json.loads(base64.b64decode(cloud_event.data["message"]["data"]))
    ref = _db().collection(COLLECTION).document(message["task_id"])
    snap = ref.get()
    if not snap.exists:
        return  # acknowledged: nothing to do
    ref.update({"status": "succeeded", "result": snap.get("payload"), "finished_at": time.time()})
