resource "google_storage_bucket" "sources" {
  # checkov:skip=CKV_GCP_62:Holds build inputs (the public source code's bundles) only, written by the deploy pipeline; Cloud Audit Logs record access, a second log bucket adds cost and no signal.
  project                     = var.project_id
  name                        = "${var.project_id}-${var.name_prefix}-sources"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.delete_protection
  labels                      = local.labels

  versioning {
    enabled = true
  }

  # Bundles are named by content hash, so an object is only overwritten by
  # identical bytes; noncurrent versions are kept a month, then dropped.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.this]
}
