# The smallest deployment: one project, no load balancer, functions callable
# by the given members only. Build the bundles first: make package.

provider "google" {
  project = var.project_id
  region  = var.region
}

module "aia" {
  source = "../../modules/task_service"

  project_id         = var.project_id
  region             = var.region
  environment        = "dev"
  firestore_location = var.region
  bundle_dir         = "${path.root}/../../../build"
  delete_protection  = false
  invoker_members    = var.invoker_members
}
