/**
 * AIA's task service: the functions, the Pub/Sub pipeline between them,
 * Firestore, secrets, scheduling, monitoring and an optional load balancer.
 *
 * One entry in local.functions per folder under functions/ (a test checks
 * both ways); each runs as its own service account holding only the roles
 * listed in its entry, each scoped to the resource it needs.
 */

locals {
  labels = merge(var.labels, { app = "aia", environment = var.environment })

  # Every variable shared/config.py reads, except the secrets AIA_KEYRING and
  # AIA_METRICS_TOKEN (below) and AIA_KEYRING_FILE (local development only).
  environment_variables = {
    GOOGLE_CLOUD_PROJECT    = var.project_id
    AIA_FIRESTORE_DATABASE  = google_firestore_database.this.name
    AIA_KEYS_DATABASE       = google_firestore_database.keys.name
    AIA_TASKS_TOPIC         = google_pubsub_topic.tasks.name
    AIA_DEAD_LETTER_TOPIC   = google_pubsub_topic.dead_letter.name
    AIA_VERSION             = var.app_version
    AIA_DIAGNOSTIC_TASKS    = tostring(var.diagnostic_tasks)
    AIA_TASK_MODULES        = join(",", var.task_modules)
    AIA_API_KEY_CACHE_S     = tostring(var.api_key_cache_s)
    AIA_PUBLIC_BASE_URL     = local.public_base_url
    AIA_METRICS_SHARDS      = tostring(var.metrics_shards)
    AIA_METRICS_FLUSH_S     = tostring(var.metrics_flush_s)
    AIA_HEALTH_TIMEOUT_S    = tostring(var.health_timeout_s)
    AIA_LOG_LEVEL           = var.log_level
    AIA_RETRY_MAX_BACKOFF_S = tostring(var.retry_max_backoff_s)
    AIA_REDISPATCH_AFTER_S  = tostring(local.redispatch_after_s)
    AIA_TASK_RETENTION_DAYS = tostring(var.task_retention_days)
    # Webhooks. AIA_WEBHOOKS_ALLOW_LOOPBACK is for the local stack only: unset, it
    # is false, and every deployed function refuses loopback and http endpoints.
    AIA_WEBHOOK_EVENTS_TOPIC = google_pubsub_topic.webhook_events.name
    AIA_WEBHOOK_CACHE_S      = tostring(var.webhook_cache_s)
    # Flow control (shared.flow): prices, budgets' shards, defaults of rate and running limits.
    AIA_TASK_PRICES           = join(",", [for name, price in var.task_prices : "${name}=${price}"])
    AIA_BUDGET_SHARDS         = tostring(var.budget_shards)
    AIA_FLOW_CACHE_S          = tostring(var.flow_cache_s)
    AIA_RATE_LIMIT_DEFAULT    = var.rate_limit_default
    AIA_LEDGER_RETENTION_DAYS = tostring(var.ledger_retention_days)
    AIA_TENANT_MAX_RUNNING    = tostring(var.tenant_max_running)
    # Tracing (shared/tracing.py): spans to Cloud Trace, and the page the dashboard links to.
    AIA_TRACE_EXPORTER     = var.trace_exporter
    AIA_TRACE_SAMPLE_RATIO = tostring(var.trace_sample_ratio)
    AIA_TRACE_CONSOLE_URL  = var.trace_exporter == "gcp" ? "https://console.cloud.google.com/traces/list?project=${var.project_id}&tid={trace_id}" : ""
  }

  # The functions that make spans: the probes make none (shared.http.probe_endpoint).
  traced_functions = setsubtract(toset(keys(local.functions)), ["health", "metrics"])

  # var.retry_max_backoff_s is the one value behind both push subscriptions'
  # retry policies and AIA_RETRY_MAX_BACKOFF_S; the sweep waits 5 minutes more
  # unless told otherwise (var.redispatch_after_s validates against the same).
  redispatch_after_s = coalesce(var.redispatch_after_s, var.retry_max_backoff_s + 300)

  public_base_url = (
    var.public_base_url != "" ? var.public_base_url :
    var.load_balancer.enabled ? "https://${var.load_balancer.domains[0]}" : ""
  )

  # invokers: who calls it besides users (keys of invoker_identities);
  # firestore: its role on the tasks database; keys_firestore: its role on the
  # API keys database, read-only and only where tenants are authenticated
  # (operators create keys with their own credentials); publishes/views: topic
  # keys below; keyring: which key ring secret it reads; metrics_token: whether
  # it guards its answers with the metrics bearer token.
  functions = {
    health = {
      invokers       = []
      description    = "Liveness (?probe=live) and readiness: Firestore and the tasks topic."
      user_facing    = true
      firestore      = "roles/datastore.viewer"
      keys_firestore = null
      publishes      = []
      views          = ["tasks"]
      keyring        = null
      metrics_token  = true
      timeout        = 10
      memory         = "256Mi"
      cpu            = "0.333"
      concurrency    = 1
    }
    metrics = {
      invokers       = []
      description    = "Task counters in Prometheus text or JSON."
      user_facing    = true
      firestore      = "roles/datastore.viewer"
      keys_firestore = null
      publishes      = []
      views          = []
      keyring        = null
      metrics_token  = true
      timeout        = 30
      memory         = "256Mi"
      cpu            = "0.333"
      concurrency    = 1
    }
    submit_task = {
      invokers       = []
      description    = "Validates, seals and stores a task, then publishes its id."
      user_facing    = true
      firestore      = "roles/datastore.user"
      keys_firestore = "roles/datastore.viewer"
      # A task cancelled before it starts is terminal here: its webhook event's flush.
      publishes     = ["tasks", "webhook_events"]
      views         = []
      keyring       = "public"
      metrics_token = false
      timeout       = 30
      memory        = "512Mi"
      cpu           = "1"
      concurrency   = 8
    }
    task_status = {
      invokers       = []
      description    = "A task's status and result, or a page of the caller's tasks."
      user_facing    = true
      firestore      = "roles/datastore.viewer"
      keys_firestore = "roles/datastore.viewer"
      publishes      = []
      views          = []
      keyring        = "private"
      metrics_token  = false
      timeout        = 30
      memory         = "512Mi"
      cpu            = "1"
      concurrency    = 8
    }
    process_task = {
      invokers       = ["pubsub_push"]
      description    = "The worker: runs a task delivered by the push subscription."
      user_facing    = false
      firestore      = "roles/datastore.user"
      keys_firestore = null
      # Publishes a fan-out's children, the dead letters, and a terminal task's
      # webhook event id (the outbox's flush) to deliver_webhooks.
      publishes     = ["tasks", "dead_letter", "webhook_events"]
      views         = []
      keyring       = "private"
      metrics_token = false
      # The push subscription's ack deadline is 600 s, its maximum.
      timeout = 600
      memory  = "1Gi"
      cpu     = "1"
      # Each running attempt has a handler process of its own (shared/tasks/runner.py),
      # so one instance serves several I/O-bound deliveries at once (~60 MB each).
      concurrency = 4
    }
    # The two below read no data. iam.tf grants every function a role on the tasks
    # database; the narrowest is viewer (no role at all is a follow-up: checkov stops
    # expanding the module when that grant's for_each is filtered).
    openapi = {
      invokers       = []
      description    = "The OpenAPI 3.1 document of the public API, for this deployment's task types."
      user_facing    = true
      firestore      = "roles/datastore.viewer"
      keys_firestore = null
      publishes      = []
      views          = []
      keyring        = null
      metrics_token  = false
      timeout        = 10
      memory         = "256Mi"
      cpu            = "0.333"
      concurrency    = 1
    }
    dashboard = {
      invokers       = []
      description    = "The tenants' dashboard: static files; the page calls the API with the tenant's key."
      user_facing    = true
      firestore      = "roles/datastore.viewer"
      keys_firestore = null
      publishes      = []
      views          = []
      keyring        = null
      metrics_token  = false
      timeout        = 10
      memory         = "256Mi"
      cpu            = "0.333"
      concurrency    = 1
    }
    usage = {
      invokers       = []
      description    = "A tenant's token balance, holds and spending, and its ledger."
      user_facing    = true
      firestore      = "roles/datastore.viewer"
      keys_firestore = "roles/datastore.viewer"
      publishes      = []
      views          = []
      keyring        = null
      metrics_token  = false
      timeout        = 30
      memory         = "256Mi"
      cpu            = "0.333"
      concurrency    = 8
    }
    workflows = {
      invokers       = []
      description    = "Validates a workflow (a DAG of task nodes), seals and stores its nodes, publishes the first; reads and cancels workflows."
      user_facing    = true
      firestore      = "roles/datastore.user"
      keys_firestore = "roles/datastore.viewer"
      # The first nodes; and a cancel's nodes, terminal here: their webhook events' flush.
      publishes     = ["tasks", "webhook_events"]
      views         = []
      keyring       = "public"
      metrics_token = false
      # Storing 1,000 nodes is a few commits of 400 writes; the reconciler abandons a
      # creation unfinished after 120 s (shared/workflows/events.py CREATION_GRACE).
      timeout     = 60
      memory      = "512Mi"
      cpu         = "1"
      concurrency = 8
    }
    redispatch = {
      invokers       = ["scheduler"]
      description    = "Every minute: republishes tasks stuck queued or with expired leases."
      user_facing    = false
      firestore      = "roles/datastore.user"
      keys_firestore = null
      # The sweep also flushes the dead-letter outbox of tasks whose final
      # publish failed.
      publishes     = ["tasks", "dead_letter", "webhook_events"]
      views         = []
      keyring       = null
      metrics_token = false
      timeout       = 120
      memory        = "256Mi"
      cpu           = "0.333"
      concurrency   = 1
    }
    schedules = {
      invokers       = []
      description    = "The caller's cron schedules: create, list, read, pause, resume, delete."
      user_facing    = true
      firestore      = "roles/datastore.user"
      keys_firestore = "roles/datastore.viewer"
      publishes      = []
      views          = []
      # Seals a schedule's task payload; only schedule_tick can open it.
      keyring       = "public"
      metrics_token = false
      timeout       = 30
      memory        = "512Mi"
      cpu           = "1"
      concurrency   = 8
    }
    schedule_tick = {
      invokers       = ["scheduler"]
      description    = "Each minute, ticking every second: queues due delayed tasks, fires due cron slots."
      user_facing    = false
      firestore      = "roles/datastore.user"
      keys_firestore = null
      publishes      = ["tasks"]
      views          = []
      # Opens a schedule's sealed payload to submit the slot's task.
      keyring       = "private"
      metrics_token = false
      # A call ticks for var.tick_loop_s (at most 100 s), mostly asleep: a
      # third of a CPU keeps the always-busy instance cheap.
      timeout     = 120
      memory      = "512Mi"
      cpu         = "0.333"
      concurrency = 1
    }
    # The tenant's webhook API. Seals new signing keys with the public ring and
    # can never read one back; publishes a replayed delivery's id.
    webhooks = {
      invokers       = []
      description    = "Webhook endpoints, their signing keys, deliveries and replays."
      user_facing    = true
      firestore      = "roles/datastore.user"
      keys_firestore = "roles/datastore.viewer"
      publishes      = ["webhook_events"]
      views          = []
      keyring        = "public"
      metrics_token  = false
      timeout        = 30
      memory         = "512Mi"
      cpu            = "1"
      concurrency    = 8
    }
    # Pushed webhook events and deliveries, and the sweep every minute. Holds the
    # private ring (to open signing keys and task views) and is the only function
    # that calls out of Google.
    deliver_webhooks = {
      invokers       = ["pubsub_push", "scheduler"]
      description    = "Sends signed webhook deliveries, retries them on schedule, sweeps the outbox."
      user_facing    = false
      firestore      = "roles/datastore.user"
      keys_firestore = null
      publishes      = ["webhook_events"]
      views          = []
      keyring        = "private"
      metrics_token  = false
      # Two 15 s attempts 5 s apart per endpoint, in parallel; well under the ack deadline.
      timeout     = 300
      memory      = "512Mi"
      cpu         = "1"
      concurrency = 16
    }
  }

  default_scaling = {
    min_instances = 0
    max_instances = 10
  }

  topics = {
    tasks          = google_pubsub_topic.tasks
    dead_letter    = google_pubsub_topic.dead_letter
    webhook_events = google_pubsub_topic.webhook_events
  }

  keyring_secrets = {
    public  = google_secret_manager_secret.keyring["public"].secret_id
    private = google_secret_manager_secret.keyring["private"].secret_id
  }

  # Secret environment variables of each function: variable => secret id.
  function_secrets = {
    for name, spec in local.functions : name => merge(
      spec.keyring == null ? {} : { AIA_KEYRING = local.keyring_secrets[spec.keyring] },
      spec.metrics_token ? { AIA_METRICS_TOKEN = google_secret_manager_secret.metrics_token.secret_id } : {},
    )
  }

  # Who may invoke each function. Keys are static (service accounts created in
  # the same apply have unknown emails at plan time; for_each keys must be known).
  invoker_identities = merge(
    {
      pubsub_push = google_service_account.push_invoker.member
      scheduler   = google_service_account.scheduler_invoker.member
      public      = "allUsers"
    },
    { for member in var.invoker_members : member => member },
  )

  function_invokers = {
    for name, spec in local.functions : name => {
      for key in concat(
        spec.invokers,
        spec.user_facing && var.public_access ? ["public"] : [],
        spec.user_facing ? var.invoker_members : [],
      ) : key => local.invoker_identities[key]
    }
  }

  apis = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ]
}

data "google_project" "this" {
  project_id = var.project_id
}

resource "google_project_service" "this" {
  for_each = toset(local.apis)

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

module "function" {
  source   = "../cloud_function"
  for_each = local.functions

  project_id            = var.project_id
  region                = var.region
  name                  = each.key
  description           = each.value.description
  service_account_email = google_service_account.function[each.key].email
  source_bucket         = google_storage_bucket.sources.name
  source_archive        = "${var.bundle_dir}/${each.key}.zip"
  build_service_account = google_service_account.builder.id
  timeout_seconds       = each.value.timeout
  memory                = coalesce(try(var.scaling[each.key].memory, null), each.value.memory)
  cpu                   = coalesce(try(var.scaling[each.key].cpu, null), each.value.cpu)
  concurrency           = coalesce(try(var.scaling[each.key].concurrency, null), each.value.concurrency)
  min_instances         = coalesce(try(var.scaling[each.key].min_instances, null), local.default_scaling.min_instances)
  max_instances         = coalesce(try(var.scaling[each.key].max_instances, null), local.default_scaling.max_instances)
  # Internal functions: Pub/Sub push and Cloud Scheduler in the same project
  # count as internal when they call the run.app URL (the modules' `uri`).
  ingress = (
    !each.value.user_facing ? "ALLOW_INTERNAL_ONLY" :
    var.load_balancer.enabled ? "ALLOW_INTERNAL_AND_GCLB" : "ALLOW_ALL"
  )
  environment_variables        = local.environment_variables
  secret_environment_variables = local.function_secrets[each.key]
  invoker_members              = local.function_invokers[each.key]
  labels                       = local.labels

  # A function must be able to read its secrets and be built when it deploys.
  depends_on = [
    google_project_service.this,
    google_secret_manager_secret_iam_member.keyring_access,
    google_secret_manager_secret_iam_member.metrics_token_access,
    google_storage_bucket_iam_member.builder_reads_sources,
    google_project_iam_member.builder,
  ]
}

module "gateway" {
  source = "../https_gateway"
  count  = var.load_balancer.enabled ? 1 : 0

  project_id = var.project_id
  region     = var.region
  name       = "${var.name_prefix}-gateway"
  domains    = var.load_balancer.domains
  services = {
    health      = module.function["health"].service
    metrics     = module.function["metrics"].service
    submit_task = module.function["submit_task"].service
    task_status = module.function["task_status"].service
    schedules   = module.function["schedules"].service
    openapi     = module.function["openapi"].service
    dashboard   = module.function["dashboard"].service
    webhooks    = module.function["webhooks"].service
    usage       = module.function["usage"].service
    workflows   = module.function["workflows"].service
  }

  depends_on = [google_project_service.this]
}
