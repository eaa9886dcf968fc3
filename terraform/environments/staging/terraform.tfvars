# staging: prod's shape at a smaller scale.
project_id         = "my-aia-staging" # your staging project
region             = "europe-west1"
environment        = "staging"
firestore_location = "eur3"

delete_protection      = true
point_in_time_recovery = true
public_access          = true
diagnostic_tasks       = true
log_level              = "INFO"

scaling = {
  process_task = { max_instances = 20 }
}
