# dev: cheap, disposable, everything observable.
project_id         = "my-aia-dev" # your dev project
region             = "europe-west1"
environment        = "dev"
firestore_location = "europe-west1"

delete_protection      = false
point_in_time_recovery = true
public_access          = true
diagnostic_tasks       = true
log_level              = "DEBUG"
task_retention_days    = 7

scaling = {
  process_task = { max_instances = 5 }
}
