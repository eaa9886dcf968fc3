"""What the infrastructure must respect, shared by the HCL and the plan tests."""

from __future__ import annotations

# Variables shared/config.py reads that Terraform deliberately does not set as
# plain environment variables, and why.
NOT_PLAIN_ENV = {
    "AIA_KEYRING": "a secret: set with secret_environment_variables from Secret Manager",
    "AIA_KEYRING_FILE": "local development only: deployed functions read AIA_KEYRING",
    "AIA_DIAGNOSTIC_DIR": "local development and tests only: where the probe task records",
    "AIA_METRICS_TOKEN": "a secret: set with secret_environment_variables from Secret Manager",
    "AIA_WEBHOOKS_ALLOW_LOOPBACK": "local development only: deployed endpoints are public https",
    "AIA_TRACE_DIR": "local development only: deployed functions export spans to Cloud Trace",
}

# Every IAM role the Terraform may grant. Adding one is a reviewed decision.
ALLOWED_ROLES = frozenset(
    {
        "roles/datastore.user",
        "roles/datastore.viewer",
        "roles/pubsub.publisher",
        "roles/pubsub.subscriber",
        "roles/pubsub.viewer",
        "roles/secretmanager.secretAccessor",
        "roles/run.invoker",
        "roles/iam.serviceAccountTokenCreator",
        "roles/storage.objectViewer",
        "roles/logging.logWriter",
        "roles/artifactregistry.writer",
        "roles/cloudtrace.agent",
    }
)
# Roles that only exist (or only make sense) at project level.
PROJECT_LEVEL_ROLES = frozenset(
    {
        "roles/datastore.user",
        "roles/datastore.viewer",
        "roles/logging.logWriter",
        "roles/artifactregistry.writer",
        "roles/cloudtrace.agent",
    }
)
# Functions that make no spans (shared.http.probe_endpoint): the others may write to
# Cloud Trace (roles/cloudtrace.agent) when spans are exported there.
UNTRACED = frozenset({"health", "metrics"})
# Functions users call (through the load balancer when there is one).
USER_FACING = frozenset(
    {
        "health",
        "metrics",
        "submit_task",
        "task_status",
        "schedules",
        "webhooks",
        "usage",
        "openapi",
        "dashboard",
        "workflows",
    }
)
# Kept warm in prod: the API's own request path. The OpenAPI document and the
# dashboard's files are fetched once per visit and tolerate a cold start; so does
# a workflow's creation, once per many nodes (its nodes run on process_task).
WARM_IN_PROD = USER_FACING - {"openapi", "dashboard", "workflows"}
# Which key ring each function reads (AIA_KEYRING); the others read none.
# schedules seals a schedule's payload; schedule_tick opens it to submit a slot's task.
# The webhook API seals signing keys (public ring); only deliver_webhooks opens them.
KEYRING = {
    "submit_task": "public",
    "task_status": "private",
    "process_task": "private",
    "workflows": "public",
    "schedules": "public",
    "schedule_tick": "private",
    "webhooks": "public",
    "deliver_webhooks": "private",
}
# The functions given the metrics bearer token (AIA_METRICS_TOKEN): they guard
# /metrics and the detailed /health with it.
METRICS_TOKEN = frozenset({"health", "metrics"})
# The functions that authenticate tenants: the only readers of the API keys
# database, and never writers (operators create keys with their own credentials).
KEYS_READERS = frozenset(
    {"submit_task", "task_status", "schedules", "webhooks", "usage", "workflows"}
)
# Who publishes to each topic: the dead-letter topic is the application's alone
# (the worker's final failures, and the sweep flushing their outbox); only the
# Pub/Sub service agent publishes to the backstop. The worker publishes a fan-out's
# children and starts continuations and dependents.
PUBLISHERS = {
    "tasks": frozenset({"submit_task", "redispatch", "schedule_tick", "process_task", "workflows"}),
    "dead_letter": frozenset({"process_task", "redispatch"}),
    # Webhook ids: a finished task's event (the outbox's flush: the worker, a cancel,
    # a workflow's cancel, the sweep's cascades), a replay, the delivery sweep.
    "webhook_events": frozenset(
        {"process_task", "submit_task", "redispatch", "webhooks", "deliver_webhooks", "workflows"}
    ),
}
