"""process_task: the worker, receiving Pub/Sub push deliveries as CloudEvents."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from shared import events, providers

# At start-up: a broken task module stops the function here, not on a delivery.
providers.task_registry()


@functions_framework.cloud_event
def process_task(cloud_event: CloudEvent) -> None:
    events.handle(cloud_event.data, providers.worker().process)
