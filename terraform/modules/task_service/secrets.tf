# Key rings for payload encryption. Terraform creates the secrets only: the
# key material is added as versions out of band (docs/deploy.md), so it never
# enters the Terraform state. submit_task and schedules read the public ring
# (seal only); process_task, task_status and schedule_tick read the private ring.
resource "google_secret_manager_secret" "keyring" {
  for_each = toset(["public", "private"])

  project   = var.project_id
  secret_id = "${var.name_prefix}-keyring-${each.key}"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.this]
}

resource "google_secret_manager_secret_iam_member" "keyring_access" {
  for_each = {
    for name, spec in local.functions : name => spec.keyring if spec.keyring != null
  }

  project   = var.project_id
  secret_id = google_secret_manager_secret.keyring[each.value].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.key].member
}

# The bearer token /metrics and the detailed /health require
# (AIA_METRICS_TOKEN). Like the key rings, Terraform creates the secret and
# never its value: the operator adds a version (docs/deploy.md).
resource "google_secret_manager_secret" "metrics_token" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-metrics-token"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.this]
}

resource "google_secret_manager_secret_iam_member" "metrics_token_access" {
  for_each = { for name, spec in local.functions : name => spec if spec.metrics_token }

  project   = var.project_id
  secret_id = google_secret_manager_secret.metrics_token.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.key].member
}
