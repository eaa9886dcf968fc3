/**
 * The one root module of every environment. An environment is only what
 * differs: ../environments/<env>/terraform.tfvars (-var-file) and backend.hcl
 * (-backend-config). See README.md.
 */

provider "google" {
  project = var.project_id
  region  = var.region
}

module "aia" {
  source = "../modules/task_service"

  project_id             = var.project_id
  region                 = var.region
  environment            = var.environment
  firestore_location     = var.firestore_location
  bundle_dir             = coalesce(var.bundle_dir, "${path.root}/../../build")
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

# One root serves every environment, so nothing in Terraform ties the state
# chosen at init to the tfvars given at plan. This does: the state remembers
# the environment and project it was created for, and a plan with another
# environment's variables fails here before it can touch anything.
resource "terraform_data" "environment" {
  input = "${var.environment}/${var.project_id}"

  lifecycle {
    ignore_changes = [input]

    postcondition {
      condition     = self.output == "${var.environment}/${var.project_id}"
      error_message = "This state belongs to ${self.output}, not ${var.environment}/${var.project_id}: run terraform init -reconfigure with ../environments/${var.environment}/backend.hcl."
    }
  }
}
