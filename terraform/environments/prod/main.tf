# Identical in every environment: environments differ by terraform.tfvars and
# backend.tf only (a test checks it).

provider "google" {
  project = var.project_id
  region  = var.region
}

module "aia" {
  source = "../../modules/task_service"

  project_id             = var.project_id
  region                 = var.region
  environment            = var.environment
  firestore_location     = var.firestore_location
  bundle_dir             = coalesce(var.bundle_dir, "${path.root}/../../../build")
  app_version            = var.app_version
  delete_protection      = var.delete_protection
  point_in_time_recovery = var.point_in_time_recovery
  scaling                = var.scaling
  public_access          = var.public_access
  invoker_members        = var.invoker_members
  load_balancer          = var.load_balancer
  log_level              = var.log_level
  diagnostic_tasks       = var.diagnostic_tasks
  max_delivery_attempts  = var.max_delivery_attempts
  task_retention_days    = var.task_retention_days
  notification_channels  = var.notification_channels
}
