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
    # The sweeps and the timers: the index shard leads, so rising times spread over
    # INDEX_SHARDS index ranges (Firestore serves ~500 writes/s per range).
    stale_queued = {
      collection = "tasks"
      fields     = [["index_shard", "ASCENDING"], ["status", "ASCENDING"], ["updated_at", "ASCENDING"]]
    }
    expired_leases = {
      collection = "tasks"
      fields     = [["index_shard", "ASCENDING"], ["status", "ASCENDING"], ["lease_until", "ASCENDING"]]
    }
    children = {
      collection = "tasks"
      fields     = [["parent_id", "ASCENDING"], ["child_index", "ASCENDING"]]
    }
    dead_letter_pending = {
      collection = "tasks"
      fields     = [["index_shard", "ASCENDING"], ["dead_letter_pending", "ASCENDING"], ["updated_at", "ASCENDING"]]
    }
    due_tasks = {
      collection = "tasks"
      fields     = [["index_shard", "ASCENDING"], ["status", "ASCENDING"], ["run_at", "ASCENDING"]]
    }
    due_schedules = {
      collection = "schedules"
      fields     = [["index_shard", "ASCENDING"], ["state", "ASCENDING"], ["due_at", "ASCENDING"]]
    }
    list_schedules = {
      collection = "schedules"
      fields     = [["tenant_id", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    # Webhooks: a new endpoint's catch-up, and the tenant's pages of endpoints and deliveries.
    tasks_finished_between = {
      collection = "tasks"
      fields     = [["tenant_id", "ASCENDING"], ["finished_at", "ASCENDING"], ["__name__", "ASCENDING"]]
    }
    list_webhook_endpoints = {
      collection = "webhook_endpoints"
      fields     = [["tenant_id", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    list_webhook_deliveries = {
      collection = "webhook_deliveries"
      fields     = [["tenant_id", "ASCENDING"], ["endpoint_id", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    # Flow control: the tenant's ledger, newest first, optionally by kind.
    ledger_by_tenant = {
      collection = "ledger"
      fields     = [["tenant_id", "ASCENDING"], ["at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    ledger_by_tenant_kind = {
      collection = "ledger"
      fields     = [["tenant_id", "ASCENDING"], ["kind", "ASCENDING"], ["at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    # Concurrency limits: a group's waiting tasks, first in line first (shared/queries.py TASKS_BLOCKED).
    tasks_blocked = {
      collection = "tasks"
      fields     = [["tenant_id", "ASCENDING"], ["blocked_by", "ASCENDING"], ["status", "ASCENDING"], ["ready_at", "ASCENDING"]]
    }
    # Metrics: queued tasks waiting for a slot, by reason (shared/queries.py COUNT_WAITING_FOR_SLOTS).
    count_waiting_for_slots = {
      collection = "tasks"
      fields     = [["status", "ASCENDING"], ["blocked_by", "ASCENDING"]]
    }
    # Workflows: a tenant's page of them (shared/queries.py LIST_WORKFLOWS).
    list_workflows = {
      collection = "workflows"
      fields     = [["tenant_id", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
  }

  # shared/queries.py NOT_INDEXED: due times only the sharded indexes above may
  # hold, and task timestamps every query reads through a composite index; their
  # automatic single-field indexes would each be a hot range (~500 writes/s).
  not_indexed = {
    tasks_run_at      = { collection = "tasks", field = "run_at" }
    schedules_due_at  = { collection = "schedules", field = "due_at" }
    tasks_created_at  = { collection = "tasks", field = "created_at" }
    tasks_updated_at  = { collection = "tasks", field = "updated_at" }
    tasks_started_at  = { collection = "tasks", field = "started_at" }
    tasks_finished_at = { collection = "tasks", field = "finished_at" }
    tasks_lease_until = { collection = "tasks", field = "lease_until" }
  }

  # shared/queries.py TTL_COLLECTIONS, each with its EXPIRES_AT field.
  ttl_collections = ["tasks", "idempotency_keys", "webhook_events", "webhook_deliveries", "ledger", "rate_shards", "workflows", "concurrency_slots"]

  # shared/queries.py UNINDEXED_FIELDS.
  unindexed_fields = {
    webhook_endpoint_secrets  = { collection = "webhook_endpoints", field = "secrets" }
    webhook_delivery_attempts = { collection = "webhook_deliveries", field = "attempts" }
    # A workflow's node map, order and nodes' budget holds: up to 1,000 entries each,
    # one index write apiece.
    workflow_nodes = { collection = "workflows", field = "nodes" }
    workflow_order = { collection = "workflows", field = "order" }
    workflow_holds = { collection = "workflows", field = "holds" }
  }
  ttl_field = "expires_at"
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

resource "google_firestore_field" "not_indexed" {
  for_each = local.not_indexed

  project    = var.project_id
  database   = google_firestore_database.this.name
  collection = each.value.collection
  field      = each.value.field

  index_config {}
}

# Never filtered or ordered on, and bulky (sealed keys, the attempt log):
# exempt from indexing, so writing them costs no index entries.
resource "google_firestore_field" "unindexed" {
  for_each = local.unindexed_fields

  project    = var.project_id
  database   = google_firestore_database.this.name
  collection = each.value.collection
  field      = each.value.field

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
