# The state remembers its environment: a plan with another environment's
# variables against it fails. Run with the dev tfvars:
#   terraform test -var-file=../environments/dev/terraform.tfvars -var bundle_dir=<bundles>

run "create_for_dev" {
  command = apply

  # Only the guard: the rest of the configuration is what the plans check.
  plan_options {
    target = [terraform_data.environment]
  }

  assert {
    condition     = terraform_data.environment.output == "dev/${var.project_id}"
    error_message = "The guard records environment/project."
  }
}

run "same_environment_plans" {
  command = plan

  plan_options {
    target = [terraform_data.environment]
  }
}

run "another_environment_is_refused" {
  command = plan

  variables {
    environment = "prod"
    project_id  = "my-aia-prod"
  }

  plan_options {
    target = [terraform_data.environment]
  }

  expect_failures = [terraform_data.environment]
}

run "another_project_is_refused" {
  command = plan

  variables {
    project_id = "someone-elses-project"
  }

  plan_options {
    target = [terraform_data.environment]
  }

  expect_failures = [terraform_data.environment]
}
