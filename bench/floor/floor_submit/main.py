"""floor_submit: the least a task backend's submit can do on this platform.

`POST /tasks`: one Firestore `create`, one Pub/Sub publish with one message per
batch, waiting for the publish future (as AIA does). `GET /tasks/{id}`: one
document read, so clients can wait for the floor the way they wait for AIA.
No validation, no auth, no encryption: those are what AIA adds.
"""

from __future__ import annotations

import functools
import json
import os
import time
import uuid
from typing import Any

import flask
import functions_framework

COLLECTION = "floor_tasks"  # bench.floor.COLLECTION; this folder is served on its own


@functools.cache
def _db() -> Any:
    from google.cloud import firestore

    return firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])


@functools.cache
def _publisher() -> Any:
    from google.cloud import pubsub_v1

    # The default 10 ms batch timer would be added to every request.
    return pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1),
    )


@functions_framework.http
def floor_submit(request: flask.Request) -> flask.typing.ResponseReturnValue:
    if request.method == "POST":
        body = request.get_json(silent=True) or {}
        task_id = uuid.uuid4().hex
        _db().collection(COLLECTION).document(task_id).create(
            {"status": "queued", "payload": body.get("payload"), "created_at": time.time()}
        )
        data = json.dumps({"task_id": task_id}).encode()
        _publisher().publish(os.environ["FLOOR_TOPIC"], data).result()
        return {"task_id": task_id, "status": "queued"}, 202
    task_id = request.path.rstrip("/").rpartition("/")[2]
    snap = _db().collection(COLLECTION).document(task_id).get()
    if not snap.exists:
        return {"task_id": task_id, "status": "unknown"}, 404
    doc = snap.to_dict() or {}
    return {"task_id": task_id, "status": doc.get("status"), "result": doc.get("result")}
