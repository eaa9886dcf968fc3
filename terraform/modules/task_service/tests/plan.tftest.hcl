# Plan-mode runs against the provider's real schema (served offline by
# tools/tfschema). The bundle folder comes from the test runner:
#   terraform test -var bundle_dir=<folder with the function zips>

variables {
  project_id         = "aia-test-project"
  region             = "europe-west1"
  environment        = "dev"
  firestore_location = "europe-west1"
}

run "defaults_are_private_and_protected" {
  command = plan

  assert {
    condition     = alltrue([for name, members in local.function_invokers : !contains(keys(members), "public")])
    error_message = "No function may be public unless public_access asks for it."
  }

  assert {
    condition     = google_firestore_database.this.delete_protection_state == "DELETE_PROTECTION_ENABLED"
    error_message = "Delete protection must default to on."
  }

  assert {
    condition     = google_firestore_database.this.point_in_time_recovery_enablement == "POINT_IN_TIME_RECOVERY_ENABLED"
    error_message = "Point-in-time recovery must default to on."
  }

  assert {
    condition     = google_firestore_database.keys.delete_protection_state == "DELETE_PROTECTION_ENABLED" && google_firestore_database.keys.point_in_time_recovery_enablement == "POINT_IN_TIME_RECOVERY_ENABLED"
    error_message = "The keys database is protected like the tasks database."
  }

  assert {
    condition     = length(module.gateway) == 0
    error_message = "The load balancer is opt-in."
  }

  assert {
    condition     = keys(local.function_invokers["process_task"]) == ["pubsub_push"] && keys(local.function_invokers["redispatch"]) == ["scheduler"] && toset(keys(local.function_invokers["deliver_webhooks"])) == toset(["pubsub_push", "scheduler"])
    error_message = "Only the push and scheduler identities invoke the internal functions."
  }
}

run "worker_subscription" {
  command = plan

  assert {
    condition     = google_pubsub_subscription.worker_push.ack_deadline_seconds == 600
    error_message = "The worker's ack deadline must cover its 600 s timeout."
  }

  assert {
    condition     = google_pubsub_subscription.worker_push.retry_policy[0].minimum_backoff == "10s" && google_pubsub_subscription.worker_push.retry_policy[0].maximum_backoff == "600s"
    error_message = "Retry backoff must be 10-600 s."
  }

  assert {
    condition     = google_pubsub_subscription.worker_push.dead_letter_policy[0].max_delivery_attempts == 10
    error_message = "Hand over to the backstop after 10 deliveries by default."
  }

  assert {
    condition     = google_pubsub_topic.backstop.name == "aia-tasks-backstop"
    error_message = "The backstop topic is named after the tasks topic."
  }

  assert {
    condition     = google_pubsub_subscription.backstop_push.ack_deadline_seconds == 600 && length(google_pubsub_subscription.backstop_push.dead_letter_policy) == 0
    error_message = "The backstop redelivers with the worker's ack deadline and never dead-letters."
  }

  assert {
    condition     = google_pubsub_subscription.backstop_push.retry_policy == google_pubsub_subscription.worker_push.retry_policy
    error_message = "The backstop retries as the worker subscription does."
  }

  assert {
    condition     = google_pubsub_topic_iam_member.pubsub_agent_backstop_publisher.topic == google_pubsub_topic.backstop.name
    error_message = "The Pub/Sub service agent publishes to the backstop topic."
  }

  assert {
    condition     = local.environment_variables["AIA_RETRY_MAX_BACKOFF_S"] == "600" && local.environment_variables["AIA_REDISPATCH_AFTER_S"] == "900"
    error_message = "By default the sweep waits 900 s, 300 s past the 600 s maximum backoff."
  }

  assert {
    condition     = google_pubsub_subscription.dead_letter_hold.expiration_policy[0].ttl == ""
    error_message = "The dead-letter subscription must never expire."
  }
}

run "firestore_indexes_and_ttl" {
  command = plan

  assert {
    condition     = length(google_firestore_index.this) == length(local.composite_indexes)
    error_message = "One index per query shape."
  }

  assert {
    condition     = toset([for f in google_firestore_field.ttl : f.collection]) == toset(["tasks", "idempotency_keys", "webhook_events", "webhook_deliveries", "ledger", "rate_shards", "workflows", "concurrency_slots"])
    error_message = "TTL policies on tasks, idempotency_keys, the webhook outbox and deliveries, the budget ledger, rate-limit shards, workflows and concurrency slots."
  }

  assert {
    condition     = alltrue([for f in google_firestore_field.ttl : f.field == "expires_at"])
    error_message = "The TTL field is expires_at."
  }
}

run "secrets_only_where_needed" {
  command = plan

  assert {
    condition     = toset(keys(google_secret_manager_secret_iam_member.keyring_access)) == toset(["submit_task", "task_status", "process_task", "schedules", "schedule_tick", "webhooks", "deliver_webhooks", "workflows"])
    error_message = "Only submit_task, task_status, process_task, the schedule, webhook and workflow functions read a key ring."
  }

  assert {
    condition     = google_secret_manager_secret_iam_member.keyring_access["submit_task"].secret_id == google_secret_manager_secret.keyring["public"].secret_id
    error_message = "submit_task reads the public ring only."
  }

  assert {
    condition     = google_secret_manager_secret_iam_member.keyring_access["process_task"].secret_id == google_secret_manager_secret.keyring["private"].secret_id
    error_message = "process_task reads the private ring."
  }

  assert {
    condition     = google_secret_manager_secret_iam_member.keyring_access["webhooks"].secret_id == google_secret_manager_secret.keyring["public"].secret_id && google_secret_manager_secret_iam_member.keyring_access["deliver_webhooks"].secret_id == google_secret_manager_secret.keyring["private"].secret_id
    error_message = "The webhook API seals signing keys with the public ring; only the delivery function can open them."
  }

  assert {
    condition     = toset(keys(google_secret_manager_secret_iam_member.metrics_token_access)) == toset(["health", "metrics"])
    error_message = "Only health and metrics read the metrics token."
  }

  assert {
    condition     = alltrue([for name in ["health", "metrics"] : local.function_secrets[name] == { AIA_METRICS_TOKEN = google_secret_manager_secret.metrics_token.secret_id }])
    error_message = "health and metrics get the token as AIA_METRICS_TOKEN, and no key ring."
  }

  assert {
    condition     = alltrue([for name, env in local.function_secrets : !contains(keys(env), "AIA_METRICS_TOKEN") if !contains(["health", "metrics"], name)])
    error_message = "No other function gets the metrics token."
  }
}

run "keys_database_is_read_only_for_functions" {
  command = plan

  assert {
    condition     = google_firestore_database.keys.name == "aia-keys" && google_firestore_database.keys.location_id == google_firestore_database.this.location_id
    error_message = "The keys database is named from name_prefix, beside the tasks database."
  }

  assert {
    condition     = local.environment_variables["AIA_KEYS_DATABASE"] == "aia-keys" && local.environment_variables["AIA_FIRESTORE_DATABASE"] == "(default)"
    error_message = "Functions are told which database holds which collection."
  }

  assert {
    condition     = toset(keys(google_project_iam_member.firestore_keys)) == toset(["submit_task", "task_status", "schedules", "webhooks", "usage", "workflows"])
    error_message = "Only the functions that authenticate tenants may read the keys database."
  }

  assert {
    condition     = alltrue([for grant in google_project_iam_member.firestore_keys : grant.role == "roles/datastore.viewer" && grant.condition[0].expression == "resource.name == \"projects/aia-test-project/databases/aia-keys\""])
    error_message = "Keys database grants are read-only and conditioned on that database."
  }

  assert {
    condition     = alltrue([for grant in google_project_iam_member.firestore : grant.condition[0].expression == "resource.name == \"projects/aia-test-project/databases/(default)\""])
    error_message = "Tasks database grants are conditioned on the tasks database."
  }
}

run "backoff_has_one_source" {
  command = plan

  variables {
    retry_max_backoff_s = 60
  }

  assert {
    condition     = google_pubsub_subscription.worker_push.retry_policy[0].maximum_backoff == "60s" && google_pubsub_subscription.backstop_push.retry_policy[0].maximum_backoff == "60s"
    error_message = "Both push subscriptions take their maximum backoff from retry_max_backoff_s."
  }

  assert {
    condition     = local.environment_variables["AIA_RETRY_MAX_BACKOFF_S"] == "60" && local.environment_variables["AIA_REDISPATCH_AFTER_S"] == "360"
    error_message = "The code is told the same backoff, and the sweep defaults to 300 s past it."
  }
}

run "redispatch_after_is_checked_against_the_backoff_given" {
  command = plan

  # Below 600 + 5: accepted only because the validation reads retry_max_backoff_s.
  variables {
    retry_max_backoff_s = 60
    redispatch_after_s  = 66
  }

  assert {
    condition     = local.environment_variables["AIA_REDISPATCH_AFTER_S"] == "66"
    error_message = "An explicit redispatch_after_s is passed through."
  }
}

run "rejects_redispatch_within_the_backoff" {
  command = plan

  variables {
    redispatch_after_s = 605
  }

  expect_failures = [var.redispatch_after_s]
}

run "rejects_redispatch_within_a_smaller_backoff" {
  command = plan

  variables {
    retry_max_backoff_s = 60
    redispatch_after_s  = 65
  }

  expect_failures = [var.redispatch_after_s]
}

run "rejects_backoff_beyond_pubsub" {
  command = plan

  variables {
    retry_max_backoff_s = 601
  }

  expect_failures = [var.retry_max_backoff_s]
}

run "public_behind_the_load_balancer" {
  command = plan

  variables {
    environment   = "prod"
    public_access = true
    load_balancer = { enabled = true, domains = ["api.example.test"] }
    scaling       = { submit_task = { min_instances = 2 } }
  }

  assert {
    condition     = length(module.gateway) == 1
    error_message = "The load balancer is created when enabled."
  }

  assert {
    condition     = local.function_invokers["health"]["public"] == "allUsers" && !contains(keys(local.function_invokers["process_task"]), "public")
    error_message = "public_access opens the user-facing functions only."
  }

  assert {
    condition     = local.environment_variables["AIA_PUBLIC_BASE_URL"] == "https://api.example.test"
    error_message = "Status links use the load balancer's domain."
  }
}

run "rejects_unknown_environment" {
  command = plan

  variables {
    environment = "qa"
  }

  expect_failures = [var.environment]
}

run "rejects_too_few_delivery_attempts" {
  command = plan

  variables {
    max_delivery_attempts = 3
  }

  expect_failures = [var.max_delivery_attempts]
}

run "load_balancer_needs_a_domain" {
  command = plan

  variables {
    load_balancer = { enabled = true }
  }

  expect_failures = [var.load_balancer]
}

run "webhooks" {
  command = plan

  assert {
    condition     = google_pubsub_topic.webhook_events.name == "aia-webhook-events" && google_pubsub_subscription.webhook_push.ack_deadline_seconds >= local.functions["deliver_webhooks"].timeout
    error_message = "The webhook topic pushes to deliver_webhooks, with an ack deadline covering its timeout."
  }

  assert {
    condition     = length(google_pubsub_subscription.webhook_push.dead_letter_policy) == 0 && google_pubsub_subscription.webhook_push.retry_policy[0].maximum_backoff == "600s"
    error_message = "No dead letters for webhook ids (the sweep republishes them); backoff from the one variable."
  }

  assert {
    condition     = google_cloud_scheduler_job.webhook_sweep.schedule == "* * * * *" && google_cloud_scheduler_job.webhook_sweep.retry_config[0].retry_count == 0
    error_message = "The webhook sweep runs every minute; the next run is the retry."
  }

  assert {
    condition     = local.environment_variables["AIA_WEBHOOK_EVENTS_TOPIC"] == "aia-webhook-events" && local.environment_variables["AIA_WEBHOOK_CACHE_S"] == "30" && !contains(keys(local.environment_variables), "AIA_WEBHOOKS_ALLOW_LOOPBACK")
    error_message = "Functions get the webhook topic and cache bound; never the local stack's loopback allowance."
  }

  assert {
    condition     = toset([for name, spec in local.functions : name if contains(spec.publishes, "webhook_events")]) == toset(["process_task", "submit_task", "redispatch", "webhooks", "deliver_webhooks", "workflows"])
    error_message = "Only the functions that end tasks, the webhook API and the delivery function publish webhook ids."
  }
}

run "rejects_a_webhook_cache_beyond_the_catch_up" {
  command = plan

  variables {
    webhook_cache_s = 31
  }

  expect_failures = [var.webhook_cache_s]
}

run "spans_to_cloud_trace_from_the_functions_that_make_them" {
  command = plan

  assert {
    condition     = !contains(keys(google_project_iam_member.trace_agent), "health") && !contains(keys(google_project_iam_member.trace_agent), "metrics") && contains(keys(google_project_iam_member.trace_agent), "process_task")
    error_message = "Every function but the probes may write spans; the probes make none."
  }

  assert {
    condition     = alltrue([for m in google_project_iam_member.trace_agent : m.role == "roles/cloudtrace.agent"])
    error_message = "Only Cloud Trace's agent role: write spans, read none."
  }
}

run "no_trace_role_without_cloud_trace" {
  command = plan

  variables {
    trace_exporter = "none"
  }

  assert {
    condition     = length(google_project_iam_member.trace_agent) == 0
    error_message = "Without Cloud Trace export, no function gets its role."
  }
}
