resource "google_cloud_scheduler_job" "redispatch" {
  project          = var.project_id
  region           = var.region
  name             = "${var.name_prefix}-redispatch"
  description      = "Republishes tasks stuck queued or with expired leases."
  schedule         = var.redispatch_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "120s"

  retry_config {
    retry_count = 0 # the next run a minute later is the retry
  }

  http_target {
    http_method = "POST"
    uri         = module.function["redispatch"].uri

    oidc_token {
      service_account_email = google_service_account.scheduler_invoker.email
      audience              = module.function["redispatch"].uri
    }
  }

  depends_on = [google_project_service.this]
}

# One call a minute that ticks every second for var.tick_loop_s: delayed tasks
# start about a second after their run_at, cron slots fire in their minute.
# Two calls overlapping (a retry, a slow minute) are harmless: every write the
# ticker makes is conditioned on the document it read.
resource "google_cloud_scheduler_job" "schedule_tick" {
  project          = var.project_id
  region           = var.region
  name             = "${var.name_prefix}-schedule-tick"
  description      = "Queues due delayed tasks and fires due cron slots."
  schedule         = "* * * * *"
  time_zone        = "Etc/UTC"
  attempt_deadline = "120s"

  retry_config {
    retry_count = 0 # the next minute's call is the retry
  }

  http_target {
    http_method = "POST"
    uri         = module.function["schedule_tick"].uri
    headers     = { "Content-Type" = "application/json" }
    body        = base64encode(jsonencode({ for_s = var.tick_loop_s, every_s = 1 }))

    oidc_token {
      service_account_email = google_service_account.scheduler_invoker.email
      audience              = module.function["schedule_tick"].uri
    }
  }

  depends_on = [google_project_service.this]
}

# The webhook sweep: events whose flush was lost, deliveries whose retry is due,
# and the catch-up of endpoints registered while instances cached "none".
resource "google_cloud_scheduler_job" "webhook_sweep" {
  project          = var.project_id
  region           = var.region
  name             = "${var.name_prefix}-webhook-sweep"
  description      = "Sends webhook deliveries that are due and events not yet fanned out."
  schedule         = var.webhook_sweep_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "180s"

  retry_config {
    retry_count = 0 # the next run a minute later is the retry
  }

  http_target {
    http_method = "POST"
    uri         = "${module.function["deliver_webhooks"].uri}/sweep"

    oidc_token {
      service_account_email = google_service_account.scheduler_invoker.email
      audience              = module.function["deliver_webhooks"].uri
    }
  }

  depends_on = [google_project_service.this]
}
