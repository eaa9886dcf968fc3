# Identity of the deployment: no defaults.

variable "project_id" {
  description = "Project to deploy into (one project per environment)."
  type        = string
}

variable "region" {
  description = "Region of the functions, the scheduler job and the source bucket."
  type        = string
}

variable "environment" {
  description = "Environment name: dev, staging or prod."
  type        = string

  validation {
    condition     = contains(["dev", "staging", "prod"], var.environment)
    error_message = "environment must be dev, staging or prod."
  }
}

variable "firestore_location" {
  description = "Firestore location: a multi-region (eur3, nam5) or a region."
  type        = string
}

variable "bundle_dir" {
  description = "Folder holding the <function>.zip bundles from `make package`."
  type        = string
}

# Behaviour, with defaults that suit dev.

variable "app_version" {
  description = "Version string the functions report (AIA_VERSION): the commit being deployed."
  type        = string
  default     = "dev"
}

variable "name_prefix" {
  description = "Prefix of service account ids, topics and other project-unique names."
  type        = string
  default     = "aia"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,8}$", var.name_prefix))
    error_message = "name_prefix must be 2-9 lowercase letters, digits or hyphens."
  }
}

variable "firestore_database" {
  description = "Firestore database id."
  type        = string
  default     = "(default)"
}

variable "delete_protection" {
  description = "Protect the Firestore database and the source bucket from deletion (on in prod)."
  type        = bool
  default     = true
}

variable "point_in_time_recovery" {
  description = "Keep 7 days of Firestore point-in-time recovery."
  type        = bool
  default     = true
}

variable "backup_retention" {
  description = "How long daily Firestore backups are kept, as a duration in seconds (at most 7 days for daily backups)."
  type        = string
  default     = "604800s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.backup_retention))
    error_message = "backup_retention must be a duration like 604800s."
  }
}

variable "scaling" {
  description = "Per-function overrides of min_instances, max_instances, memory, cpu and concurrency."
  type = map(object({
    min_instances = optional(number)
    max_instances = optional(number)
    memory        = optional(string)
    cpu           = optional(string)
    concurrency   = optional(number)
  }))
  default = {}
}

variable "public_access" {
  description = "Let anyone invoke the user-facing functions (allUsers): the functions check API keys themselves. Off: only invoker_members may call them."
  type        = bool
  default     = false
}

variable "invoker_members" {
  description = "IAM members allowed to invoke the user-facing functions when public_access is off."
  type        = list(string)
  default     = []
}

variable "load_balancer" {
  description = "Optional HTTPS load balancer giving one base URL with the local stack's paths."
  type = object({
    enabled = bool
    domains = optional(list(string), [])
  })
  default = { enabled = false }

  validation {
    condition     = !var.load_balancer.enabled || length(var.load_balancer.domains) > 0
    error_message = "load_balancer.domains must name at least one domain when the load balancer is enabled."
  }
}

variable "public_base_url" {
  description = "Base URL in the status links submit_task returns; defaults to https://<first domain> with the load balancer, else empty (relative links)."
  type        = string
  default     = ""
}

variable "tasks_topic" {
  description = "Name of the topic task ids are published to."
  type        = string
  default     = "aia-tasks"
}

variable "dead_letter_topic" {
  description = "Name of the topic for tasks that failed for good."
  type        = string
  default     = "aia-tasks-dead-letter"
}

variable "max_delivery_attempts" {
  description = "Push deliveries before Pub/Sub dead-letters a message (a backstop: the worker dead-letters final failures itself)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100."
  }
}

variable "redispatch_schedule" {
  description = "Cron schedule of the redispatch sweep."
  type        = string
  default     = "* * * * *"
}

variable "tick_loop_s" {
  description = "Seconds each minute's schedule_tick call keeps ticking (every second): 59 keeps a tick every second (delayed tasks ~1 s late, one instance busy); 0 ticks once a minute (up to ~60 s late, near-zero cost)."
  type        = number
  default     = 59

  validation {
    condition     = var.tick_loop_s >= 0 && var.tick_loop_s <= 100
    error_message = "tick_loop_s must be between 0 and 100 (the function's timeout is 120 s)."
  }
}

variable "log_level" {
  description = "Log level of the functions (AIA_LOG_LEVEL)."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level must be DEBUG, INFO, WARNING or ERROR."
  }
}

variable "diagnostic_tasks" {
  description = "Accept the diagnostic `fail` task type (AIA_DIAGNOSTIC_TASKS)."
  type        = bool
  default     = true
}

variable "metrics_shards" {
  description = "Counter shards per metric (AIA_METRICS_SHARDS); raise for sustained write rates."
  type        = number
  default     = 16

  validation {
    condition     = var.metrics_shards >= 1 && var.metrics_shards <= 1000
    error_message = "metrics_shards must be between 1 and 1000."
  }
}

variable "health_timeout_s" {
  description = "Deadline of the readiness checks in seconds (AIA_HEALTH_TIMEOUT_S)."
  type        = number
  default     = 1.5

  validation {
    condition     = var.health_timeout_s > 0 && var.health_timeout_s <= 10
    error_message = "health_timeout_s must be in (0, 10]."
  }
}

variable "retry_max_backoff_s" {
  description = "Maximum retry backoff in seconds of the worker and backstop push subscriptions (AIA_RETRY_MAX_BACKOFF_S)."
  type        = number
  default     = 600

  validation {
    # Pub/Sub's bounds: the minimum backoff is 10 s and no backoff exceeds 600 s.
    condition     = var.retry_max_backoff_s >= 10 && var.retry_max_backoff_s <= 600
    error_message = "retry_max_backoff_s must be between 10 and 600."
  }
}

variable "redispatch_after_s" {
  description = "Seconds a task may wait queued, or a lease be expired, before redispatch republishes it (AIA_REDISPATCH_AFTER_S); null means retry_max_backoff_s + 300."
  type        = number
  default     = null

  validation {
    # shared/config.py refuses the same (REDELIVERY_MARGIN_S = 5): a task in
    # Pub/Sub's backoff must not be republished beside its scheduled redelivery.
    # Referring to another variable here needs Terraform 1.9.
    condition     = var.redispatch_after_s == null ? true : var.redispatch_after_s > var.retry_max_backoff_s + 5
    error_message = "redispatch_after_s must exceed retry_max_backoff_s + 5 s."
  }
}

variable "task_retention_days" {
  description = "Days a finished task is kept before the Firestore TTL policy deletes it (AIA_TASK_RETENTION_DAYS)."
  type        = number
  default     = 30

  validation {
    condition     = var.task_retention_days >= 1 && var.task_retention_days <= 3650
    error_message = "task_retention_days must be between 1 and 3650."
  }
}

variable "task_prices" {
  description = "Tokens a task of each type reserves from a budgeted tenant, over the type's registered price (AIA_TASK_PRICES)."
  type        = map(number)
  default     = {}

  validation {
    condition     = alltrue([for name, price in var.task_prices : price >= 0 && floor(price) == price && !strcontains(name, ",") && !strcontains(name, "=")])
    error_message = "Prices are whole numbers >= 0; type names hold no ',' or '='."
  }
}

variable "budget_shards" {
  description = "Escrow shards of a new budget (AIA_BUDGET_SHARDS); each task writes one twice, so N shards sustain N/2 tasks/s per tenant at ~1 write/s each."
  type        = number
  default     = 200

  validation {
    condition     = var.budget_shards >= 1 && var.budget_shards <= 500
    error_message = "budget_shards must be between 1 and 500."
  }
}

variable "flow_cache_s" {
  description = "Seconds an instance trusts a tenant's budget and rate limits it read (AIA_FLOW_CACHE_S): how long an operator's change takes to apply."
  type        = number
  default     = 10

  validation {
    condition     = var.flow_cache_s >= 0 && var.flow_cache_s <= 300
    error_message = "flow_cache_s must be between 0 and 300."
  }
}

variable "rate_limit_default" {
  description = "Rate limit of tenants without one of their own, as RATE/BURST (e.g. 20/10); empty for none (AIA_RATE_LIMIT_DEFAULT)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([0-9]+([.][0-9]+)?(/[0-9]+)?)?$", var.rate_limit_default))
    error_message = "rate_limit_default is RATE/BURST, e.g. 20/10, or empty."
  }
}

variable "tenant_max_running" {
  description = "Tasks of one tenant running at once, for tenants without a max_running of their own; 0 for no limit. Set below the worker's capacity (max instances x concurrency) to share it fairly across tenants (AIA_TENANT_MAX_RUNNING)."
  type        = number
  default     = 0

  validation {
    condition     = var.tenant_max_running >= 0 && var.tenant_max_running <= 100 && floor(var.tenant_max_running) == var.tenant_max_running
    error_message = "tenant_max_running must be a whole number between 0 and 100."
  }
}

variable "ledger_retention_days" {
  description = "Days a budget ledger entry is kept before the TTL policy deletes it (AIA_LEDGER_RETENTION_DAYS)."
  type        = number
  default     = 400

  validation {
    condition     = var.ledger_retention_days >= 1 && var.ledger_retention_days <= 3650
    error_message = "ledger_retention_days must be between 1 and 3650."
  }
}

variable "error_rate_threshold" {
  description = "Share of 5xx answers (0-1) over 5 minutes that raises the function error-rate alert."
  type        = number
  default     = 0.05

  validation {
    condition     = var.error_rate_threshold > 0 && var.error_rate_threshold < 1
    error_message = "error_rate_threshold must be between 0 and 1."
  }
}

variable "notification_channels" {
  description = "Cloud Monitoring notification channel ids that receive the alerts."
  type        = list(string)
  default     = []
}

variable "labels" {
  description = "Labels added to the resources that take them."
  type        = map(string)
  default     = {}
}

variable "task_modules" {
  description = "The team's task modules (AIA_TASK_MODULES); empty means the tasks/ package in the bundles, if any."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.task_modules : can(regex("^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*$", m))])
    error_message = "task_modules must be dotted Python module names."
  }
}

variable "api_key_cache_s" {
  description = "Seconds an instance trusts an API key record it read (AIA_API_KEY_CACHE_S): one read per key per instance per period, and the bound on how long a revoked key keeps working."
  type        = number
  default     = 30

  validation {
    condition     = var.api_key_cache_s >= 0 && var.api_key_cache_s <= 300
    error_message = "api_key_cache_s must be 0-300."
  }
}

variable "metrics_flush_s" {
  description = "Seconds each instance buffers its task counters before writing them to the metric shards (AIA_METRICS_FLUSH_S): no counter write rides in a task's own commit."
  type        = number
  default     = 10

  validation {
    condition     = var.metrics_flush_s >= 0 && var.metrics_flush_s <= 300
    error_message = "metrics_flush_s must be 0-300."
  }
}

variable "webhook_events_topic" {
  description = "Name of the topic carrying webhook event and delivery ids to deliver_webhooks (AIA_WEBHOOK_EVENTS_TOPIC)."
  type        = string
  default     = "aia-webhook-events"
}

variable "webhook_cache_s" {
  description = "Seconds an instance trusts what it read about a tenant's webhook endpoints (AIA_WEBHOOK_CACHE_S); a new endpoint's catch-up covers 30 s, so no more."
  type        = number
  default     = 30

  validation {
    condition     = var.webhook_cache_s >= 0 && var.webhook_cache_s <= 30
    error_message = "webhook_cache_s must be 0-30."
  }
}

variable "webhook_sweep_schedule" {
  description = "Cron schedule of the webhook sweep (due retries, lost flushes, catch-ups)."
  type        = string
  default     = "* * * * *"
}

variable "trace_exporter" {
  description = "Where the functions send their OpenTelemetry spans (AIA_TRACE_EXPORTER): gcp (Cloud Trace) or none (trace context is still propagated and logged)."
  type        = string
  default     = "gcp"

  validation {
    condition     = contains(["gcp", "none"], var.trace_exporter)
    error_message = "trace_exporter must be gcp or none."
  }
}

variable "trace_sample_ratio" {
  description = "Share of new traces recorded (AIA_TRACE_SAMPLE_RATIO); a request that arrives in a sampled trace is always recorded."
  type        = number
  default     = 1

  validation {
    condition     = var.trace_sample_ratio >= 0 && var.trace_sample_ratio <= 1
    error_message = "trace_sample_ratio must be between 0 and 1."
  }
}
