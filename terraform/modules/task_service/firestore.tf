locals {
  # One composite index per query shape in shared/queries.py whose
  # needs_composite_index() is true (a test keeps the two in step).
  # Equality fields first (ascending), then the order fields.
  composite_indexes = {
    list_tasks = {
      collection = "tasks"
      fields     = [["tenant_id", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    list_tasks_by_status = {
      collection = "tasks"
      fields     = [["tenant_id", "ASCENDING"], ["status", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    list_tasks_by_type = {
      collection = "tasks"
      fields     = [["tenant_id", "ASCENDING"], ["type", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    list_tasks_by_status_type = {
      collection = "tasks"
      fields     = [["tenant_id", "ASCENDING"], ["status", "ASCENDING"], ["type", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    stale_queued = {
      collection = "tasks"
      fields     = [["status", "ASCENDING"], ["updated_at", "ASCENDING"]]
    }
    expired_leases = {
      collection = "tasks"
      fields     = [["status", "ASCENDING"], ["lease_until", "ASCENDING"]]
    }
    children = {
      collection = "tasks"
      fields     = [["parent_id", "ASCENDING"], ["child_index", "ASCENDING"]]
    }
    dead_letter_pending = {
      collection = "tasks"
      fields     = [["dead_letter_pending", "ASCENDING"], ["updated_at", "ASCENDING"]]
    }
    list_workflows = {
      collection = "workflows"
      fields     = [["tenant_id", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
  }

  # shared/queries.py TTL_COLLECTIONS, each with its EXPIRES_AT field.
  ttl_collections = ["tasks", "idempotency_keys", "workflows"]

  # A workflow's node map and order hold up to 1,000 entries each that no query
  # reads: indexed, each entry would be an index write (shared/workflows/store.py).
  unindexed_workflow_fields = ["nodes", "order"]
  ttl_field                 = "expires_at"
}

resource "google_firestore_database" "this" {
  project     = var.project_id
  name        = var.firestore_database
  location_id = var.firestore_location
  type        = "FIRESTORE_NATIVE"

  point_in_time_recovery_enablement = var.point_in_time_recovery ? "POINT_IN_TIME_RECOVERY_ENABLED" : "POINT_IN_TIME_RECOVERY_DISABLED"
  delete_protection_state           = var.delete_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  # ABANDON leaves a protected database in place when Terraform forgets it.
  deletion_policy = var.delete_protection ? "ABANDON" : "DELETE"

  depends_on = [google_project_service.this]
}

# API key records (the api_keys collection), apart from the tasks: the
# functions serving tenants may only read this database (iam.tf). Protected
# like the tasks database; no TTL: a key lives until it is revoked.
resource "google_firestore_database" "keys" {
  project     = var.project_id
  name        = "${var.name_prefix}-keys"
  location_id = var.firestore_location
  type        = "FIRESTORE_NATIVE"

  point_in_time_recovery_enablement = var.point_in_time_recovery ? "POINT_IN_TIME_RECOVERY_ENABLED" : "POINT_IN_TIME_RECOVERY_DISABLED"
  delete_protection_state           = var.delete_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = var.delete_protection ? "ABANDON" : "DELETE"

  depends_on = [google_project_service.this]
}

resource "google_firestore_index" "this" {
  for_each = local.composite_indexes

  project     = var.project_id
  database    = google_firestore_database.this.name
  collection  = each.value.collection
  query_scope = "COLLECTION"

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value[0]
      order      = fields.value[1]
    }
  }
}

# TTL policies: Firestore deletes a document (typically within 24 h) once its
# expires_at has passed; reads filter expired documents themselves. The field
# is exempt from indexing: no query uses it, and a monotonic timestamp index
# would be a write hotspot.
resource "google_firestore_field" "ttl" {
  for_each = toset(local.ttl_collections)

  project    = var.project_id
  database   = google_firestore_database.this.name
  collection = each.value
  field      = local.ttl_field

  ttl_config {}

  index_config {}
}

resource "google_firestore_field" "unindexed" {
  for_each = toset(local.unindexed_workflow_fields)

  project    = var.project_id
  database   = google_firestore_database.this.name
  collection = "workflows"
  field      = each.value

  index_config {}
}

resource "google_firestore_backup_schedule" "daily" {
  project   = var.project_id
  database  = google_firestore_database.this.name
  retention = var.backup_retention

  daily_recurrence {}
}

resource "google_firestore_backup_schedule" "keys_daily" {
  project   = var.project_id
  database  = google_firestore_database.keys.name
  retention = var.backup_retention

  daily_recurrence {}
}
