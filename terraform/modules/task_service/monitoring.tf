resource "google_monitoring_alert_policy" "dead_letters" {
  project      = var.project_id
  display_name = "AIA ${var.environment}: tasks dead-lettered"
  combiner     = "OR"
  severity     = "ERROR"

  conditions {
    display_name = "dead-letter backlog > 0"

    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.dead_letter_hold.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "60s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Tasks failed for good (the worker's decision: Pub/Sub itself never publishes here) and wait in `${google_pubsub_subscription.dead_letter_hold.name}`. Pull the subscription to inspect them; see docs/deploy.md."
  }

  notification_channels = var.notification_channels
  user_labels           = local.labels

  depends_on = [google_project_service.this]
}

# Messages the worker subscription gave up on keep being delivered from the
# backstop; one still there after an hour means the worker cannot finish it
# (a dependency down, or a bug), not that the task failed.
resource "google_monitoring_alert_policy" "backstop" {
  project      = var.project_id
  display_name = "AIA ${var.environment}: tasks stuck in the backstop"
  combiner     = "OR"
  severity     = "WARNING"

  conditions {
    display_name = "backstop's oldest unacked message > 1 h"

    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.backstop_push.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = 3600
      duration        = "300s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Deliveries of a task failed ${var.max_delivery_attempts} times on `${google_pubsub_subscription.worker_push.name}` and keep failing from `${google_pubsub_subscription.backstop_push.name}`. Check process_task's logs and /health; the task is retried until the worker acks it."
  }

  notification_channels = var.notification_channels
  user_labels           = local.labels

  depends_on = [google_project_service.this]
}

resource "google_monitoring_alert_policy" "function_errors" {
  project      = var.project_id
  display_name = "AIA ${var.environment}: function error rate"
  combiner     = "OR"
  severity     = "WARNING"

  conditions {
    display_name = "5xx share above ${var.error_rate_threshold}"

    condition_threshold {
      filter             = "resource.type = \"cloud_run_revision\" AND metric.type = \"run.googleapis.com/request_count\" AND metric.labels.response_code_class = \"5xx\""
      denominator_filter = "resource.type = \"cloud_run_revision\" AND metric.type = \"run.googleapis.com/request_count\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.error_rate_threshold
      duration           = "300s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.labels.service_name"]
      }

      denominator_aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.labels.service_name"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A function answers 5xx to more than ${var.error_rate_threshold * 100}% of requests. For process_task, 5xx is a retry: check the logs for the task ids."
  }

  notification_channels = var.notification_channels
  user_labels           = local.labels

  depends_on = [google_project_service.this]
}
