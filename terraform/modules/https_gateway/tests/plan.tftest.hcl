variables {
  project_id = "aia-test-project"
  region     = "europe-west1"
  name       = "aia-gateway"
  domains    = ["api.example.test"]
  services = {
    health      = "projects/aia-test-project/locations/europe-west1/services/health"
    metrics     = "metrics"
    submit_task = "submit-task"
    task_status = "task-status"
    schedules   = "schedules"
    openapi     = "openapi"
    dashboard   = "dashboard"
    webhooks    = "webhooks"
    usage       = "usage"
    workflows   = "workflows"
  }
}

run "routes" {
  command = plan

  assert {
    condition     = length(google_compute_url_map.this.path_matcher[0].route_rules) == 22
    error_message = "Twenty-two route rules: shared/api/routes.py's routing_rules()."
  }

  assert {
    condition     = [for r in google_compute_url_map.this.path_matcher[0].route_rules : r.match_rules[0].header_matches[0].exact_match if length(r.match_rules[0].header_matches) > 0] == ["POST", "POST"]
    error_message = "Two rules match on the method: POST /tasks and POST /tasks/{id}:replay."
  }

  assert {
    condition     = length(google_compute_backend_service.this) == 10
    error_message = "One backend per public function."
  }

  assert {
    condition     = google_compute_region_network_endpoint_group.this["health"].cloud_run[0].service == "health"
    error_message = "A full service id is reduced to the service name."
  }

  assert {
    condition     = google_compute_ssl_policy.this.min_tls_version == "TLS_1_2"
    error_message = "TLS 1.2 at least."
  }
}

run "needs_a_domain" {
  command = plan

  variables {
    domains = []
  }

  expect_failures = [var.domains]
}
