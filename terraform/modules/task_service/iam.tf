# Identities and least-privilege grants. Every role here is on the allow-list
# in tests/infra; project-level grants are limited to roles that exist only at
# project level, and each Firestore grant is conditioned on one database.

locals {
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  publish_grants = merge([
    for name, spec in local.functions : {
      for topic in spec.publishes : "${name}/${topic}" => { function = name, topic = topic }
    }
  ]...)

  view_grants = merge([
    for name, spec in local.functions : {
      for topic in spec.views : "${name}/${topic}" => { function = name, topic = topic }
    }
  ]...)
}

resource "google_service_account" "function" {
  for_each = local.functions

  project      = var.project_id
  account_id   = "${var.name_prefix}-fn-${replace(each.key, "_", "-")}"
  display_name = "AIA function ${each.key}"
  description  = "Runtime identity of the ${each.key} function."
}

# Firestore has no per-database IAM resource: grant at project level, limited
# by condition to one database each.
resource "google_project_iam_member" "firestore" {
  for_each = local.functions

  project = var.project_id
  role    = each.value.firestore
  member  = google_service_account.function[each.key].member

  condition {
    title       = "aia-database-only"
    description = "Only the AIA tasks database."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${google_firestore_database.this.name}\""
  }
}

# Read-only, and only for the functions that authenticate tenants: no function
# can write a key record, so none can mint a key for a tenant.
resource "google_project_iam_member" "firestore_keys" {
  for_each = { for name, spec in local.functions : name => spec if spec.keys_firestore != null }

  project = var.project_id
  role    = each.value.keys_firestore
  member  = google_service_account.function[each.key].member

  condition {
    title       = "aia-keys-database-only"
    description = "Only the AIA API keys database."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${google_firestore_database.keys.name}\""
  }
}

resource "google_pubsub_topic_iam_member" "publish" {
  for_each = local.publish_grants

  project = var.project_id
  topic   = local.topics[each.value.topic].name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function[each.value.function].member
}

resource "google_pubsub_topic_iam_member" "view" {
  for_each = local.view_grants

  project = var.project_id
  topic   = local.topics[each.value.topic].name
  role    = "roles/pubsub.viewer"
  member  = google_service_account.function[each.value.function].member
}

# Pub/Sub signs push requests to the worker with this identity (OIDC).
resource "google_service_account" "push_invoker" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-push-invoker"
  display_name = "AIA Pub/Sub push to process_task"
  description  = "Identity in the OIDC token of push deliveries to the worker."
}

resource "google_service_account_iam_member" "pubsub_agent_mints_push_tokens" {
  service_account_id = google_service_account.push_invoker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# The Pub/Sub service agent forwards messages out of the worker subscription
# (its dead-letter policy) to the backstop topic and must be able to ack them
# on the source subscription. It may not publish to the dead-letter topic.
resource "google_pubsub_topic_iam_member" "pubsub_agent_backstop_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.backstop.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_worker_subscriber" {
  project      = var.project_id
  subscription = google_pubsub_subscription.worker_push.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# Cloud Scheduler calls redispatch with an OIDC token for this identity.
resource "google_service_account" "scheduler_invoker" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-scheduler"
  display_name = "AIA Cloud Scheduler to redispatch"
  description  = "Identity in the OIDC token of the redispatch job."
}

# Builds the functions' containers instead of the default compute account.
# Spans to Cloud Trace (AIA_TRACE_EXPORTER=gcp), from every function that makes
# them: the probes (health, metrics) make none.
resource "google_project_iam_member" "trace_agent" {
  for_each = var.trace_exporter == "gcp" ? local.traced_functions : toset([])

  project = var.project_id
  role    = "roles/cloudtrace.agent"
  member  = google_service_account.function[each.key].member
}

resource "google_service_account" "builder" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-builder"
  display_name = "AIA function builds"
  description  = "Cloud Build identity for building the AIA functions."
}

resource "google_project_iam_member" "builder" {
  # Build logs, and pushing images to the gcf-artifacts repository Cloud
  # Functions creates itself (so it cannot be named here in advance).
  for_each = toset(["roles/logging.logWriter", "roles/artifactregistry.writer"])

  project = var.project_id
  role    = each.value
  member  = google_service_account.builder.member
}

resource "google_storage_bucket_iam_member" "builder_reads_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.builder.member
}
