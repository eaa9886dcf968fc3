/**
 * One Cloud Functions (2nd gen) function from a deploy bundle, running as the
 * service account it is given (created, and granted its roles, by the caller
 * before the function deploys). The bundle is uploaded under its content hash, so an
 * unchanged bundle is not redeployed.
 *
 * No event trigger: CloudEvent functions are reached by an explicitly managed
 * Pub/Sub push subscription (see task_service), and functions-framework takes
 * the signature type from the entry point's decorator.
 */

resource "google_storage_bucket_object" "source" {
  name   = "functions/${var.name}/${filesha256(var.source_archive)}.zip"
  bucket = var.source_bucket
  source = var.source_archive
}

resource "google_cloudfunctions2_function" "this" {
  # checkov:skip=CKV_GCP_124:Ingress is var.ingress, ALLOW_INTERNAL_ONLY unless the caller opens it: task_service opens only the user-facing functions (API-key auth in the app), to ALLOW_INTERNAL_AND_GCLB behind the load balancer; tests/infra/test_terraform.py asserts the planned value per environment.
  project     = var.project_id
  location    = var.region
  name        = var.name
  description = var.description
  labels      = var.labels

  build_config {
    runtime         = var.runtime
    entry_point     = var.name
    service_account = var.build_service_account

    source {
      storage_source {
        bucket = var.source_bucket
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory                 = var.memory
    available_cpu                    = var.cpu
    timeout_seconds                  = var.timeout_seconds
    min_instance_count               = var.min_instances
    max_instance_count               = var.max_instances
    max_instance_request_concurrency = var.concurrency
    ingress_settings                 = var.ingress
    all_traffic_on_latest_revision   = true
    service_account_email            = var.service_account_email
    environment_variables            = var.environment_variables

    dynamic "secret_environment_variables" {
      for_each = var.secret_environment_variables
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }
}

resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = var.invoker_members

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.this.service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}
