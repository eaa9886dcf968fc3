# prod: protected, warm, behind one HTTPS base URL.
project_id         = "my-aia-prod" # your prod project
region             = "europe-west1"
environment        = "prod"
firestore_location = "eur3"

delete_protection      = true
point_in_time_recovery = true
public_access          = true
diagnostic_tasks       = false
log_level              = "INFO"

load_balancer = {
  enabled = true
  domains = ["api.aia.example.com"] # your domain
}

# User-facing functions keep a warm instance: no cold start on the request path.
scaling = {
  health        = { min_instances = 1, max_instances = 10 }
  metrics       = { min_instances = 1, max_instances = 5 }
  submit_task   = { min_instances = 1, max_instances = 100 }
  task_status   = { min_instances = 1, max_instances = 50 }
  process_task  = { max_instances = 100 }
  redispatch    = { max_instances = 1 }
  schedules     = { min_instances = 1, max_instances = 10 }
  schedule_tick = { max_instances = 2 } # one call a minute, overlapping at most the next
  usage         = { min_instances = 1, max_instances = 20 }
  webhooks      = { min_instances = 1, max_instances = 10 }
  # A creation is one request per many nodes: a cold start there is tolerated.
  workflows = { max_instances = 10 }
  # Waits on receivers (up to 15 s each), 16 deliveries at a time per instance.
  deliver_webhooks = { max_instances = 50 }
}

# notification_channels = ["projects/my-aia-prod/notificationChannels/123"]
