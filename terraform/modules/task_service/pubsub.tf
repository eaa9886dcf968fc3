resource "google_pubsub_topic" "tasks" {
  # checkov:skip=CKV_GCP_83:Messages carry task ids only; payloads are sealed by the application's own key ring before they are stored, so Google-managed encryption suffices.
  project = var.project_id
  name    = var.tasks_topic
  labels  = local.labels

  # Lets a subscription be re-seeked after an incident.
  message_retention_duration = "86400s"

  depends_on = [google_project_service.this]
}

# Where Pub/Sub's dead-letter policy sends a message the worker did not ack in
# max_delivery_attempts deliveries. Such a task is not known to have failed (a
# Firestore outage nacks healthy tasks too), so the backstop delivers it to the
# worker again instead of dead-lettering it: only the worker decides a task
# failed, and only the application publishes to the dead-letter topic.
resource "google_pubsub_topic" "backstop" {
  # checkov:skip=CKV_GCP_83:Messages carry task ids only; payloads are sealed by the application's own key ring before they are stored, so Google-managed encryption suffices.
  project = var.project_id
  name    = "${var.tasks_topic}-backstop"
  labels  = local.labels

  message_retention_duration = "86400s"

  depends_on = [google_project_service.this]
}

# Tasks that failed for good, published by process_task (and by redispatch when
# that publish had failed): the application's decision, never Pub/Sub's.
resource "google_pubsub_topic" "dead_letter" {
  # checkov:skip=CKV_GCP_83:Messages carry task ids only; payloads are sealed by the application's own key ring before they are stored, so Google-managed encryption suffices.
  project = var.project_id
  name    = var.dead_letter_topic
  labels  = local.labels

  depends_on = [google_project_service.this]
}

# Keeps dead letters until someone reads them (a topic alone drops them).
resource "google_pubsub_subscription" "dead_letter_hold" {
  project = var.project_id
  name    = "${var.dead_letter_topic}-hold"
  topic   = google_pubsub_topic.dead_letter.id
  labels  = local.labels

  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

# The worker's subscription, managed here rather than by an Eventarc trigger:
# it carries a dead-letter policy and outlives a redeploy of the function.
resource "google_pubsub_subscription" "worker_push" {
  project = var.project_id
  name    = "${var.tasks_topic}-worker"
  topic   = google_pubsub_topic.tasks.id
  labels  = local.labels

  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = module.function["process_task"].uri

    oidc_token {
      service_account_email = google_service_account.push_invoker.email
      audience              = module.function["process_task"].uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "${var.retry_max_backoff_s}s"
  }

  # After max_delivery_attempts unacked deliveries the message moves to the
  # backstop, which keeps delivering it: it is never dropped.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.backstop.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [
    google_pubsub_topic_iam_member.pubsub_agent_backstop_publisher,
  ]
}

# The same delivery to the same worker as worker_push, with no dead-letter
# policy: a message here is retried (with backoff) until the worker acks it or
# the 7-day retention ends. The worker's lease makes the extra deliveries safe.
resource "google_pubsub_subscription" "backstop_push" {
  project = var.project_id
  name    = "${google_pubsub_topic.backstop.name}-worker"
  topic   = google_pubsub_topic.backstop.id
  labels  = local.labels

  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = module.function["process_task"].uri

    oidc_token {
      service_account_email = google_service_account.push_invoker.email
      audience              = module.function["process_task"].uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "${var.retry_max_backoff_s}s"
  }

  expiration_policy {
    ttl = ""
  }
}

# Webhook event and delivery ids (never task data): process_task publishes a
# finished task's event, the webhook API a replay, the sweep what is due.
resource "google_pubsub_topic" "webhook_events" {
  # checkov:skip=CKV_GCP_83:Messages carry event and delivery ids only; what a delivery sends is read and sealed in Firestore, so Google-managed encryption suffices.
  project = var.project_id
  name    = var.webhook_events_topic
  labels  = local.labels

  message_retention_duration = "86400s"

  depends_on = [google_project_service.this]
}

# No dead-letter policy: each message names a record in Firestore that the
# sweep republishes when due, and deliver_webhooks acks what it cannot use.
resource "google_pubsub_subscription" "webhook_push" {
  project = var.project_id
  name    = "${var.webhook_events_topic}-deliver"
  topic   = google_pubsub_topic.webhook_events.id
  labels  = local.labels

  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = "${module.function["deliver_webhooks"].uri}/push"

    oidc_token {
      service_account_email = google_service_account.push_invoker.email
      audience              = module.function["deliver_webhooks"].uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "${var.retry_max_backoff_s}s"
  }

  expiration_policy {
    ttl = ""
  }
}
