/**
 * One HTTPS base URL for the functions, with the local stack's paths. The
 * rules are shared/api/routes.py's routing_rules(), in the same order (a test
 * compares them), so the dev gateway and this URL map route alike:
 *
 *   POST /tasks                      -> submit_task  (route rule on the :method pseudo-header)
 *   /tasks                           -> task_status
 *   /tasks/submit                    -> submit_task
 *   /tasks/counts                    -> task_status
 *   /schedules                       -> schedules
 *   /webhooks, /webhooks/signing-key -> webhooks
 *   /usage, /usage/ledger            -> usage
 *   /health, /                       -> health
 *   /metrics                         -> metrics
 *   /openapi.json                    -> openapi
 *   /dashboard, /dashboard/...       -> dashboard
 *   /webhooks/deliveries/...         -> webhooks
 *   /schedules/...                   -> schedules
 *   /webhooks/...                    -> webhooks
 *   /workflows, /workflows/...       -> workflows
 *   POST /tasks/...  (:replay)       -> submit_task
 *   /tasks/...       ({task_id})     -> task_status
 *   anything else                    -> health, which answers 404 problem+json
 *
 * A URL map routes by path, but route rules of the global external Application
 * Load Balancer (EXTERNAL_MANAGED) can also match headers, and ":method" names
 * the request method, so POST and GET of one path reach different functions.
 */

locals {
  backends = {
    health      = var.services.health
    metrics     = var.services.metrics
    submit_task = var.services.submit_task
    task_status = var.services.task_status
    schedules   = var.services.schedules
    openapi     = var.services.openapi
    dashboard   = var.services.dashboard
    webhooks    = var.services.webhooks
    usage       = var.services.usage
    workflows   = var.services.workflows
  }

  # Route rules in priority order; each matches a path and, optionally, a method.
  routes = [
    { priority = 10, backend = "submit_task", full_path = "/tasks", prefix = null, method = "POST" },
    { priority = 20, backend = "task_status", full_path = "/tasks", prefix = null, method = null },
    { priority = 30, backend = "submit_task", full_path = "/tasks/submit", prefix = null, method = null },
    { priority = 40, backend = "task_status", full_path = "/tasks/counts", prefix = null, method = null },
    { priority = 50, backend = "schedules", full_path = "/schedules", prefix = null, method = null },
    { priority = 60, backend = "webhooks", full_path = "/webhooks", prefix = null, method = null },
    { priority = 70, backend = "webhooks", full_path = "/webhooks/signing-key", prefix = null, method = null },
    { priority = 80, backend = "usage", full_path = "/usage", prefix = null, method = null },
    { priority = 90, backend = "usage", full_path = "/usage/ledger", prefix = null, method = null },
    { priority = 100, backend = "health", full_path = "/health", prefix = null, method = null },
    { priority = 110, backend = "health", full_path = "/", prefix = null, method = null },
    { priority = 120, backend = "metrics", full_path = "/metrics", prefix = null, method = null },
    { priority = 130, backend = "openapi", full_path = "/openapi.json", prefix = null, method = null },
    { priority = 140, backend = "dashboard", full_path = "/dashboard", prefix = null, method = null },
    { priority = 150, backend = "workflows", full_path = "/workflows", prefix = null, method = null },
    { priority = 160, backend = "webhooks", full_path = null, prefix = "/webhooks/deliveries/", method = null },
    { priority = 170, backend = "schedules", full_path = null, prefix = "/schedules/", method = null },
    { priority = 180, backend = "dashboard", full_path = null, prefix = "/dashboard/", method = null },
    { priority = 190, backend = "workflows", full_path = null, prefix = "/workflows/", method = null },
    { priority = 200, backend = "webhooks", full_path = null, prefix = "/webhooks/", method = null },
    { priority = 210, backend = "submit_task", full_path = null, prefix = "/tasks/", method = "POST" },
    { priority = 220, backend = "task_status", full_path = null, prefix = "/tasks/", method = null },
  ]
}

resource "google_compute_region_network_endpoint_group" "this" {
  for_each = local.backends

  project               = var.project_id
  region                = var.region
  name                  = "${var.name}-${replace(each.key, "_", "-")}"
  network_endpoint_type = "SERVERLESS"

  # 2nd gen functions are Cloud Run services.
  cloud_run {
    service = element(split("/", each.value), length(split("/", each.value)) - 1)
  }
}

resource "google_compute_backend_service" "this" {
  for_each = local.backends

  project               = var.project_id
  name                  = "${var.name}-${replace(each.key, "_", "-")}"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"

  backend {
    group = google_compute_region_network_endpoint_group.this[each.key].id
  }

  log_config {
    enable      = true
    sample_rate = 1
  }
}

resource "google_compute_url_map" "this" {
  project         = var.project_id
  name            = var.name
  default_service = google_compute_backend_service.this["health"].id

  host_rule {
    hosts        = ["*"]
    path_matcher = "aia"
  }

  path_matcher {
    name            = "aia"
    default_service = google_compute_backend_service.this["health"].id

    dynamic "route_rules" {
      for_each = local.routes
      content {
        priority = route_rules.value.priority
        service  = google_compute_backend_service.this[route_rules.value.backend].id

        match_rules {
          full_path_match = route_rules.value.full_path
          prefix_match    = route_rules.value.prefix

          dynamic "header_matches" {
            for_each = route_rules.value.method == null ? [] : [route_rules.value.method]
            content {
              header_name = ":method"
              exact_match = header_matches.value
            }
          }
        }
      }
    }
  }
}

resource "google_compute_ssl_policy" "this" {
  project         = var.project_id
  name            = var.name
  profile         = "MODERN"
  min_tls_version = "TLS_1_2"
}

resource "google_compute_managed_ssl_certificate" "this" {
  project = var.project_id
  name    = var.name

  managed {
    domains = var.domains
  }
}

resource "google_compute_target_https_proxy" "this" {
  project          = var.project_id
  name             = var.name
  url_map          = google_compute_url_map.this.id
  ssl_certificates = [google_compute_managed_ssl_certificate.this.id]
  ssl_policy       = google_compute_ssl_policy.this.id
}

resource "google_compute_global_address" "this" {
  project = var.project_id
  name    = var.name
}

resource "google_compute_global_forwarding_rule" "https" {
  project               = var.project_id
  name                  = "${var.name}-https"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  ip_address            = google_compute_global_address.this.id
  port_range            = "443"
  target                = google_compute_target_https_proxy.this.id
}
